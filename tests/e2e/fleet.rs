//! Fleet scale (docs/FLEET.md): ten thousand instances rebooted together, simulated under
//! s3drop's own session schedule (`auth::schedule`) through a day of simulated time, meet
//! the targets of issue 16. `scripts/fleet-sim.sh` prints the same runs as a table. And
//! one instance, end to end, through an STS that throttles (the testkit's fault proxy:
//! fakecloud never throttles).

use std::time::Duration;

use crate::common::*;
use s3drop_testkit::fleet::{Fleet, Rule, simulate};
use s3drop_testkit::proxy::FaultProxy;
use s3drop_testkit::{Daemon, object_key as key, setup};

fn fleet(hours: f64, sts_limit: f64) -> Fleet {
    Fleet {
        instances: 10_000,
        hours,
        session: Duration::from_secs(3600),
        startup_jitter: Duration::from_secs(300),
        boot_spread: Duration::ZERO,
        sts_limit,
        files_per_hour: 60.0,
        seed: 7,
    }
}

#[test]
fn start_up_jitter_cuts_a_rebooted_fleets_peak_to_a_twentieth() {
    // An STS that throttles nothing: the peak is the fleet's own.
    let f = fleet(2.0, 1e9);
    let (before, now) = (
        simulate(&f, Rule::FixedMargin),
        simulate(&f, Rule::Schedule),
    );
    assert_eq!(before.peak(), 10_000, "all at once without jitter");
    assert!(
        now.peak() * 20 <= before.peak(),
        "peak {} vs {} without jitter",
        now.peak(),
        before.peak()
    );
    assert!(now.first_wait <= Duration::from_secs(300));
}

#[test]
fn a_day_after_a_reboot_refreshes_are_spread_evenly() {
    // The capacity model's assumed STS rate (docs/FLEET.md).
    let f = fleet(24.0, 50.0);
    let r = simulate(&f, Rule::Schedule);
    let (mean, cv) = r.per_minute_from(120);
    assert!(cv < 0.2, "coefficient of variation per minute {cv:.2}");
    // One call per instance per refresh period, nothing more.
    let expected = f.steady_rate() * 60.0;
    assert!(
        (mean - expected).abs() < expected * 0.05,
        "{mean:.0} calls/min, expected {expected:.0}"
    );
    assert_eq!(r.throttled, 0);
    assert_eq!(r.lapses, 0);
}

#[test]
fn with_twice_the_steady_rate_no_session_ever_lapses() {
    let f = fleet(24.0, 2.0 * fleet(1.0, 0.0).steady_rate());
    let r = simulate(&f, Rule::Schedule);
    assert!(r.throttled > 0, "the reboot is throttled: the case is real");
    assert_eq!(
        (r.lapses, r.longest_lapse),
        (0, Duration::ZERO),
        "no session ended before the next was minted"
    );
    // The boot itself waits for STS: N calls at 2× the steady rate take about half a
    // refresh period; every instance has its session well within the hour.
    assert!(
        r.first_wait < Duration::from_secs(3600),
        "{:?}",
        r.first_wait
    );
}

/// STS throttles from just after start-up until after the session has lapsed: the refresh
/// meanwhile keeps the valid session (a file dropped then arrives), STS is asked as the
/// backoff says rather than once per request, a file dropped after the lapse waits (it
/// does not fail), and once STS answers again the session is renewed and the file goes.
/// fakecloud's sessions last 15 minutes at least: the proxy shortens them to 40 s.
#[tokio::test(flavor = "multi_thread")]
async fn sts_throttling_during_a_refresh_loses_nothing() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let textfile = site.dir.path().join("s3drop.prom");
    site.write_config(BUCKET, &format!("metrics_textfile = {textfile:?}"))
        .unwrap();
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    proxy.shorten_sessions(Duration::from_secs(20));
    let mut daemon =
        Daemon::start_with_env(&site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap();
    drop_file(&world, &site, "before.txt", b"before throttling").await;

    proxy.throttle_sts(true);
    drop_file(&world, &site, "during.txt", b"the valid session is kept").await;
    // The refresh comes 1 to 10 s after the 20 s session was minted, and is throttled.
    daemon
        .wait_for_event(
            "session_failed",
            &[("result", "throttled"), ("kept", "true")],
            ARRIVAL,
        )
        .unwrap();
    daemon
        .wait_for_event(
            "session_failed",
            &[("result", "throttled"), ("kept", "false")],
            Duration::from_secs(60),
        )
        .unwrap();
    std::fs::write(site.watch.join("after.txt"), b"waits for the next session").unwrap();
    wait_until("the file taken, waiting", ARRIVAL, || {
        pending_path(&site, &fc).is_some_and(|p| p.ends_with("after.txt"))
    })
    .await;
    assert_eq!(
        world.get_object(&key("after.txt")).await.unwrap(),
        None,
        "no session: the file waits"
    );
    let throttled = proxy.stats().sts_throttled;
    // About 20 s of throttling: a backoff doubling from 2 s makes a handful of calls.
    assert!(
        (1..=12).contains(&throttled),
        "{throttled} throttled STS calls: not once per request"
    );

    proxy.throttle_sts(false);
    // The operator sees STS work again and sends SIGHUP: the lapsed session is asked for
    // at once (one call), not after the backoff (up to a minute).
    let calls = |d: &Daemon| d.events("session_minted").len() + d.events("session_failed").len();
    let calls_before = calls(&daemon);
    daemon.signal("-HUP").unwrap();
    let stored = world
        .wait_for_object(&key("after.txt"), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        calls(&daemon) - calls_before,
        1,
        "one STS call for the SIGHUP"
    );
    assert_eq!(stored, b"waits for the next session");
    assert!(daemon.stop().unwrap().success());
    assert!(
        daemon.events("session_minted").len() >= 2,
        "renewed after throttling"
    );
    assert!(
        daemon
            .events("upload_failed")
            .iter()
            .all(|e| e["level"] != "ERROR"),
        "no file failed for good:\n{}",
        daemon.log()
    );
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    let total = proxy.stats().sts_throttled;
    let waited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("s3drop_upload_failures_total{kind=\"no_session\"} "))
        .unwrap_or("0");
    println!(
        "sts throttling test: {total} throttled STS calls, {} sessions minted, {waited} \
         upload attempts that waited for a session",
        daemon.events("session_minted").len(),
    );
    assert_ne!(waited, "0", "after.txt met the lapsed session: {metrics}");
    // Waiting files do not flood the journal: the cause is logged once per STS call.
    assert!(
        // (waiting for a session is a debug event: not logged at all by default)
        daemon.events("upload_failed").is_empty(),
        "{}",
        daemon.log()
    );
    let line = format!("s3drop_sts_requests_total{{result=\"throttled\"}} {total}\n");
    assert!(
        metrics.contains(&line),
        "each throttled call counted: {line}{metrics}"
    );
}

/// IMDS answers 429 when an instance asks too fast; s3drop's IMDS client retries it with
/// backoff (the SDK's alone would not), so start-up goes through without a failed attempt.
/// And IMDS is asked at start only: not per file, not per session refresh (the instance
/// role's credentials stay in the SDK's cache until near their expiry).
#[tokio::test(flavor = "multi_thread")]
async fn imds_is_asked_at_start_only_and_its_429_is_retried() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    proxy.throttle_imds(2);
    // Sessions of 10 s: refreshed every 5 s or so.
    proxy.shorten_sessions(Duration::from_secs(10));
    let env = vec![
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", proxy.endpoint.clone()),
        ("AWS_ENDPOINT_URL", proxy.endpoint.clone()),
        ("AWS_REGION", s3drop_testkit::REGION.to_string()),
    ];
    let mut daemon = Daemon::start_with_env(&site, s3drop(), &env).unwrap();
    drop_file(&world, &site, "a.txt", b"through a throttled IMDS").await;
    let at_start = proxy.stats().imds_requests;
    for i in 0..10 {
        std::fs::write(site.watch.join(format!("f{i}.txt")), b"more").unwrap();
    }
    wait_until("three more sessions", Duration::from_secs(60), || {
        daemon.events("session_minted").len() >= 4
    })
    .await;
    for i in 0..10 {
        world
            .wait_for_object(&key(&format!("f{i}.txt")), ARRIVAL)
            .await
            .unwrap();
    }
    assert!(daemon.stop().unwrap().success());
    let stats = proxy.stats();
    println!(
        "imds test: {at_start} IMDS requests at start (2 answered 429), {} after it over 3 \
         session refreshes and 10 files",
        stats.imds_requests - at_start
    );
    assert_eq!(stats.imds_throttled, 2);
    assert_eq!(
        stats.imds_requests, at_start,
        "no IMDS call per file or per refresh"
    );
    assert!(
        daemon.events("session_waiting").is_empty(),
        "the 429s were retried inside the IMDS client:\n{}",
        daemon.log()
    );
}
