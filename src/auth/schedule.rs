//! When s3drop asks STS for a session: the one schedule the daemon's start-up, its session
//! cache and its refresher follow, and that the fleet simulation (`s3drop-fleet-sim`,
//! docs/FLEET.md) drives through simulated time. It is pure: callers pass the time and the
//! random draws (0..1), so the daemon uses the clock and `fastrand`, the simulation its own.
//!
//! Three rules keep a fleet polite to STS, whose request quota is per account:
//! - the first call waits a random part of `startup_jitter_seconds`, so a fleet booted
//!   together does not ask at once;
//! - a session is refreshed at a random point of a window before its expiry, drawn anew
//!   each time, and the first session of a run over a whole refresh period, so instances
//!   started together are spread at once rather than over days;
//! - a failed call is retried after a capped exponential backoff with full jitter, never
//!   past the end of the session still held.

use std::time::{Duration, SystemTime};

/// Refresh at least this long before the session's expiry, so no request (or long upload)
/// starts with credentials about to lapse.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// The first retry after a failed call waits up to this long (full jitter)...
const RETRY_BASE: Duration = Duration::from_secs(2);
/// ...doubling per failure in a row up to this cap.
const RETRY_CAP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// The session held: `Some(None)` is one without an expiry.
    held: Option<Option<SystemTime>>,
    /// When STS is asked next; `None` with no session held means at once, with one held
    /// never (it does not expire).
    next: Option<SystemTime>,
    /// Calls that failed in a row.
    failures: u32,
    /// A session has been minted in this schedule's life (the first is refreshed early).
    minted_before: bool,
}

impl Schedule {
    /// The daemon's start: the first call waits `jitter × draw`.
    pub fn starting(now: SystemTime, jitter: Duration, draw: f64) -> Schedule {
        Schedule {
            next: Some(now + jitter.mul_f64(draw.clamp(0.0, 1.0))),
            ..Schedule::default()
        }
    }

    /// When STS is asked next, if ever.
    pub fn next_call(&self) -> Option<SystemTime> {
        match (self.next, self.held) {
            (Some(at), _) => Some(at),
            (None, None) => Some(SystemTime::UNIX_EPOCH),
            (None, Some(_)) => None,
        }
    }

    /// Is it time to ask STS?
    pub fn due(&self, now: SystemTime) -> bool {
        self.next_call().is_some_and(|at| now >= at)
    }

    /// Does a session held still hold at `now`?
    pub fn usable(&self, now: SystemTime) -> bool {
        self.held
            .is_some_and(|expiry| expiry.is_none_or(|expiry| now < expiry))
    }

    /// STS minted a session at `now` expiring at `expiry`: refresh it at a point drawn
    /// with `draw` (see [`refresh_point`]; the first session of a run, [`first_refresh_point`]).
    pub fn minted(&mut self, now: SystemTime, expiry: Option<SystemTime>, draw: f64) {
        let point = if self.minted_before {
            refresh_point
        } else {
            first_refresh_point
        };
        self.next = expiry.map(|expiry| point(now, expiry, draw));
        self.held = Some(expiry);
        self.failures = 0;
        self.minted_before = true;
    }

    /// The call at `now` failed: the next waits [`retry_delay`] (never past the end of the
    /// session held). Returns that delay.
    pub fn failed(&mut self, now: SystemTime, draw: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = retry_delay(self.failures, draw);
        let mut next = now + delay;
        if let Some(Some(expiry)) = self.held
            && now < expiry
        {
            next = next.min(expiry);
        }
        self.next = Some(next);
        delay
    }

    /// The session was refused as expired: drop it and ask at once (unless a failed call's
    /// backoff is running).
    pub fn invalidate(&mut self) {
        self.held = None;
        if self.failures == 0 {
            self.next = None;
        }
    }

    /// An operator's SIGHUP at `now`: with no usable session and a failed call's backoff
    /// running, ask STS now (one call; a session still held waits for its refresh point).
    /// True if the next call moved.
    pub fn hurry(&mut self, now: SystemTime) -> bool {
        if self.usable(now) || self.failures == 0 || self.due(now) {
            return false;
        }
        self.next = Some(now);
        true
    }
}

/// How long after the `failures`-th failed call in a row the next is made: up to 2 s
/// doubling to a 60 s cap, with full jitter (`draw` in 0..1), at least one second.
pub fn retry_delay(failures: u32, draw: f64) -> Duration {
    let cap = RETRY_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(RETRY_CAP);
    cap.mul_f64(draw.clamp(0.0, 1.0))
        .max(Duration::from_secs(1))
}

/// The latest and earliest refresh points of a session `lifetime` long, as time before its
/// expiry: the window is a tenth of the lifetime wide and ends 5 % of the lifetime, but at
/// least [`REFRESH_BEFORE_EXPIRY`], before expiry (15 % to 5 % for long sessions). A
/// session shorter than twice the margin (none from AWS: its shortest last 15 minutes) is
/// refreshed from its middle on, so the refresher never spins.
fn window(lifetime: Duration) -> (Duration, Duration) {
    let late = lifetime
        .mul_f64(0.05)
        .max(REFRESH_BEFORE_EXPIRY.min(lifetime / 2));
    (late, late + lifetime.mul_f64(0.10))
}

/// When a session minted at `minted` and expiring at `expiry` is refreshed: at the point
/// `draw` (0..1) of its window (see [`window`]).
pub fn refresh_point(minted: SystemTime, expiry: SystemTime, draw: f64) -> SystemTime {
    let lifetime = expiry.duration_since(minted).unwrap_or_default();
    let (late, early) = window(lifetime);
    let before = late + (early - late).mul_f64(draw.clamp(0.0, 1.0));
    expiry.checked_sub(before).unwrap_or(minted).max(minted)
}

/// The mean time between two refreshes of sessions `lifetime` long: the lifetime less the
/// middle of the window. A fleet of N instances asks STS N / period times a second.
pub fn refresh_period(lifetime: Duration) -> Duration {
    let (late, early) = window(lifetime);
    lifetime.saturating_sub((late + early) / 2)
}

/// The first session of a run is refreshed at a point drawn over a whole refresh period
/// (the lifetime less the window's middle) ending at the window's latest point: a fleet
/// started together then refreshes spread evenly from its first hour on, at the cost of
/// one early refresh per start.
pub fn first_refresh_point(minted: SystemTime, expiry: SystemTime, draw: f64) -> SystemTime {
    let lifetime = expiry.duration_since(minted).unwrap_or_default();
    let (late, _) = window(lifetime);
    let period = refresh_period(lifetime);
    let latest = expiry.checked_sub(late).unwrap_or(minted).max(minted);
    let earliest = latest.checked_sub(period).unwrap_or(minted).max(minted);
    let span = latest.duration_since(earliest).unwrap_or_default();
    earliest + span.mul_f64(draw.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        T0 + Duration::from_secs(1_000_000 + s)
    }

    /// Seconds before expiry of the refresh point `point` picks for a session of
    /// `lifetime` s and `draw`.
    fn before(
        point: fn(SystemTime, SystemTime, f64) -> SystemTime,
        lifetime: u64,
        draw: f64,
    ) -> u64 {
        let expiry = at(lifetime);
        expiry
            .duration_since(point(at(0), expiry, draw))
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_hangup_asks_at_once_only_while_no_session_holds() {
        let mut s = Schedule::default();
        s.minted(at(0), Some(at(100)), 0.5);
        assert!(
            !s.hurry(at(10)),
            "a session holds: it waits for its refresh point"
        );
        s.failed(at(95), 1.0);
        assert!(!s.hurry(at(96)), "the session still holds until 100");
        s.failed(at(101), 1.0);
        assert!(!s.due(at(102)), "backing off");
        assert!(s.hurry(at(102)));
        assert!(s.due(at(102)));
        assert!(!s.hurry(at(102)), "already due");
    }

    #[test]
    fn refreshes_are_spread_over_a_window_always_before_the_margin() {
        let before = |lifetime, draw| before(refresh_point, lifetime, draw);
        // One hour: between 660 s and 300 s before expiry (the 5-minute margin is later
        // than 5 %; the window is a tenth of the hour wide).
        assert_eq!((before(3600, 0.0), before(3600, 1.0)), (300, 660));
        let draws: Vec<u64> = (0..2000).map(|_| before(3600, fastrand::f64())).collect();
        assert!(draws.iter().all(|s| (300..=660).contains(s)), "{draws:?}");
        let spread = draws.iter().max().unwrap() - draws.iter().min().unwrap();
        assert!(spread > 200, "draws cover the window: {spread}");
        // 36 hours (a federation token): 5 % and 15 % of the lifetime.
        assert_eq!((before(129_600, 0.0), before(129_600, 1.0)), (6480, 19_440));
        // Fifteen minutes: the window moves earlier, a tenth of the lifetime wide.
        assert_eq!((before(900, 0.0), before(900, 1.0)), (300, 390));
        // Shorter than twice the margin: from the middle on, never at once.
        assert_eq!((before(60, 0.0), before(60, 1.0)), (30, 36));
    }

    #[test]
    fn the_first_refresh_is_drawn_over_a_whole_period_before_the_margin() {
        let before = |lifetime, draw| before(first_refresh_point, lifetime, draw);
        // One hour: the period is 3600 − 480 = 3120 s, ending 300 s before expiry.
        assert_eq!((before(3600, 1.0), before(3600, 0.0)), (300, 3420));
        let draws: Vec<u64> = (0..2000).map(|_| before(3600, fastrand::f64())).collect();
        assert!(draws.iter().all(|s| (300..=3420).contains(s)));
        let spread = draws.iter().max().unwrap() - draws.iter().min().unwrap();
        assert!(spread > 2500, "draws cover the period: {spread}");
        // Short: a whole period (60 − 33 s) ending in the middle.
        assert_eq!((before(60, 1.0), before(60, 0.0)), (30, 57));
    }

    #[test]
    fn the_first_session_is_refreshed_early_and_later_ones_in_the_window() {
        let mut s = Schedule::default();
        assert!(s.due(at(0)), "no session: ask at once");
        s.minted(at(0), Some(at(3600)), 0.0);
        assert_eq!(
            s.next_call(),
            Some(at(180)),
            "the first: over a whole period"
        );
        assert!(!s.due(at(179)) && s.due(at(180)) && s.usable(at(180)));
        s.minted(at(180), Some(at(3780)), 0.0);
        assert_eq!(s.next_call(), Some(at(3780 - 300)), "then in the window");
        assert!(!s.usable(at(3780)), "expired at its expiry");
    }

    #[test]
    fn start_up_waits_a_drawn_part_of_the_jitter() {
        let s = Schedule::starting(at(0), Duration::from_secs(300), 0.5);
        assert!(!s.usable(at(0)) && !s.due(at(149)) && s.due(at(150)));
        assert!(Schedule::starting(at(0), Duration::ZERO, 0.9).due(at(0)));
    }

    #[test]
    fn a_failing_call_backs_off_jittered_and_capped() {
        assert_eq!(retry_delay(1, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(retry_delay(30, 1.0), Duration::from_secs(60), "capped");
        assert_eq!(retry_delay(30, 0.0), Duration::from_secs(1), "at least 1 s");
        let draws: Vec<Duration> = (0..500).map(|_| retry_delay(6, fastrand::f64())).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(
            *draws.iter().max().unwrap() - *draws.iter().min().unwrap() > Duration::from_secs(30),
            "jittered"
        );
    }

    #[test]
    fn a_failed_refresh_keeps_the_session_and_never_retries_past_its_end() {
        let mut s = Schedule::default();
        s.minted(at(0), Some(at(100)), 1.0);
        assert_eq!(s.next_call(), Some(at(50)));
        for _ in 0..10 {
            s.failed(at(90), 1.0);
        }
        assert!(s.usable(at(90)), "the session held is kept");
        assert_eq!(s.next_call(), Some(at(100)), "60 s would pass its end");
        // Lapsed: the backoff runs on, the call is not made before it.
        s.failed(at(100), 1.0);
        assert!(!s.usable(at(100)));
        assert_eq!(s.next_call(), Some(at(160)));
        s.minted(at(160), Some(at(3760)), 0.0);
        s.failed(at(200), 1.0);
        assert_eq!(
            s.next_call(),
            Some(at(202)),
            "a success restarts the backoff"
        );
    }

    #[test]
    fn invalidating_asks_at_once_unless_backing_off() {
        let mut s = Schedule::default();
        s.minted(at(0), Some(at(3600)), 0.5);
        s.invalidate();
        assert!(!s.usable(at(1)) && s.due(at(1)));
        s.failed(at(1), 1.0);
        s.invalidate();
        assert!(!s.due(at(2)) && s.due(at(3)));
    }
}
