//! `scripts/fleet-sim.sh`: a fleet rebooted together, simulated under s3drop's own session
//! schedule and under the rule it had before, side by side (see `s3drop_testkit::fleet`
//! and docs/FLEET.md). Exits 1 when the new rule misses a target of docs/FLEET.md.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use s3drop_testkit::fleet::{Fleet, Report, Rule, simulate};

/// Simulates N s3drop instances rebooted together asking STS for their sessions.
#[derive(Parser)]
#[command(name = "fleet-sim")]
struct Args {
    /// Instances in the fleet.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Simulated hours.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// session_duration_seconds.
    #[arg(long, default_value_t = 3600)]
    session_seconds: u64,
    /// startup_jitter_seconds of the new rule (the old one had none).
    #[arg(long, default_value_t = 300)]
    startup_jitter: u64,
    /// Instances start s3drop spread evenly over this many seconds (0: the same instant).
    #[arg(long, default_value_t = 0)]
    boot_spread: u64,
    /// STS calls per second the account allows: a number, or a multiple of the fleet's
    /// steady rate such as 2x.
    #[arg(long, default_value = "2x")]
    sts_limit: String,
    /// Files each instance writes per hour.
    #[arg(long, default_value_t = 60.0)]
    files_per_hour: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.instances == 0 || args.hours <= 0.0 || args.session_seconds == 0 {
        bail!("--instances, --hours and --session-seconds must be positive");
    }
    let mut fleet = Fleet {
        instances: args.instances,
        hours: args.hours,
        session: Duration::from_secs(args.session_seconds),
        startup_jitter: Duration::from_secs(args.startup_jitter),
        boot_spread: Duration::from_secs(args.boot_spread),
        sts_limit: 0.0,
        files_per_hour: args.files_per_hour,
        seed: args.seed,
    };
    fleet.sts_limit = match args.sts_limit.strip_suffix('x') {
        Some(times) => times.parse::<f64>().context("--sts-limit")? * fleet.steady_rate(),
        None => args.sts_limit.parse().context("--sts-limit")?,
    };
    let started = Instant::now();
    let old = simulate(&fleet, Rule::FixedMargin);
    let new = simulate(&fleet, Rule::Schedule);
    let took = started.elapsed();

    println!(
        "{} instances rebooted together{}, {} simulated hours, {} s sessions; STS allows \
         {:.1} calls/s (the steady rate is {:.2}/s); {} files per instance-hour",
        fleet.instances,
        if args.boot_spread > 0 {
            format!(" (over {} s)", args.boot_spread)
        } else {
            String::new()
        },
        fleet.hours,
        args.session_seconds,
        fleet.sts_limit,
        fleet.steady_rate(),
        fleet.files_per_hour,
    );
    println!();
    println!(
        "| | before: fixed 5-minute margin, no jitter | now: s3drop's schedule, startup_jitter_seconds = {} |",
        args.startup_jitter
    );
    println!("|---|---|---|");
    let steady_from = 120.min(old.per_second.len() / 60 / 2);
    let row = |name: &str, f: &dyn Fn(&Report) -> String| {
        println!("| {name} | {} | {} |", f(&old), f(&new));
    };
    row("peak STS calls/s", &|r| r.peak().to_string());
    row("p99 STS calls/s", &|r| r.p99().to_string());
    row("STS calls, of them throttled", &|r| {
        format!("{}, {}", r.calls, r.throttled)
    });
    row(
        &format!("calls/min from minute {steady_from}: mean, coefficient of variation"),
        &|r| {
            let (mean, cv) = r.per_minute_from(steady_from);
            format!("{mean:.0}, {cv:.2}")
        },
    );
    row("longest wait for the first session", &|r| {
        secs(r.first_wait)
    });
    row("sessions that lapsed before renewal; longest gap", &|r| {
        format!("{}; {}", r.lapses, secs(r.longest_lapse))
    });
    row("files that waited for a session", &|r| {
        format!("{} of {}", r.files_delayed, r.files)
    });
    println!();
    println!("simulated both in {:.2} s", took.as_secs_f64());

    // The targets of docs/FLEET.md for the new rule.
    let mut missed = Vec::new();
    if args.startup_jitter >= 300 && new.peak() * 20 > old.peak() {
        missed.push(format!(
            "peak {} is more than 1/20 of the no-jitter peak {}",
            new.peak(),
            old.peak()
        ));
    }
    let (_, cv) = new.per_minute_from(steady_from);
    if fleet.hours >= 4.0 && cv >= 0.2 {
        missed.push(format!(
            "steady-state CV per minute {cv:.2} is not below 0.2"
        ));
    }
    if fleet.sts_limit >= 2.0 * fleet.steady_rate() && new.lapses > 0 {
        missed.push(format!(
            "{} sessions lapsed although STS allows 2x the steady rate",
            new.lapses
        ));
    }
    for m in &missed {
        println!("target missed: {m}");
    }
    if missed.is_empty() {
        println!(
            "targets met: peak 1/{:.0} of the no-jitter peak, steady CV {cv:.2}, {} lapses{}",
            old.peak() as f64 / new.peak().max(1) as f64,
            new.lapses,
            if fleet.sts_limit < 2.0 * fleet.steady_rate() {
                " (STS allows less than twice the steady rate: lapses are not a target here)"
            } else {
                ""
            }
        );
        Ok(())
    } else {
        std::process::exit(1)
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}
