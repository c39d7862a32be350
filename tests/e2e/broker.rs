//! The credential broker (`broker = true`), end to end: `s3drop credentials` answered by the
//! running daemon over its socket (no STS call per invocation, counted by fakecloud
//! itself), aws-cli writing through a `credential_process` profile only where the scope
//! allows, who may open the socket, and `credentials` minting as before once the daemon
//! is gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use s3drop_testkit::proxy::FaultProxy;
use s3drop_testkit::{Daemon, FakeCloud, Site, object_key, setup};

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

/// `credentials` calls timed with the daemon stopped (each mints: one AssumeRole).
const MINTED_CALLS: usize = 20;

/// The `p`th percentile of `times` (none of none: every call made by aws-cli).
fn percentile(times: &mut [std::time::Duration], p: usize) -> Option<std::time::Duration> {
    times.sort();
    let last = times.len().checked_sub(1)?;
    Some(times[(times.len() * p / 100).min(last)])
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
        let out = cp_via_credential_process(&fc, &site, &format!("--key {key}"), &object_key(&key));
        assert!(out.status.success(), "{out:?}");
        let sibling = object_key(&format!("cli/{}-sibling.txt", i % 2));
        let out = cp_via_credential_process(&fc, &site, &format!("--key {key}"), &sibling);
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
    let mut answered = Vec::new();
    for i in 0..calls.saturating_sub(2 * aws) {
        let key = format!("cli/{}.txt", i % 2);
        let args: &[&str] = match i % 3 {
            0 => &[],
            _ => &["--key", &key],
        };
        let started = std::time::Instant::now();
        let out = credentials(&site, &fc, args);
        answered.push(started.elapsed());
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
    // The daemon's own session and one per scope: what fakecloud counted too.
    assert_eq!(
        sample(&text, "s3drop_sts_requests_total{result=\"ok\"}"),
        1.0 + minted as f64
    );

    // The daemon gone: minted here, as before (one AssumeRole each).
    let before = fc.sts_calls("AssumeRole");
    let mut minted_here = Vec::new();
    let mut out = None;
    for _ in 0..MINTED_CALLS {
        let started = std::time::Instant::now();
        let done = credentials(&site, &fc, &["--key", "cli/0.txt"]);
        minted_here.push(started.elapsed());
        assert!(done.status.success(), "{done:?}");
        out = Some(done);
    }
    let out = out.unwrap();
    assert_eq!(fc.sts_calls("AssumeRole"), before + MINTED_CALLS);
    eprintln!(
        "broker: a credentials call answered by the daemon p50 {:?} p99 {:?} ({} calls); \
         minted here p50 {:?} p99 {:?} ({MINTED_CALLS} calls)",
        percentile(&mut answered, 50),
        percentile(&mut answered, 99),
        answered.len(),
        percentile(&mut minted_here, 50),
        percentile(&mut minted_here, 99),
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn a_program_started_by_exec_keeps_writing_across_every_expiry_and_its_token_dies_with_it() {
    const LIFETIME: u64 = 4;
    const WRITES: usize = 13; // over three session lifetimes, one write a second
    let (fc, world, site) = setup(BUCKET, "").await;
    broker_site(&site);
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    proxy.shorten_sessions(std::time::Duration::from_secs(LIFETIME));
    let mut daemon =
        Daemon::start_with_env(&site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    daemon
        .wait_for_event("session_minted", &[], ARRIVAL)
        .unwrap();

    // botocore (aws-cli's library) in one long-lived process: its container provider
    // fetches the session from the endpoint and again each time it nears expiry. It also
    // tries a wrong token, and prints its own for the check after it exits.
    let script = format!(
        r#"
import botocore.session, json, os, time, urllib.request, urllib.error
client = botocore.session.get_session().create_client("s3")
for i in range({WRITES}):
    client.put_object(Bucket="{BUCKET}", Key="{prefix}exec/" + str(i) + ".txt", Body=b"write %d" % i)
    time.sleep(1)
try:
    client.put_object(Bucket="{BUCKET}", Key="{prefix}elsewhere.txt", Body=b"no")
    print("OUTSIDE-ALLOWED")
except botocore.exceptions.ClientError as e:
    print("outside:", e.response["Error"]["Code"])
uri, token = os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"], os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
try:
    urllib.request.urlopen(urllib.request.Request(uri, headers={{"Authorization": token[::-1]}}))
    print("WRONG-TOKEN-ACCEPTED")
except urllib.error.HTTPError as e:
    print("wrong token:", e.code)
print(json.dumps({{"uri": uri, "token": token, "keys": "AWS_ACCESS_KEY_ID" in os.environ}}))
"#,
        prefix = object_key("")
    );
    let mut exec = site.command(
        s3drop(),
        &fc,
        &["exec", "--prefix", "exec", "--", "python3", "-c", &script],
    );
    // The child's S3 calls go straight to fakecloud; only the daemon's STS calls pass the
    // proxy (which shortens them). (The `--config` the site appends goes to python.)
    // fakecloud does not expire sessions, so what shows the refreshes is the broker's
    // count of sessions minted and handed out across the expiries.
    let child = exec
        .env("S3DROP_CONFIG", &site.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs, `status` lists it: its pid (exec keeps it), uid and scope.
    let pid = child.id();
    wait_until("status lists the program", ARRIVAL, || {
        let out = site
            .command(s3drop(), &fc, &["status", "--json"])
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        doc["exec_children"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["pid"] == pid && c["scope"] == format!("{}*", object_key("exec/")))
        })
    })
    .await;
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("outside: AccessDenied"), "{stdout}");
    assert!(stdout.contains("wrong token: 401"), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["keys"], false,
        "no static keys in the child's environment"
    );
    for i in 0..WRITES {
        let key = object_key(&format!("exec/{i}.txt"));
        assert_eq!(
            world.get_object(&key).await.unwrap().unwrap(),
            format!("write {i}").into_bytes()
        );
    }
    // It fetched a new session across each expiry (the broker minted them).
    let minted = daemon.events("broker_minted").len();
    let handed: Vec<_> = daemon
        .events("credentials_handed")
        .into_iter()
        .filter(|e| e["via"] == "endpoint")
        .collect();
    eprintln!(
        "exec: {WRITES} writes over {LIFETIME} s sessions: {minted} minted, {} handed",
        handed.len()
    );
    assert!(
        minted as u64 >= WRITES as u64 / LIFETIME,
        "{minted} sessions minted"
    );
    assert!(handed.len() >= minted, "{} hand-outs", handed.len());

    // The program is gone: its registration ended, and its token opens nothing.
    daemon
        .wait_for_event("exec_ended", &[("why", "exited")], ARRIVAL)
        .unwrap();
    let uri = last["uri"].as_str().unwrap();
    let token = last["token"].as_str().unwrap();
    let curl = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: {token}"))
        .arg(uri)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "401");
    // …and nothing listens for it but on loopback: the same port on this host's other
    // address (if it has one) takes no connection.
    assert!(uri.starts_with("http://127.0.0.1:"), "{uri}");
    let port: u16 = uri
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let outward = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr());
    if let Ok(addr) = outward
        && !addr.ip().is_loopback()
        && !addr.ip().is_unspecified()
    {
        let other = std::net::SocketAddr::new(addr.ip(), port);
        assert!(
            std::net::TcpStream::connect_timeout(&other, std::time::Duration::from_secs(2))
                .is_err(),
            "the endpoint answers on {other}"
        );
    }
    assert!(daemon.stop().unwrap().success());
    let log = daemon.log();
    assert!(!log.contains(token), "a token in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_imds_blackholed_for_a_user_the_broker_still_serves_and_minting_says_why() {
    let (fc, _world, site) = setup(BUCKET, "").await;
    broker_site(&site);
    // What a caller meets when a firewall drops its packets to IMDS (docs/IMDS.md): a
    // metadata service that takes the connection and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut blackholed = fc.sdk_env();
    for (name, value) in blackholed.iter_mut() {
        if *name == "AWS_EC2_METADATA_SERVICE_ENDPOINT" {
            *value = format!("http://{}", hole.local_addr().unwrap());
        }
    }
    let credentials = || {
        site.command_with(&[], s3drop(), &blackholed, &["credentials"])
            .output()
            .unwrap()
    };

    // No daemon: minting here fails with a sentence that names the likely cause.
    let started = std::time::Instant::now();
    let out = credentials();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    for needle in [
        "instance metadata (IMDSv2)",
        "docs/IMDS.md",
        "broker = true",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    eprintln!("blackholed IMDS: credentials failed after {took:?}: {stderr}");

    // The daemon (which may reach IMDS) runs the broker: the same call needs no IMDS.
    let mut daemon = start_ready(&site, &fc);
    daemon
        .wait_for_event("session_minted", &[], ARRIVAL)
        .unwrap();
    let out = credentials();
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["Version"], 1);
    assert_eq!(daemon.events("credentials_handed").len(), 1);
    assert!(daemon.stop().unwrap().success());
    drop(hole);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_the_broker_hands_out_reaches_its_log_metrics_or_status_even_at_trace() {
    let (fc, _world, site) = setup(BUCKET, "").await;
    let (_, textfile) = broker_site(&site);
    let mut run = site.command_with(
        &[],
        s3drop(),
        &fc.sdk_env(),
        &["run", "--log-format", "json"],
    );
    run.env("RUST_LOG", "trace");
    let mut daemon = Daemon::spawn(&site, run).unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    daemon
        .wait_for_event("session_minted", &[], ARRIVAL)
        .unwrap();
    let mut secrets = Vec::new();
    for args in [&[][..], &["--key", "t/one.txt"][..]] {
        let out = credentials(&site, &fc, args);
        assert!(out.status.success(), "{out:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        secrets.push(doc["SecretAccessKey"].as_str().unwrap().to_string());
        secrets.push(doc["SessionToken"].as_str().unwrap().to_string());
    }
    // A program started by exec: its token, and what the endpoint gave it.
    let out = site
        .command(
            s3drop(),
            &fc,
            &[
                "exec",
                "--prefix",
                "t",
                "--",
                "sh",
                "-c",
                "echo \"$AWS_CONTAINER_AUTHORIZATION_TOKEN\"; curl -s -H \
                 \"Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN\" \
                 \"$AWS_CONTAINER_CREDENTIALS_FULL_URI\"",
            ],
        )
        .env("S3DROP_CONFIG", &site.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (token, fetched) = stdout.split_once('\n').unwrap();
    let doc: serde_json::Value = serde_json::from_str(fetched.lines().next().unwrap()).unwrap();
    secrets.push(token.to_string());
    secrets.push(doc["SecretAccessKey"].as_str().unwrap().to_string());
    secrets.push(doc["Token"].as_str().unwrap().to_string());
    let status = site
        .command(s3drop(), &fc, &["status", "--json"])
        .output()
        .unwrap();
    assert!(daemon.stop().unwrap().success());
    let log = daemon.log();
    assert!(log.lines().count() > 100, "trace level logged");
    assert!(
        log.contains("credentials_handed"),
        "the hand-outs were logged"
    );
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    let status = String::from_utf8(status.stdout).unwrap();
    for secret in &secrets {
        assert!(secret.len() >= 16, "{secret:?}");
        assert!(!log.contains(secret.as_str()), "a secret in the log");
        assert!(
            !metrics.contains(secret.as_str()),
            "a secret in the metrics"
        );
        assert!(!status.contains(secret.as_str()), "a secret in status");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_duration_ends_a_programs_sessions_while_it_still_runs() {
    let (fc, _world, site) = setup(BUCKET, "").await;
    broker_site(&site);
    let mut daemon = start_ready(&site, &fc);
    daemon
        .wait_for_event("session_minted", &[], ARRIVAL)
        .unwrap();
    let fetch = "curl -s -o /dev/null -w '%{http_code} ' -H \
                 \"Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN\" \
                 \"$AWS_CONTAINER_CREDENTIALS_FULL_URI\"";
    let out = site
        .command(
            s3drop(),
            &fc,
            &[
                "exec",
                "--max-duration",
                "1",
                "--",
                "sh",
                "-c",
                &format!("{fetch}; sleep 2.5; {fetch}"),
            ],
        )
        .env("S3DROP_CONFIG", &site.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 401 ");
    daemon
        .wait_for_event("exec_ended", &[("why", "max_duration")], ARRIVAL)
        .unwrap();
    assert!(daemon.stop().unwrap().success());
}
