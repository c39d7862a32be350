//! What the end-to-end test files share: the binary under test, the bucket they provision,
//! how long an upload may take to arrive, and small waiting helpers. Each test file uses a
//! part of it.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use s3drop_testkit::content;
use s3drop_testkit::{Daemon, FakeCloud, Site, World};

pub const S3DROP: &str = env!("CARGO_BIN_EXE_s3drop");
pub const BUCKET: &str = "drop-bucket";
/// How long a dropped file may take to arrive in S3 before a test gives up.
pub const ARRIVAL: Duration = Duration::from_secs(30);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The s3drop binary Cargo built for these tests.
pub fn s3drop() -> &'static Path {
    Path::new(S3DROP)
}

/// Waits until `done()` holds, failing the test after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the daemon and waits until it is READY (watch up, backlog queued).
pub fn start_ready(site: &Site, fc: &FakeCloud) -> Daemon {
    let mut daemon = Daemon::start(site, s3drop(), fc).unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    daemon
}

/// Writes `relative` in the watched directory and waits for its object.
pub async fn drop_file(world: &World, site: &Site, relative: &str, body: &[u8]) {
    std::fs::write(site.watch.join(relative), body).unwrap();
    let stored = world
        .wait_for_object(&s3drop_testkit::object_key(relative), ARRIVAL)
        .await
        .unwrap();
    assert_eq!(stored, body, "{relative}");
}

/// A config file in `dir` for a watch_dir and a state_dir there (the state_dir is not
/// created), with `extra` keys; for tests that need no AWS.
pub fn offline_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let (watch, state) = (dir.join("watch"), dir.join("state"));
    std::fs::create_dir_all(&watch).unwrap();
    let config = dir.join("s3drop.toml");
    std::fs::write(
        &config,
        format!(
            "watch_dir = {watch:?}\nstate_dir = {state:?}\nbucket = \"b-b-b\"\n\
             role_arn = \"arn:aws:iam::123456789012:role/r\"\n{extra}"
        ),
    )
    .unwrap();
    config
}

/// Packages the binary this test run built (target/debug) into `out` as a .deb, as
/// scripts/build-deb.sh would without rebuilding (a release build would double CI time).
pub fn debug_deb(out: &Path) -> std::path::PathBuf {
    let built = std::process::Command::new(env!("CARGO"))
        .args(["deb", "-p", "s3drop", "--no-build", "--profile", "dev"])
        // xz's best compression of a 120 MB debug binary takes 40 s; --fast takes 5.
        .args(["--no-strip", "--fast", "-o"])
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb")
}

/// What `s3drop status` prints for people (stdout).
pub fn status_text(site: &Site, fc: &FakeCloud) -> String {
    let out = site.command(s3drop(), fc, &["status"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The time to wait until every file in `dir` (recursively, links not followed) was last
/// modified more than 1.5 s ago: past the testkit's `settle_seconds = 1` and a quiet
/// period, so intake holds none of them back and a scan takes each at once.
fn until_all_settled(dir: &Path) -> Duration {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if let Some(modified) = entry.metadata().ok().and_then(|m| m.modified().ok()) {
            newest = newest.max(modified);
        }
    }
    let settled = newest + Duration::from_millis(1_500);
    settled
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
}

/// The oldest file the running daemon has taken and not finished, as `status` says.
pub fn pending_path(site: &Site, fc: &FakeCloud) -> Option<String> {
    let out = site
        .command(s3drop(), fc, &["status", "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    doc["oldest_pending_path"].as_str().map(String::from)
}

/// A barrier instead of a fixed wait: once every file in watch_dir has settled, the
/// running daemon's status (its socket) says nothing is queued or in flight, and the
/// oldest file pending (if any) waits on a failure an operator must fix, twice 100 ms
/// apart. Whatever it was going to do with the files it had is done.
pub async fn wait_idle(site: &Site, fc: &FakeCloud) {
    tokio::time::sleep(until_all_settled(&site.watch)).await;
    let deadline = Instant::now() + ARRIVAL;
    let mut idle_reads = 0;
    loop {
        let out = site
            .command(s3drop(), fc, &["status", "--json"])
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let oldest = &doc["oldest_pending_path"];
        let failed = doc["failed"].as_array().cloned().unwrap_or_default();
        let idle =
            doc["queue"] == 0 && (oldest.is_null() || failed.iter().any(|f| &f["path"] == oldest));
        idle_reads = if idle { idle_reads + 1 } else { 0 };
        if idle_reads >= 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never went idle: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Once every file has settled, SIGHUP, then [`wait_idle`] once the rescan it asks for is
/// done: every file was looked at again and whatever that led to is over.
pub async fn hangup_and_wait_idle(daemon: &mut Daemon, site: &Site, fc: &FakeCloud) {
    // A file younger than settle would only be deferred by the rescan.
    tokio::time::sleep(until_all_settled(&site.watch)).await;
    let scans = daemon
        .events("scanned")
        .iter()
        .filter(|e| e["reason"] == "sighup")
        .count();
    daemon.signal("-HUP").unwrap();
    wait_until("the rescan at SIGHUP", ARRIVAL, || {
        daemon
            .events("scanned")
            .iter()
            .filter(|e| e["reason"] == "sighup")
            .count()
            > scans
    })
    .await;
    wait_idle(site, fc).await;
}

/// `aws` with the emulator's endpoint and nothing of the caller's AWS settings, plus `env`.
pub fn aws(fc: &FakeCloud, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new("aws");
    s3drop_testkit::without_callers_aws(&mut cmd)
        .envs(fc.sdk_env())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env(s3drop_testkit::EMULATOR_ENV, "1")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("aws-cli is installed (scripts/install-deps.sh)")
}

/// `aws s3 cp` of a small file to `key` of the bucket.
pub fn cp_to(fc: &FakeCloud, env: &[(&str, &str)], dir: &Path, key: &str) -> Output {
    let file = dir.join("payload.txt");
    std::fs::write(&file, format!("to {key}\n")).unwrap();
    aws(
        fc,
        env,
        &[
            "s3",
            "cp",
            "--only-show-errors",
            file.to_str().unwrap(),
            &format!("s3://{BUCKET}/{key}"),
        ],
    )
}

/// `aws --profile drop s3 cp` to `key`, the profile's credential_process being `s3drop
/// credentials` with `args`.
pub fn cp_via_credential_process(fc: &FakeCloud, site: &Site, args: &str, key: &str) -> Output {
    let config = site.dir.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile drop]\ncredential_process = {S3DROP} credentials --config {} {args}\n",
            site.config.display()
        ),
    )
    .unwrap();
    let env = [
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_PROFILE", "drop"),
    ];
    cp_to(fc, &env, site.dir.path(), key)
}
