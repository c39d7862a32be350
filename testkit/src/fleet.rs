//! The fleet simulation behind `scripts/fleet-sim.sh` (docs/FLEET.md): N instances rebooted
//! together, each asking STS for its upload session as s3drop's own
//! [`s3drop::auth::schedule::Schedule`] says, through simulated time, against an STS that
//! throttles above a rate limit. It runs the same fleet a second time under the rule s3drop
//! had before (refresh a fixed 5 minutes before expiry, no start-up jitter, retries
//! doubling from 1 s to 60 s without jitter), so the two can be compared.
//!
//! What it leaves out, on purpose: network latency (a call takes no time), and S3 (files
//! are only counted: one is delayed when it appears while its instance holds no session).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

use s3drop::auth::schedule::{REFRESH_BEFORE_EXPIRY, Schedule, refresh_period};

/// Which rule the instances follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// s3drop's [`Schedule`], with `startup_jitter_seconds` as given.
    Schedule,
    /// Before: a fixed margin, no jitter anywhere.
    FixedMargin,
}

#[derive(Debug, Clone)]
pub struct Fleet {
    pub instances: usize,
    pub hours: f64,
    /// `session_duration_seconds`.
    pub session: Duration,
    /// `startup_jitter_seconds` (the [`Rule::Schedule`] runs only).
    pub startup_jitter: Duration,
    /// Instances start s3drop spread evenly over this long (0: all in the same instant).
    pub boot_spread: Duration,
    /// Successful STS calls per second the account is allowed (a token bucket holding one
    /// second's worth); calls above it are throttled.
    pub sts_limit: f64,
    /// Files each instance's producers write per hour (evenly spaced).
    pub files_per_hour: f64,
    pub seed: u64,
}

impl Fleet {
    /// STS calls per second once every instance refreshes on its own rhythm.
    pub fn steady_rate(&self) -> f64 {
        self.instances as f64 / refresh_period(self.session).as_secs_f64()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    /// STS calls (answered or throttled) in each simulated second.
    pub per_second: Vec<u32>,
    pub calls: u64,
    pub throttled: u64,
    /// The longest any instance waited after its start for its first session.
    pub first_wait: Duration,
    /// The longest any instance was without a session after having had one (a session
    /// that ended before the next was minted).
    pub longest_lapse: Duration,
    /// How many such lapses there were.
    pub lapses: u64,
    /// Files that appeared while their instance held no valid session.
    pub files_delayed: u64,
    pub files: u64,
}

impl Report {
    /// An instance was `gap` without a session (`first`: before its first) and `files`
    /// appeared meanwhile.
    fn without_session(&mut self, first: bool, gap: Duration, files: u64) {
        self.files_delayed += files;
        if first {
            self.first_wait = self.first_wait.max(gap);
        } else {
            self.longest_lapse = self.longest_lapse.max(gap);
            self.lapses += 1;
        }
    }

    pub fn peak(&self) -> u32 {
        self.per_second.iter().copied().max().unwrap_or(0)
    }

    /// The 99th percentile of calls per second over the whole run.
    pub fn p99(&self) -> u32 {
        let mut sorted = self.per_second.clone();
        sorted.sort_unstable();
        sorted
            .get((sorted.len() * 99 / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    }

    /// Calls per minute from minute `from` on: mean and coefficient of variation.
    pub fn per_minute_from(&self, from: usize) -> (f64, f64) {
        let minutes: Vec<f64> = self
            .per_second
            .chunks_exact(60)
            .skip(from)
            .map(|m| m.iter().map(|&c| c as f64).sum())
            .collect();
        if minutes.is_empty() {
            return (0.0, 0.0);
        }
        let n = minutes.len() as f64;
        let mean = minutes.iter().sum::<f64>() / n;
        let var = minutes.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / n;
        (mean, if mean > 0.0 { var.sqrt() / mean } else { 0.0 })
    }
}

/// One instance's side of the rule.
enum Plan {
    Schedule(Schedule),
    FixedMargin {
        expiry: Option<SystemTime>,
        next: SystemTime,
        delay: Duration,
    },
}

impl Plan {
    fn next_call(&self) -> Option<SystemTime> {
        match self {
            Plan::Schedule(s) => s.next_call(),
            Plan::FixedMargin { next, .. } => Some(*next),
        }
    }

    fn minted(&mut self, now: SystemTime, expiry: SystemTime, draw: f64) {
        match self {
            Plan::Schedule(s) => s.minted(now, Some(expiry), draw),
            Plan::FixedMargin {
                expiry: held,
                next,
                delay,
            } => {
                *held = Some(expiry);
                *next = expiry - REFRESH_BEFORE_EXPIRY;
                *delay = Duration::from_secs(1);
            }
        }
    }

    fn failed(&mut self, now: SystemTime, draw: f64) {
        match self {
            Plan::Schedule(s) => {
                s.failed(now, draw);
            }
            Plan::FixedMargin { next, delay, .. } => {
                *next = now + *delay;
                *delay = (*delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

struct Instance {
    plan: Plan,
    start: SystemTime,
    /// The end of the session last minted, if any.
    expiry: Option<SystemTime>,
    /// When this instance's producers write, evenly spaced from this phase.
    file_phase: f64,
}

/// An STS account: a token bucket refilled at `rate` a second, holding a second's worth.
struct Sts {
    rate: f64,
    tokens: f64,
    at: f64,
}

impl Sts {
    fn allow(&mut self, t: f64) -> bool {
        let burst = self.rate.max(1.0);
        self.tokens = (self.tokens + (t - self.at) * self.rate).min(burst);
        self.at = t;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Runs the fleet under `rule` and reports what STS and the instances saw.
pub fn simulate(fleet: &Fleet, rule: Rule) -> Report {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let secs = |t: SystemTime| t.duration_since(t0).unwrap_or_default().as_secs_f64();
    let end = fleet.hours * 3600.0;
    let mut rng = fastrand::Rng::with_seed(fleet.seed);
    let file_interval = 3600.0 / fleet.files_per_hour.max(f64::MIN_POSITIVE);
    let mut report = Report {
        per_second: vec![0; end.ceil() as usize + 1],
        ..Report::default()
    };
    let mut sts = Sts {
        rate: fleet.sts_limit,
        tokens: fleet.sts_limit.max(1.0),
        at: 0.0,
    };
    let n = fleet.instances;
    let mut instances: Vec<Instance> = (0..n)
        .map(|i| {
            let start = t0 + fleet.boot_spread.mul_f64(i as f64 / n as f64);
            let plan = match rule {
                Rule::Schedule => {
                    Plan::Schedule(Schedule::starting(start, fleet.startup_jitter, rng.f64()))
                }
                Rule::FixedMargin => Plan::FixedMargin {
                    expiry: None,
                    next: start,
                    delay: Duration::from_secs(1),
                },
            };
            Instance {
                plan,
                start,
                expiry: None,
                file_phase: rng.f64() * file_interval,
            }
        })
        .collect();
    // Files written in [a, b) seconds by an instance with this phase.
    let files_in = |phase: f64, a: f64, b: f64| -> u64 {
        let count = |t: f64| ((t - phase) / file_interval).floor().max(-1.0);
        (count(b.min(end)) - count(a.min(end))).max(0.0) as u64
    };
    report.files = instances
        .iter()
        .map(|i| files_in(i.file_phase, secs(i.start), end))
        .sum();
    // Each instance has exactly one pending call: (time in µs, instance).
    let micros = |t: SystemTime| t.duration_since(t0).unwrap_or_default().as_micros() as u64;
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = instances
        .iter()
        .enumerate()
        .filter_map(|(i, inst)| inst.plan.next_call().map(|t| Reverse((micros(t), i))))
        .collect();
    while let Some(Reverse((at, i))) = heap.pop() {
        let now = t0 + Duration::from_micros(at);
        let t = secs(now);
        if t >= end {
            break;
        }
        report.calls += 1;
        report.per_second[t as usize] += 1;
        let inst = &mut instances[i];
        if sts.allow(t) {
            // Time without a session before this one: waiting for the first, or a lapse.
            let gap_from = match inst.expiry {
                None => Some(inst.start),
                Some(expiry) if expiry < now => Some(expiry),
                Some(_) => None,
            };
            if let Some(from) = gap_from {
                report.without_session(
                    inst.expiry.is_none(),
                    now.duration_since(from).unwrap_or_default(),
                    files_in(inst.file_phase, secs(from), t),
                );
            }
            let expiry = now + fleet.session;
            inst.expiry = Some(expiry);
            inst.plan.minted(now, expiry, rng.f64());
        } else {
            report.throttled += 1;
            inst.plan.failed(now, rng.f64());
        }
        if let Some(next) = inst.plan.next_call() {
            heap.push(Reverse((micros(next), i)));
        }
    }
    // Instances still without a session when the run ends.
    for inst in &instances {
        let from = match inst.expiry {
            None => inst.start,
            Some(expiry) if secs(expiry) < end => expiry,
            Some(_) => continue,
        };
        report.without_session(
            inst.expiry.is_none(),
            Duration::from_secs_f64((end - secs(from)).max(0.0)),
            files_in(inst.file_phase, secs(from), end),
        );
    }
    report
}
