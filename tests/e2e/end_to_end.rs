//! End to end: fakecloud in strict IAM mode with SigV4 checks, a world provisioned through
//! the AWS APIs, and the real s3drop binary with credentials only from the emulated IMDS.

use std::io::Write;

use std::time::Duration;

use s3drop_testkit::{Daemon, FakeCloud, Site, object_key as key, policies, setup};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn files_arrive_whole_under_the_right_keys_and_nothing_partial_is_sent() {
    let (fc, world, site) = setup(BUCKET, "").await;
    // Backlog: present before s3drop starts.
    let backlog = content(1, 10_000);
    std::fs::write(site.watch.join("backlog.csv"), &backlog).unwrap();
    std::fs::write(site.watch.join("ignored.tmp"), b"temporary").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", site.watch.join("link-out")).unwrap();

    let mut daemon = start_ready(&site, &fc);
    assert_eq!(
        world
            .wait_for_object(&key("backlog.csv"), ARRIVAL)
            .await
            .unwrap(),
        backlog
    );

    // A new subdirectory, created after start, with a file in it.
    let nested_dir = site.watch.join("2026/11/24");
    std::fs::create_dir_all(&nested_dir).unwrap();
    let nested = content(2, 70_000);
    std::fs::write(nested_dir.join("nested.json"), &nested).unwrap();

    // Written elsewhere, renamed into place.
    let renamed = content(3, 5_000);
    let staging = site.dir.path().join("staging.bin");
    std::fs::write(&staging, &renamed).unwrap();
    std::fs::rename(&staging, site.watch.join("renamed.bin")).unwrap();

    // Written slowly, in several writes, with pauses longer than settle_seconds.
    let slow_parts: Vec<Vec<u8>> = (0..4).map(|i| content(10 + i, 3_000)).collect();
    let mut slow = std::fs::File::create(site.watch.join("slow.log")).unwrap();
    for part in &slow_parts {
        slow.write_all(part).unwrap();
        slow.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1_300));
    }
    drop(slow);
    let slow_whole = slow_parts.concat();

    assert_eq!(
        world
            .wait_for_object(&key("2026/11/24/nested.json"), ARRIVAL)
            .await
            .unwrap(),
        nested
    );
    assert_eq!(
        world
            .wait_for_object(&key("renamed.bin"), ARRIVAL)
            .await
            .unwrap(),
        renamed
    );
    assert_eq!(
        world
            .wait_for_object(&key("slow.log"), ARRIVAL)
            .await
            .unwrap(),
        slow_whole
    );

    // Any stray upload happens before counting.
    wait_idle(&site, &fc).await;
    let status = daemon.stop().unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status}");

    // Server-side truth: every key was PUT exactly once (a partial upload followed by the
    // whole file would show as two PUTs), and nothing else was written.
    let puts = fc.object_puts(BUCKET);
    let expected: Vec<String> = [
        "2026/11/24/nested.json",
        "backlog.csv",
        "renamed.bin",
        "slow.log",
    ]
    .iter()
    .map(|r| key(r))
    .collect();
    assert_eq!(
        puts.keys().cloned().collect::<Vec<_>>(),
        expected,
        "{puts:?}"
    );
    assert!(
        puts.values().all(|&n| n == 1),
        "each key PUT once: {puts:?}"
    );
    assert_eq!(world.keys().await.unwrap(), expected);

    // Each upload was logged with path, key, bytes and duration.
    let uploaded = s3drop_testkit::events_in(
        &std::fs::read_to_string(site.dir.path().join("s3drop-run.log")).unwrap(),
        "uploaded",
    );
    assert_eq!(uploaded.len(), 4, "{uploaded:?}");
    for event in &uploaded {
        for field in ["path", "key", "bytes", "duration_ms"] {
            assert!(!event[field].is_null(), "{field} missing in {event}");
        }
    }
    let log = std::fs::read_to_string(site.dir.path().join("s3drop-run.log")).unwrap();
    let dropped = s3drop_testkit::events_in(&log, "dropped");
    assert!(
        dropped
            .iter()
            .any(|e| e["path"].as_str().unwrap().ends_with("link-out")
                && e["reason"] == "not_regular"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_uploads_nothing_twice() {
    let (fc, world, site) = setup(BUCKET, "").await;
    for i in 0..20u32 {
        std::fs::write(site.watch.join(format!("f{i:02}.dat")), content(i, 2_000)).unwrap();
    }
    let mut first = start_ready(&site, &fc);
    for i in 0..20u32 {
        world
            .wait_for_object(&key(&format!("f{i:02}.dat")), ARRIVAL)
            .await
            .unwrap();
    }
    assert!(first.stop().unwrap().success());

    let mut second = Daemon::start(&site, s3drop(), &fc).unwrap();
    second
        .wait_for_event("scanned", &[("reason", "startup")], ARRIVAL)
        .unwrap();
    drop_file(&world, &site, "after-restart.dat", b"new").await;
    wait_idle(&site, &fc).await;
    assert!(second.stop().unwrap().success());

    let puts = fc.object_puts(BUCKET);
    assert_eq!(puts.len(), 21, "{puts:?}");
    assert!(puts.values().all(|&n| n == 1), "no key PUT twice: {puts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_policy_denies_writes_outside_the_prefix_that_the_role_allows() {
    let (fc, world, site) = setup(BUCKET, "").await;
    // s3drop's own session: `check` writes a probe under the prefix and must be denied
    // outside it.
    let out = site.command(s3drop(), &fc, &["check"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("✔ write under prefix"), "{stdout}");
    assert!(stdout.contains("✔ scope holds"), "{stdout}");

    // The same role without the session policy may write outside the prefix: the denial
    // above comes from the session policy, not from the role.
    let unscoped = world
        .s3_as(world.assume_upload_role(None).await.unwrap())
        .await;
    unscoped
        .put_object()
        .bucket(BUCKET)
        .key("elsewhere/allowed-by-role.txt")
        .body(b"x".to_vec().into())
        .send()
        .await
        .expect("the upload role alone may write anywhere in the bucket");

    // And with exactly the policy s3drop sends, the same write is denied.
    let policy = s3drop::auth::policy::session_policy(
        "aws",
        BUCKET,
        s3drop::auth::policy::Writable::Under(&key("")),
        &Default::default(),
        false,
    )
    .unwrap();
    let scoped = world
        .s3_as(world.assume_upload_role(Some(&policy)).await.unwrap())
        .await;
    let denied = scoped
        .put_object()
        .bucket(BUCKET)
        .key("elsewhere/denied-by-session-policy.txt")
        .body(b"x".to_vec().into())
        .send()
        .await
        .expect_err("the session policy must deny writes outside the prefix");
    assert_eq!(
        denied.raw_response().map(|r| r.status().as_u16()),
        Some(403)
    );
    scoped
        .put_object()
        .bucket(BUCKET)
        .key(key("inside.txt"))
        .body(b"x".to_vec().into())
        .send()
        .await
        .expect("inside the prefix is allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_the_first_broken_link() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let check = || site.command(s3drop(), &fc, &["check"]).output().unwrap();

    let good = check();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    let json = |out: std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).expect("check --json prints one JSON document")
    };
    let good_json = json(
        site.command(s3drop(), &fc, &["check", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(good_json["ok"], true);
    let names: Vec<&str> = good_json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(names.last(), Some(&"scope holds"), "{names:?}");

    world
        .set_upload_role_policy(&policies::upload_role_policy_without_put(BUCKET))
        .await
        .unwrap();
    let no_put = check();
    let text = String::from_utf8_lossy(&no_put.stdout);
    assert!(!no_put.status.success(), "{text}");
    assert!(text.contains("✗ write under prefix"), "{text}");
    assert!(text.contains("s3:PutObject"), "{text}");

    world
        .set_upload_role_policy(&policies::upload_role_policy(BUCKET))
        .await
        .unwrap();
    world
        .set_upload_trust(&policies::upload_trust_nobody())
        .await
        .unwrap();
    let no_assume = check();
    let text = String::from_utf8_lossy(&no_assume.stdout);
    assert!(!no_assume.status.success(), "{text}");
    assert!(text.contains("✗ assume upload role"), "{text}");
    assert!(
        !text.contains("write under prefix"),
        "stops at the first broken link: {text}"
    );
    let broken = site
        .command(s3drop(), &fc, &["check", "--json"])
        .output()
        .unwrap();
    assert!(!broken.status.success());
    let broken = json(broken);
    assert_eq!(broken["ok"], false);
    let last = broken["checks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["check"], "assume upload role");
    assert_eq!(last["ok"], false);
    assert!(
        last["fix"].as_str().unwrap().contains("must trust"),
        "{last}"
    );

    // `run` refuses to start on the same broken chain, with the cause and a non-zero exit.
    let run = site.command(s3drop(), &fc, &["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("sts:AssumeRole"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_mode_removes_files_only_after_s3_confirms() {
    let (fc, world, site) = setup(BUCKET, "after_upload = \"delete\"").await;
    let mut daemon = start_ready(&site, &fc);
    drop_file(&world, &site, "gone-after.txt", b"payload").await;
    let deadline = std::time::Instant::now() + ARRIVAL;
    while site.watch.join("gone-after.txt").exists() {
        assert!(std::time::Instant::now() < deadline, "file not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // With PutObject taken away, uploads fail and the file stays.
    world
        .set_upload_role_policy(&policies::upload_role_policy_without_put(BUCKET))
        .await
        .unwrap();
    std::fs::write(site.watch.join("kept.txt"), b"must stay").unwrap();
    daemon
        .wait_for_event(
            "upload_failed",
            &[("kind", "denied"), ("key", &key("kept.txt"))],
            ARRIVAL,
        )
        .unwrap();
    assert!(site.watch.join("kept.txt").exists());
    assert!(world.get_object(&key("kept.txt")).await.unwrap().is_none());
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_never_carry_secrets_even_at_trace_level() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut cmd = site.command(s3drop(), &fc, &["run"]);
    let log_path = site.dir.path().join("trace.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = cmd
        .env("RUST_LOG", "trace")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    drop_file(&world, &site, "secret-check.txt", b"x").await;
    // The object is in S3 a moment before the daemon has read S3's answer and logged it.
    wait_until("the upload's log line", ARRIVAL, || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        !s3drop_testkit::events_in(&log, "uploaded").is_empty()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log_path).unwrap();
    // Credentials STS handed out, as an XML response body or as values.
    for needle in ["<SecretAccessKey>", "<SessionToken>", "SecretAccessKey\":"] {
        assert!(!text.contains(needle), "log shows {needle}");
    }
    assert!(
        text.lines().count() > 100,
        "trace level really logged the SDK's requests"
    );
    let (secret, token) = instance_role_secrets(&fc).await;
    assert!(
        !text.contains(&secret),
        "log shows the instance role's secret key"
    );
    assert!(
        !text.contains(&token),
        "log shows the instance role's session token"
    );
}

/// fakecloud's IMDS hands out the same instance-role credentials to every caller.
async fn instance_role_secrets(fc: &FakeCloud) -> (String, String) {
    use aws_credential_types::provider::ProvideCredentials;
    let provider = aws_config::imds::credentials::ImdsCredentialsProvider::builder()
        .imds_client(
            aws_config::imds::Client::builder()
                .endpoint(&fc.endpoint)
                .unwrap()
                .build(),
        )
        .build();
    let creds = provider.provide_credentials().await.unwrap();
    (
        creds.secret_access_key().to_string(),
        creds.session_token().unwrap().to_string(),
    )
}

#[test]
fn bad_config_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "watch_dir = \"/tmp\"\nbucket = \"b-b-b\"\nrole_arn = \"arn:aws:iam::123456789012:role/r\"\n\
         session_duration_seconds = 7200\n",
    )
    .unwrap();
    for sub in ["validate", "run", "check"] {
        let out = std::process::Command::new(s3drop())
            .args([sub, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{sub}: {all}");
        assert!(all.contains("session_duration_seconds"), "{sub}: {all}");
    }
}

#[test]
fn a_config_others_may_write_is_refused_unless_development_says_so() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path(), "");
    std::fs::set_permissions(&config, PermissionsExt::from_mode(0o666)).unwrap();
    let validate = |insecure: Option<&str>| {
        let mut cmd = std::process::Command::new(s3drop());
        cmd.args(["validate", "--config"]).arg(&config);
        if let Some(value) = insecure {
            cmd.env("S3DROP_INSECURE_CONFIG", value);
        }
        cmd.output().unwrap()
    };
    let out = validate(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not trusted"),
        "{err}"
    );
    assert!(err.contains("chmod go-w"), "{err}");
    assert!(!validate(Some("0")).status.success());
    assert!(validate(Some("1")).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_after_the_backlog_then_watchdog_and_status() {
    let (fc, world, site) = setup(BUCKET, "").await;
    std::fs::write(site.watch.join("backlog.txt"), b"queued before READY").unwrap();
    let (socket_path, socket) = notify_socket(&site);
    let mut cmd = site.command(s3drop(), &fc, &["run", "--log-format", "json"]);
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000");
    let mut daemon = Daemon::spawn(&site, cmd).unwrap();

    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while !messages.iter().any(|m: &String| m.contains("WATCHDOG=1"))
        || !messages.iter().any(|m| m.contains("READY=1"))
    {
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // READY comes after the backlog scan has queued the file already present.
    let log = daemon.log();
    let scanned = daemon.events("scanned");
    assert!(
        scanned
            .iter()
            .any(|e| e["reason"] == "startup" && e["files"] == 1),
        "{log}"
    );
    world
        .wait_for_object(&key("backlog.txt"), ARRIVAL)
        .await
        .unwrap();
    // STATUS carries the queue depth and the last upload.
    let deadline = std::time::Instant::now() + ARRIVAL;
    loop {
        let n = socket.recv(&mut buf).unwrap();
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.contains("STATUS=queue 0; 1 uploaded; last i-0123456789abcdef0/backlog.txt") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no status with the upload: {m}"
        );
    }
    assert!(daemon.stop().unwrap().success());
    let n = socket.recv(&mut buf).unwrap();
    let mut tail = String::from_utf8_lossy(&buf[..n]).into_owned();
    while !tail.contains("STOPPING=1") {
        let n = socket.recv(&mut buf).unwrap();
        tail = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
}

/// A socket standing in for systemd's notification socket (`NOTIFY_SOCKET`).
fn notify_socket(site: &Site) -> (std::path::PathBuf, std::os::unix::net::UnixDatagram) {
    let path = site.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    (path, socket)
}

/// Reads service-manager notifications until one contains `needle`; returns it.
fn notification_with(
    socket: &std::os::unix::net::UnixDatagram,
    needle: &str,
    limit: Duration,
) -> String {
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).expect("a notification");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.contains(needle) {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no notification with {needle:?} within {limit:?}; last: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_does_not_wait_for_credentials_and_status_says_why_then_follows_uploads() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let imds = s3drop_testkit::proxy::FaultProxy::start(&fc.endpoint, 0)
        .await
        .unwrap();
    imds.set_down(true);
    let (socket_path, socket) = notify_socket(&site);
    let mut cmd = site.command(s3drop(), &fc, &["run", "--log-format", "json"]);
    // A long watchdog period: STATUS must follow changes on its own, not ride the pings.
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "120000000")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint);
    let mut daemon = Daemon::spawn(&site, cmd).unwrap();

    // READY although no session can be minted: `systemctl start` returns.
    notification_with(&socket, "READY=1", ARRIVAL);
    let waiting = notification_with(
        &socket,
        "STATUS=queue 0; waiting for credentials: instance metadata",
        ARRIVAL,
    );
    // The cause, in a line `systemctl status` shows whole (the journal has the fix).
    let line = waiting.lines().find(|l| l.starts_with("STATUS=")).unwrap();
    assert!(line.chars().count() <= 7 + 200, "{line}");
    assert!(
        line.contains("Connection refused") || line.contains("connect"),
        "{line}"
    );
    assert!(!line.contains('{'), "{line}");
    // A file dropped meanwhile is safe and goes up once IMDS answers.
    std::fs::write(site.watch.join("during-outage.txt"), b"kept").unwrap();
    imds.set_down(false);
    assert_eq!(
        world
            .wait_for_object(&key("during-outage.txt"), Duration::from_secs(90))
            .await
            .unwrap(),
        b"kept"
    );
    let uploaded = std::time::Instant::now();
    let status = notification_with(&socket, "STATUS=queue 0; 1 uploaded", ARRIVAL);
    let lag = uploaded.elapsed();
    assert!(
        lag < Duration::from_secs(5),
        "STATUS lagged {lag:?}: {status}"
    );
    assert!(daemon.stop().unwrap().success(), "{}", daemon.log());
}

/// Binds journald's socket in a private mount namespace (a tmpfs over /run), runs s3drop
/// with `JOURNAL_STREAM` naming its stderr (as systemd does), decodes journald's native
/// protocol (`KEY=value` lines, or `KEY`, a 64-bit length and the value) and prints each
/// entry as one JSON object per line.
const FAKE_JOURNALD: &str = r#"
import json, os, socket, struct, subprocess, sys, time
def fields(d):
    out, i = {}, 0
    while i < len(d):
        nl = d.index(b'\n', i)
        line = d[i:nl]
        if b'=' in line:
            k, v = line.split(b'=', 1)
            i = nl + 1
        else:
            k, n = line, struct.unpack('<Q', d[nl + 1:nl + 9])[0]
            v = d[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
        out[k.decode()] = v.decode('utf-8', 'replace')
    return out
os.makedirs('/run/systemd/journal')
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('/run/systemd/journal/socket')
s.settimeout(1)
st = os.fstat(2)
env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
child = subprocess.Popen(sys.argv[1:], env=env)
deadline = time.time() + 30
got = []
while time.time() < deadline and not any(g.get('PRIORITY') == '4' for g in got):
    try:
        d = s.recv(1 << 16)
    except socket.timeout:
        continue
    if d:
        got.append(fields(d))
child.terminate()
child.wait()
for g in got:
    print(json.dumps(g))
"#;

#[test]
fn under_systemd_logs_go_to_journald_with_priorities_and_fields() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for a private mount namespace");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path(), "region = \"us-east-1\"");
    let started = std::time::Instant::now();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(
            "mount --make-rprivate / && mount -t tmpfs tmpfs /run && exec python3 -c \"$0\" \"$@\"",
        )
        .arg(FAKE_JOURNALD)
        .arg(s3drop())
        .args(["run", "--config"])
        .arg(&config)
        // Nothing answers here, so s3drop warns that it cannot mint the session yet.
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    // Stopped (SIGTERM) while still waiting for credentials: nothing is in flight, so it
    // must not sit out the 30-second shutdown deadline.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let entries: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let entry = |event: &str| {
        entries
            .iter()
            .find(|e| e["EVENT"] == event)
            .unwrap_or_else(|| panic!("no {event:?} in journald: {entries:?}\n{stderr}"))
    };
    let warning = entry("session_waiting");
    assert_eq!(warning["PRIORITY"], "4", "{warning}");
    assert!(
        warning["ERROR"].as_str().unwrap().contains("IMDSv2"),
        "a structured field: {warning}"
    );
    // The message is the whole sentence: what, why (the cause) and the fix.
    let message = warning["MESSAGE"].as_str().unwrap();
    for says in ["upload session", "Connection refused", "fix: run on EC2"] {
        assert!(message.contains(says), "{says:?} not in {message:?}");
    }
    assert!(!message.contains('{'), "no Debug structure: {message:?}");
    assert_eq!(warning["SYSLOG_IDENTIFIER"], "s3drop");
    let ready = entry("ready");
    assert_eq!(ready["PRIORITY"], "5", "info is notice: {ready}");
    assert!(
        !stderr.contains("upload session"),
        "journald, not stderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_jitter_delays_the_first_session_but_not_the_watch() {
    let (fc, world, site) = setup(BUCKET, "startup_jitter_seconds = 3").await;
    let mut daemon = start_ready(&site, &fc);
    let jitter = daemon.events("startup_jitter");
    assert_eq!(jitter.len(), 1, "{}", daemon.log());
    assert!(jitter[0]["wait_s"].as_u64().unwrap() <= 3);
    drop_file(&world, &site, "after-jitter.txt", b"x").await;
    assert!(daemon.stop().unwrap().success());
}

/// A file over 1 MiB and under multipart_threshold goes as one PUT, streamed with the
/// CRC32C of a first pass in its header (S3 checks the body against it), and arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_single_put_carries_its_checksum_and_arrives_whole() {
    let (fc, world, site) = s3drop_testkit::setup(BUCKET, "").await;
    let mut daemon = start_ready(&site, &fc);
    drop_file(&world, &site, "three.bin", &content(7, 3 * 1024 * 1024)).await;
    let uploaded = daemon
        .wait_for_event("uploaded", &[("bytes", "3145728")], ARRIVAL)
        .unwrap();
    assert!(
        uploaded["crc32c"].is_string(),
        "S3 confirmed the checksum: {uploaded}"
    );
    assert!(daemon.stop().unwrap().success());
}
