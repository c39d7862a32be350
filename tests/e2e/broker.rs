//! The credential broker (`broker = true`), end to end: `s3drop credentials` answered by the
//! running daemon over its socket (no STS call per invocation, counted by fakecloud
//! itself), aws-cli writing through a `credential_process` profile only where the scope
//! allows, who may open the socket, and `credentials` minting as before once the daemon
//! is gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use s3drop_testkit::{FakeCloud, Site, object_key, setup};

use crate::common::*;

/// `s3drop credentials` invocations through the broker (`S3DROP_BROKER_CALLS` to change:
/// the closing run used 1,000 aws-cli calls).
fn calls() -> usize {
    std::env::var("S3DROP_BROKER_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// aws-cli writes through the broker (each about half a second of CPU; the rest of the
/// calls are `s3drop credentials` alone, which is what `credential_process` runs).
fn aws_calls() -> usize {
    std::env::var("S3DROP_BROKER_AWS_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6)
}

/// A site whose daemon runs the broker on `<site>/run/broker.sock`, with the metrics
/// textfile in the site.
fn broker_site(site: &Site) -> (PathBuf, PathBuf) {
    let socket = site.dir.path().join("run/broker.sock");
    let textfile = site.dir.path().join("s3drop.prom");
    site.write_config(
        BUCKET,
        &format!("broker = true\nbroker_socket = {socket:?}\nmetrics_textfile = {textfile:?}\n"),
    )
    .unwrap();
    (socket, textfile)
}

fn credentials(site: &Site, fc: &FakeCloud, args: &[&str]) -> Output {
    let mut all = vec!["credentials"];
    all.extend_from_slice(args);
    site.command(s3drop(), fc, &all).output().unwrap()
}

/// `aws s3 cp` to `key` through a profile whose credential_process is `s3drop credentials
/// <args>`.
fn cp(site: &Site, fc: &FakeCloud, args: &str, key: &str) -> Output {
    let dir = site.dir.path();
    let config = dir.join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile drop]\ncredential_process = {S3DROP} credentials --config {} {args}\n",
            site.config.display()
        ),
    )
    .unwrap();
    let file = dir.join("payload.txt");
    std::fs::write(&file, format!("to {key}\n")).unwrap();
    let mut cmd = Command::new("aws");
    s3drop_testkit::without_callers_aws(&mut cmd)
        .envs(fc.sdk_env())
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_PROFILE", "drop")
        .env(s3drop_testkit::EMULATOR_ENV, "1")
        .args(["s3", "cp", "--only-show-errors"])
        .arg(&file)
        .arg(format!("s3://{BUCKET}/{key}"))
        .output()
        .expect("aws-cli is installed (scripts/install-deps.sh)")
}

/// A counter's value in the Prometheus text `text`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_answered_by_the_daemon_cost_no_sts_call_each() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let (_socket, textfile) = broker_site(&site);
    let mut daemon = start_ready(&site, &fc);
    daemon
        .wait_for_event("session_minted", &[], ARRIVAL)
        .unwrap();
    let before = fc.sts_calls("AssumeRole");

    // aws-cli through credential_process: the key the scope names, never its sibling.
    let (aws, calls) = (aws_calls(), calls());
    for i in 0..aws {
        let key = format!("cli/{}.txt", i % 2);
        let out = cp(&site, &fc, &format!("--key {key}"), &object_key(&key));
        assert!(out.status.success(), "{out:?}");
        let sibling = object_key(&format!("cli/{}-sibling.txt", i % 2));
        let out = cp(&site, &fc, &format!("--key {key}"), &sibling);
        assert!(!out.status.success(), "a write outside the scope: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("AccessDenied"),
            "{out:?}"
        );
    }
    assert_eq!(
        world
            .get_object(&object_key("cli/0.txt"))
            .await
            .unwrap()
            .unwrap(),
        format!("to {}\n", object_key("cli/0.txt")).into_bytes()
    );
    // The rest: what credential_process runs, for the whole prefix and the two keys.
    let mut expiry = None;
    for i in 0..calls.saturating_sub(2 * aws) {
        let key = format!("cli/{}.txt", i % 2);
        let args: &[&str] = match i % 3 {
            0 => &[],
            _ => &["--key", &key],
        };
        let out = credentials(&site, &fc, args);
        assert!(out.status.success(), "{out:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(doc["SessionToken"].as_str().is_some_and(|t| !t.is_empty()));
        expiry.get_or_insert(doc["Expiration"].as_str().unwrap().to_string());
    }
    let minted = fc.sts_calls("AssumeRole") - before;
    eprintln!(
        "broker: {calls} credentials calls ({aws} × 2 by aws-cli), {minted} AssumeRole calls"
    );
    assert!(
        minted <= 2,
        "{minted} AssumeRole calls for {calls} credentials calls: one per scope at most"
    );
    let handed = daemon.events("credentials_handed");
    assert_eq!(handed.len(), calls, "every hand-out is logged");
    let mine = unsafe { libc::getuid() };
    assert!(
        handed
            .iter()
            .all(|e| e["uid"] == mine && e["pid"].as_u64().is_some_and(|p| p > 0)),
        "{:?}",
        handed.first()
    );
    assert!(handed.iter().any(|e| e["scope"] == object_key("cli/1.txt")));
    assert!(daemon.stop().unwrap().success());
    let text = std::fs::read_to_string(&textfile).unwrap();
    assert_eq!(
        sample(&text, "s3drop_broker_requests_total{result=\"ok\"}"),
        calls as f64
    );
    assert_eq!(sample(&text, "s3drop_broker_scopes"), 2.0);

    // The daemon gone: minted here, as before (one AssumeRole).
    let before = fc.sts_calls("AssumeRole");
    let out = credentials(&site, &fc, &["--key", "cli/0.txt"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fc.sts_calls("AssumeRole"), before + 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("broker"), "no daemon is no news: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_daemons_group_may_ask_and_a_bad_question_is_refused() {
    let (fc, _world, site) = setup(BUCKET, "").await;
    let (socket, _) = broker_site(&site);
    // The site is traversable, so only the socket's own modes decide.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(site.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = start_ready(&site, &fc);
    daemon
        .wait_for_event("session_minted", &[], ARRIVAL)
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&socket), 0o660);
    assert_eq!(mode(socket.parent().unwrap()), 0o750);

    // Connects as `uid` with `groups`, sends `question`; what it could do.
    let ask = |uid: &str, groups: &str, question: &str| {
        let script = format!(
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             try:\n    s.connect({:?})\n\
             except PermissionError:\n    print('denied'); sys.exit(0)\n\
             s.sendall({question:?}.encode() + b'\\n')\n\
             print(s.makefile().readline())\n",
            socket.to_str().unwrap()
        );
        let out = Command::new("setpriv")
            .args(["--reuid", uid, "--regid", uid, "--groups", groups])
            .args(["/usr/bin/python3", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let own_group = unsafe { libc::getgid() }.to_string();
    assert_eq!(ask("65534", "65534", "{}").trim(), "denied");
    let answer: serde_json::Value = serde_json::from_str(&ask("65534", &own_group, "{}")).unwrap();
    assert_eq!(
        answer["answer"], "session",
        "a member of the group is served"
    );
    let handed = daemon.events("credentials_handed");
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0]["uid"], 65534);

    // Questions a caller may not ask: refused, logged, counted; the broker goes on.
    for question in [
        r#"{"key": "../elsewhere.txt"}"#,
        r#"{"prefix": "/abs"}"#,
        r#"{"key": "a", "extra": 1}"#,
        "not json",
    ] {
        let answer: serde_json::Value =
            serde_json::from_str(&ask("65534", &own_group, question)).unwrap();
        assert_eq!(answer["answer"], "refused", "{question}: {answer}");
        assert!(answer.get("secret_access_key").is_none());
    }
    assert_eq!(daemon.events("broker_refused").len(), 4);
    let out = credentials(&site, &fc, &["--prefix", "fine"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(daemon.events("credentials_handed").len(), 2);
    assert!(daemon.stop().unwrap().success());
    assert!(!socket.exists(), "the socket is removed at stop");
}
