//! Monitoring end to end: `/metrics` scraped while s3drop works, each named metric checked
//! against what happened; `/health` before and after the session exists; the textfile for
//! node_exporter written and parseable.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;
use s3drop_testkit::proxy::FaultProxy;
use s3drop_testkit::{Daemon, object_key as key, setup};

/// A plain HTTP GET: (status, body); status 0 when nothing listens (yet).
fn get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// Samples of the Prometheus text format: `name{labels}` → value. Panics on a line that
/// is neither a comment nor a sample.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {l}"));
            (
                name.to_string(),
                value.parse().unwrap_or_else(|_| panic!("bad value: {l}")),
            )
        })
        .collect()
}

/// `status` exited 1 (a file failed) and said each of `needles`; returns what it said.
fn status_says(out: std::process::Output, needles: &[&str]) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_the_textfile_tell_what_happened() {
    let addr = format!("127.0.0.1:{}", s3drop_testkit::free_port().unwrap());
    let (fc, world, site) = setup(BUCKET, "").await;
    let textfile = site.dir.path().join("s3drop.prom");
    site.write_config(
        BUCKET,
        &format!("metrics_listen = \"{addr}\"\nmetrics_textfile = {textfile:?}\noverwrite = false"),
    )
    .unwrap();
    world
        .s3
        .put_object()
        .bucket(BUCKET)
        .key(key("taken.txt"))
        .body(b"first".to_vec().into())
        .send()
        .await
        .unwrap();

    // STS unreachable at first: healthy it is not.
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    proxy.set_down(true);
    let mut daemon =
        Daemon::start_with_env(&site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    let (status, body) = get(&addr, "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no upload session yet"), "{body}");
    proxy.set_down(false);
    wait_until("healthy", ARRIVAL, || get(&addr, "/health").0 == 200).await;

    let bodies: [(&str, &[u8]); 3] = [("a.txt", b"aaaa"), ("b.txt", b"bbbbbbbb"), ("c.txt", b"c")];
    for (name, body) in bodies {
        drop_file(&world, &site, name, body).await;
    }
    std::fs::write(site.watch.join("taken.txt"), b"second").unwrap();
    wait_until("the conflict counted", ARRIVAL, || {
        samples(&get(&addr, "/metrics").1)
            .contains_key("s3drop_upload_failures_total{kind=\"conflict\"}")
    })
    .await;
    // The gauges are set at their next tick.
    wait_until("the gauges' tick", ARRIVAL, || {
        let m = samples(&get(&addr, "/metrics").1);
        m.get("s3drop_failed_files") == Some(&1.0) && m.get("s3drop_queue_files") == Some(&0.0)
    })
    .await;
    let (status, text) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    let m = samples(&text);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let value = |name: &str| {
        *m.get(name)
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert_eq!(value("s3drop_uploaded_files_total"), 3.0);
    assert_eq!(value("s3drop_uploaded_bytes_total"), 13.0);
    assert_eq!(value("s3drop_upload_duration_seconds_count"), 3.0);
    assert_eq!(
        value("s3drop_upload_failures_total{kind=\"conflict\"}"),
        1.0
    );
    assert!(value("s3drop_sts_requests_total{result=\"ok\"}") >= 1.0);
    let expiry = value("s3drop_session_expiry_timestamp_seconds");
    assert!(expiry > now && expiry < now + 3700.0, "{expiry}");
    let last = value("s3drop_last_upload_timestamp_seconds");
    assert!(last > now - 60.0 && last <= now + 1.0, "{last}");
    assert_eq!(value("s3drop_rescans_total{reason=\"startup\"}"), 1.0);
    assert_eq!(value("s3drop_queue_files"), 0.0);
    assert_eq!(value("s3drop_oldest_pending_seconds"), 0.0);
    assert_eq!(
        value("s3drop_failed_files"),
        1.0,
        "the conflict waits on an operator"
    );
    assert_eq!(
        value(&format!(
            "s3drop_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(get(&addr, "/nope").0, 404);

    // SIGHUP rescans: counted by reason.
    daemon.signal("-HUP").unwrap();
    wait_until("the SIGHUP rescan counted", ARRIVAL, || {
        samples(&get(&addr, "/metrics").1).get("s3drop_rescans_total{reason=\"sighup\"}")
            == Some(&1.0)
    })
    .await;

    // `s3drop status` while it runs: the failed file and why, exit 1.
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(s3drop());
        cmd.args(["status", "--config"]).arg(&site.config);
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let taken = site.watch.join("taken.txt").display().to_string();
    let text = status_says(
        status(false),
        &[
            "s3drop: running since",
            "uploaded: 3 files, 13 bytes (this run)",
            &format!("failed: 1 (newest first)\n  {taken} (conflict): an object with key"),
            "already exists (overwrite = false)",
        ],
    );
    println!("status, running:\n{text}");
    let doc: serde_json::Value = serde_json::from_slice(&status(true).stdout).unwrap();
    assert_eq!(doc["running"], true);
    assert_eq!(doc["failed"][0]["path"], taken.as_str());
    assert_eq!(doc["failed"][0]["kind"], "conflict");

    // The textfile: there (written at start, then every 15 s and at stop), parseable,
    // and replaced whole (no temporary file left beside it).
    assert!(daemon.stop().unwrap().success());

    // And stopped: the ledger tells the same failed file.
    let text = status_says(
        status(false),
        &[
            "s3drop: not running",
            "uploaded: 3 files, 13 bytes (recorded)",
            &format!("  {taken} (conflict): an object with key"),
        ],
    );
    println!("status, stopped:\n{text}");
    let written = std::fs::read_to_string(&textfile).unwrap();
    let t = samples(&written);
    assert_eq!(
        t.get("s3drop_uploaded_files_total"),
        Some(&3.0),
        "{written}"
    );
    assert!(
        written.contains("# TYPE s3drop_uploaded_files_total counter"),
        "{written}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(site.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".s3drop-metrics")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `s3drop COMMAND --config CONFIG`, run to its end.
fn offline(command: &str, config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(s3drop())
        .args([command, "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn a_public_metrics_listener_needs_the_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path(), "metrics_listen = \"0.0.0.0:9464\"");
    let out = offline("validate", &config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics_listen") && err.contains("metrics_listen_public"),
        "{err}"
    );
    let config = offline_config(
        dir.path(),
        "metrics_listen = \"0.0.0.0:9464\"\nmetrics_listen_public = true",
    );
    let out = offline("validate", &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_cannot_tell_without_a_ledger_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path(), "");
    let out = offline("status", &config);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot tell") && err.contains("no ledger"),
        "{err}"
    );
}

/// `/health` goes 503 once the session has expired and STS cannot be reached to renew it,
/// and back to 200 with the next session. fakecloud's sessions last 15 minutes at least, so
/// the testkit's proxy shortens the expiry STS answers with to 15 s.
#[tokio::test(flavor = "multi_thread")]
async fn health_fails_when_the_session_expired_unrenewed_and_recovers() {
    let addr = format!("127.0.0.1:{}", s3drop_testkit::free_port().unwrap());
    let (fc, world, site) = setup(BUCKET, &format!("metrics_listen = \"{addr}\"")).await;
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    proxy.shorten_sessions(Duration::from_secs(15));
    let mut daemon =
        Daemon::start_with_env(&site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap();
    wait_until("healthy", ARRIVAL, || get(&addr, "/health").0 == 200).await;
    proxy.set_down(true);
    wait_until("unhealthy", Duration::from_secs(60), || {
        get(&addr, "/health").0 == 503
    })
    .await;
    let (_, body) = get(&addr, "/health");
    assert!(body.contains("expired and could not be renewed"), "{body}");
    proxy.set_down(false);
    // STS is asked again once the refresher's backoff has passed (at most 60 s after the
    // last failure), then the waiting file goes at once.
    let renewal = Duration::from_secs(60) + ARRIVAL;
    std::fs::write(site.watch.join("renewed.txt"), b"a new session").unwrap();
    wait_until("healthy again", renewal, || get(&addr, "/health").0 == 200).await;
    let stored = world
        .wait_for_object(&key("renewed.txt"), ARRIVAL)
        .await
        .unwrap();
    assert_eq!(stored, b"a new session");
    assert!(daemon.stop().unwrap().success());
}

/// Any local user can connect to the metrics listener. 2,000 idle connections and a client
/// that sends its headers a byte at a time, against s3drop held to 1,024 descriptors:
/// uploads go on and `/health` answers throughout (the listener keeps at most 64
/// connections, closing the oldest, and times out slow headers).
#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_clients_cannot_starve_the_daemon_of_descriptors() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // This test itself holds 2,000 sockets.
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).unwrap();

    let addr = format!("127.0.0.1:{}", s3drop_testkit::free_port().unwrap());
    let (fc, world, site) = setup(BUCKET, &format!("metrics_listen = \"{addr}\"")).await;
    let cmd = site.command_with(
        &["prlimit", "--nofile=1024:1024"],
        s3drop(),
        &fc.sdk_env(),
        &["run", "--log-format", "json"],
    );
    let mut daemon = Daemon::spawn(&site, cmd).unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    wait_until("healthy", ARRIVAL, || get(&addr, "/health").0 == 200).await;

    let socket: std::net::SocketAddr = addr.parse().unwrap();
    let slowloris = std::thread::spawn(move || {
        let Ok(mut stream) = std::net::TcpStream::connect(socket) else {
            return;
        };
        let request =
            b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in request {
            if stream.write_all(&[*byte]).is_err() {
                return; // closed by the server: what it should do
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        if let Ok(stream) =
            std::net::TcpStream::connect_timeout(&socket, Duration::from_millis(500))
        {
            idle.push(stream);
        }
    }
    assert!(idle.len() >= 1_900, "only {} connections made", idle.len());
    for i in 0..10 {
        let name = format!("during-{i}.txt");
        drop_file(&world, &site, &name, name.as_bytes()).await;
        let (status, body) = get(&addr, "/health");
        assert_eq!(status, 200, "{body}");
    }
    drop(idle);
    slowloris.join().unwrap();
    let log = daemon.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(daemon.stop().unwrap().success());
}

/// Right after start every failure kind, STS result and rescan reason is a series at 0 (an
/// alert on `increase()` sees the first one), before anything failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_at_start_shows_every_label_value_at_zero() {
    use s3drop::metrics::{FailureKind, RescanReason, StsResult};
    let addr = format!("127.0.0.1:{}", s3drop_testkit::free_port().unwrap());
    let (fc, _world, site) = setup(BUCKET, &format!("metrics_listen = \"{addr}\"")).await;
    let mut daemon = start_ready(&site, &fc);
    wait_until("metrics served", ARRIVAL, || {
        get(&addr, "/metrics").0 == 200
    })
    .await;
    let scraped = samples(&get(&addr, "/metrics").1);
    let series = FailureKind::ALL
        .iter()
        .map(|k| format!("s3drop_upload_failures_total{{kind=\"{}\"}}", k.label()))
        .chain(
            StsResult::ALL
                .iter()
                .map(|k| format!("s3drop_sts_requests_total{{result=\"{}\"}}", k.label())),
        )
        .chain(
            RescanReason::ALL
                .iter()
                .map(|k| format!("s3drop_rescans_total{{reason=\"{}\"}}", k.label())),
        );
    for name in series {
        let value = scraped.get(&name).copied();
        assert!(value.is_some(), "{name} is not exposed");
        if !name.contains("\"ok\"") && !name.contains("\"startup\"") {
            assert_eq!(value, Some(0.0), "{name}");
        }
    }
    assert!(daemon.stop().unwrap().success());
}

/// A failure is in the ledger, not only in memory: a file whose key would be over 1,024
/// bytes is listed by `status` after the daemon stopped (exit 1); renamed to a short name it
/// uploads, and `status` says nothing failed (exit 0).
#[tokio::test(flavor = "multi_thread")]
async fn a_failure_is_listed_by_status_after_a_stop_until_the_file_is_fixed() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let deep: String = (0..150).map(|i| format!("dir{i:03}/")).collect();
    std::fs::create_dir_all(site.watch.join(&deep)).unwrap();
    let long = site.watch.join(format!("{deep}report.csv"));
    std::fs::write(&long, b"too long a key").unwrap();
    let status = || site.command(s3drop(), &fc, &["status"]).output().unwrap();
    let mut daemon = start_ready(&site, &fc);
    wait_until("the failure in status", ARRIVAL, || {
        String::from_utf8_lossy(&status().stdout).contains("failed: 1")
    })
    .await;
    assert!(daemon.stop().unwrap().success());

    let stopped = status();
    let text = String::from_utf8_lossy(&stopped.stdout);
    assert_eq!(stopped.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not running") && text.contains("report.csv (invalid_key)"),
        "the failure and its kind, from the ledger: {text}"
    );
    assert!(text.contains("1,024") || text.contains("1024"), "{text}");

    std::fs::rename(&long, site.watch.join("report.csv")).unwrap();
    let mut daemon = start_ready(&site, &fc);
    world
        .wait_for_object(&key("report.csv"), ARRIVAL)
        .await
        .unwrap();
    assert!(daemon.stop().unwrap().success());
    let fixed = status();
    let text = String::from_utf8_lossy(&fixed.stdout);
    assert_eq!(fixed.status.code(), Some(0), "{text}");
    assert!(text.contains("failed: none"), "{text}");
}
