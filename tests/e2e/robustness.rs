//! Bad input and bad days, end to end against fakecloud: odd names, links, FIFOs,
//! unreadable files, a watch_dir that is deleted and recreated, S3 and STS failing under a
//! fault-injecting proxy, IMDS unreachable at start, and after_upload = "move".

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use s3drop_testkit::proxy::FaultProxy;
use s3drop_testkit::{Daemon, FakeCloud, REGION, Site, World, object_key as key, setup};

use crate::common::*;

/// Starts the daemon as root without the capabilities that bypass file permissions.
fn start_without_dac_override(site: &Site, fc: &FakeCloud) -> Daemon {
    let cmd = site.command_with(
        &without_dac_override(),
        s3drop(),
        &fc.sdk_env(),
        &["run", "--log-format", "json"],
    );
    Daemon::spawn(site, cmd).unwrap()
}

/// Root reads any file whatever its mode; to make "no read permission" real, the daemon
/// runs as root without the capabilities that bypass file permissions.
fn without_dac_override() -> Vec<&'static str> {
    if is_root() {
        vec![
            "setpriv",
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
        ]
    } else {
        Vec::new()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_names_links_fifos_and_unreadable_files_cost_no_other_file() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let w = &site.watch;
    let write = |rel: &[u8], body: &[u8]| {
        let path = w.join(OsStr::from_bytes(rel));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    };
    // Names: spaces, unicode, a newline, invalid UTF-8, a URL-encoded name (as wget saves
    // them), and a literal lookalike of an encoding.
    write(b"with space.txt", b"space");
    write("ünïcødé 日本.txt".as_bytes(), b"unicode");
    write(b"new\nline.txt", b"newline");
    write(b"bad\xffutf8.bin", b"invalid utf-8");
    write(b"report%20final.txt", b"literal percent");
    write("literal\u{240A}.txt".as_bytes(), b"literal control picture");
    // A deep path that still fits in a key, and one that does not.
    let deep: String = (0..40).map(|i| format!("d{i:02}/")).collect();
    write(format!("{deep}deep.txt").as_bytes(), b"deep");
    let too_long = format!("{}long.txt", format!("{}/", "x".repeat(200)).repeat(5));
    write(too_long.as_bytes(), b"too long");
    // A symlink to a file outside the drop directory, and a FIFO nobody writes to.
    let outside = site.dir.path().join("outside-secret.txt");
    std::fs::write(&outside, b"must never be uploaded").unwrap();
    std::os::unix::fs::symlink(&outside, w.join("link-to-outside.txt")).unwrap();
    let fifo = std::ffi::CString::new(w.join("pipe").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // A file the daemon may not read.
    let locked = w.join("locked.txt");
    std::fs::write(&locked, b"locked until chmod").unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();

    let mut daemon = start_without_dac_override(&site, &fc);
    daemon.wait_until_ready(ARRIVAL).unwrap();

    let expect = [
        ("with space.txt", &b"space"[..]),
        ("ünïcødé 日本.txt", b"unicode"),
        ("new\u{240A}line.txt", b"newline"),
        ("bad\u{201B}FFutf8.bin", b"invalid utf-8"),
        ("report%20final.txt", b"literal percent"),
        ("literal\u{201B}\u{240A}.txt", b"literal control picture"),
    ];
    for (k, body) in expect {
        assert_eq!(
            world.wait_for_object(&key(k), ARRIVAL).await.unwrap(),
            body,
            "{k}"
        );
    }
    assert_eq!(
        world
            .wait_for_object(&key(&format!("{deep}deep.txt")), ARRIVAL)
            .await
            .unwrap(),
        b"deep"
    );

    daemon
        .wait_for_event("upload_failed", &[("kind", "unreadable")], ARRIVAL)
        .unwrap();
    let no_key = daemon
        .wait_for_event("upload_failed", &[("kind", "invalid_key")], ARRIVAL)
        .unwrap();
    assert!(
        no_key["error"].as_str().unwrap().contains("1024"),
        "{no_key}"
    );
    // Make the locked file readable; SIGHUP retries it at once instead of in 5 minutes.
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    daemon.signal("-HUP").unwrap();
    assert_eq!(
        world
            .wait_for_object(&key("locked.txt"), ARRIVAL)
            .await
            .unwrap(),
        b"locked until chmod"
    );

    // Nothing was uploaded for the link, the FIFO or the over-long name, and all are kept.
    let keys = world.keys().await.unwrap();
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("link-to-outside") || k.ends_with("/pipe"))
    );
    assert!(!keys.iter().any(|k| k.contains("long.txt")), "{keys:?}");
    assert!(w.join(OsStr::from_bytes(too_long.as_bytes())).exists());
    let log = daemon.log();
    assert!(
        log.contains("link-to-outside.txt") && log.contains("symlink"),
        "{log}"
    );
    assert!(log.contains("FIFO"), "{log}");
    assert!(!log.contains("must never be uploaded"));
    assert!(daemon.stop().unwrap().success(), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_dir_deleted_and_recreated_is_watched_again() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut daemon = start_ready(&site, &fc);
    drop_file(&world, &site, "before.txt", b"before").await;

    std::fs::remove_dir_all(&site.watch).unwrap();
    daemon
        .wait_for_event("watch_dir_gone", &[], ARRIVAL)
        .unwrap();
    std::fs::create_dir(&site.watch).unwrap();
    daemon
        .wait_for_event("watch_dir_back", &[], ARRIVAL)
        .unwrap();
    drop_file(&world, &site, "after.txt", b"after").await;
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn move_mode_moves_confirmed_files_and_never_overwrites() {
    let site_dir = tempfile::tempdir().unwrap();
    let done = site_dir.path().join("done");
    std::fs::create_dir(&done).unwrap();
    let (fc, world, site) = setup(
        BUCKET,
        &format!(
            "after_upload = \"move\"\nmove_to = {:?}",
            done.to_str().unwrap()
        ),
    )
    .await;
    // move_to must be on watch_dir's filesystem; both are under the temp dir here.
    let mut daemon = start_ready(&site, &fc);
    std::fs::create_dir_all(site.watch.join("sub")).unwrap();
    drop_file(&world, &site, "sub/report.csv", b"first").await;
    let moved = done.join("sub/report.csv");
    wait_until("the first move", ARRIVAL, || moved.exists()).await;
    std::fs::write(site.watch.join("sub/report.csv"), b"second").unwrap();
    let second = done.join("sub/report.csv.1");
    wait_until("the second move", ARRIVAL, || second.exists()).await;
    assert_eq!(std::fs::read(&moved).unwrap(), b"first");
    assert_eq!(std::fs::read(&second).unwrap(), b"second");
    assert_eq!(
        world
            .get_object(&key("sub/report.csv"))
            .await
            .unwrap()
            .unwrap(),
        b"second"
    );
    assert!(!site.watch.join("sub/report.csv").exists());
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_file_arrives_intact_through_a_proxy_failing_40_percent_of_requests() {
    let (fc, world, site) = setup(BUCKET, "concurrency = 8").await;
    let proxy = FaultProxy::start(&fc.endpoint, 40).await.unwrap();
    // S3 and STS through the proxy; IMDS too, so its hiccups are exercised as well.
    let env = vec![
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", proxy.endpoint.clone()),
        ("AWS_ENDPOINT_URL", proxy.endpoint.clone()),
        ("AWS_REGION", REGION.to_string()),
    ];
    let files: Vec<(String, Vec<u8>)> = (0..60u32)
        .map(|i| {
            let len = [0usize, 1, 4_096, 100_000, 700_000][i as usize % 5];
            (format!("batch/f{i:03}.bin"), content(i, len))
        })
        .collect();
    // Half before start (backlog), half while running.
    let (early, late) = files.split_at(30);
    std::fs::create_dir_all(site.watch.join("batch")).unwrap();
    for (rel, body) in early {
        std::fs::write(site.watch.join(rel), body).unwrap();
    }
    let started = Instant::now();
    let mut daemon = Daemon::start_with_env(&site, s3drop(), &env).unwrap();
    daemon.wait_until_ready(Duration::from_secs(120)).unwrap();
    for (rel, body) in late {
        std::fs::write(site.watch.join(rel), body).unwrap();
    }
    for (rel, body) in &files {
        let got = world
            .wait_for_object(&key(rel), Duration::from_secs(180))
            .await
            .unwrap();
        assert!(got == *body, "{rel} arrived corrupted");
    }
    let elapsed = started.elapsed();
    assert!(daemon.stop().unwrap().success());
    let stats = proxy.stats();
    let retried = daemon
        .events("upload_failed")
        .iter()
        .filter(|e| e["kind"] == "transient" || e["kind"] == "throttled")
        .count();
    println!(
        "fault test: {} files, {} requests through the proxy, {} failed on purpose \
         ({} InternalError, {} SlowDown, {} dropped), {} retries logged by s3drop, {:.1} s",
        files.len(),
        stats.total(),
        stats.injected(),
        stats.internal_error,
        stats.slow_down,
        stats.dropped,
        retried,
        elapsed.as_secs_f64()
    );
    assert!(
        stats.injected() * 100 >= stats.total() * 30,
        "the proxy really failed a large share: {stats:?}"
    );
    // Files are kept in keep mode; every one is still there.
    for (rel, _) in &files {
        assert!(site.watch.join(rel).exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn imds_unreachable_at_start_is_retried_with_a_hint_then_recovers() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let imds = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    imds.set_down(true);
    let env = vec![
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint.clone()),
        ("AWS_ENDPOINT_URL", fc.endpoint.clone()),
        ("AWS_REGION", REGION.to_string()),
    ];
    std::fs::write(site.watch.join("waiting.txt"), b"waited for IMDS").unwrap();
    let mut daemon = Daemon::start_with_env(&site, s3drop(), &env).unwrap();
    let waiting = daemon
        .wait_for_event("session_waiting", &[], ARRIVAL)
        .unwrap();
    assert!(
        waiting["message"]
            .as_str()
            .unwrap()
            .contains("HttpPutResponseHopLimit"),
        "the fix is in the message: {waiting}"
    );
    imds.set_down(false);
    assert_eq!(
        world
            .wait_for_object(&key("waiting.txt"), Duration::from_secs(90))
            .await
            .unwrap(),
        b"waited for IMDS"
    );
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_that_expire_mid_stream_are_renewed_and_no_file_fails() {
    let fc = match FakeCloud::start_with_shiftable_clock() {
        Ok(fc) => fc,
        Err(e) => panic!("{e:#} (the test setup installs it: see .ci/run)"),
    };
    let world = World::provision(&fc, BUCKET).await.unwrap();
    let site = Site::new(BUCKET, "session_duration_seconds = 900").unwrap();
    let mut daemon = start_ready(&site, &fc);
    for round in 0..3 {
        for i in 0..5 {
            let rel = format!("round{round}/f{i}.txt");
            std::fs::create_dir_all(site.watch.join(format!("round{round}"))).unwrap();
            std::fs::write(site.watch.join(&rel), rel.as_bytes()).unwrap();
        }
        for i in 0..5 {
            let rel = format!("round{round}/f{i}.txt");
            assert_eq!(
                world.wait_for_object(&key(&rel), ARRIVAL).await.unwrap(),
                rel.as_bytes()
            );
        }
        // Move the emulator's clock past the 15-minute session s3drop holds (and past
        // the instance role's IMDS credentials); s3drop's own clock does not move, so only
        // S3's ExpiredToken answer can tell it.
        fc.shift_clock(1_000 * (round + 1)).unwrap();
    }
    let renewals = daemon.events("session_minted").len();
    let refused = daemon.events("session_invalidated");
    println!(
        "expiry test: 15 files over 3 clock jumps of 1000 s; sessions assumed {renewals}, \
         expired-token refreshes {}",
        refused.len()
    );
    assert!(
        refused.len() >= 2,
        "the jumps really expired sessions: {}",
        daemon.log()
    );
    assert!(renewals >= 3, "{}", daemon.log());
    // The refused upload is retried at once with the new session: not even a transient
    // failure reaches the retry queue.
    assert!(
        daemon
            .events("upload_failed")
            .iter()
            .all(|e| e["kind"] != "transient"),
        "{}",
        daemon.log()
    );
    assert!(
        daemon
            .events("upload_failed")
            .iter()
            .all(|e| e["level"] != "ERROR"),
        "no file failed"
    );
    assert!(daemon.stop().unwrap().success());
}

/// The SDK variables that send S3 (and STS) through `proxy`, IMDS straight to fakecloud.

#[tokio::test(flavor = "multi_thread")]
async fn a_file_truncated_during_its_upload_is_sent_again_and_a_deleted_one_is_dropped() {
    let (fc, world, site) = setup(BUCKET, "concurrency = 1").await;
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    let mut daemon =
        Daemon::start_with_env(&site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    proxy.set_put_delay(Duration::from_millis(1_500));

    // The first file's PUT is held by the proxy; meanwhile it is truncated in place
    // (truncate(2): no close event), and a second file waits its turn and is deleted.
    let changing = site.watch.join("changing.log");
    let puts = proxy.stats().s3_puts;
    std::fs::write(&changing, content(7, 10_000)).unwrap();
    wait_until("its PUT under way", ARRIVAL, || {
        proxy.stats().s3_puts > puts
    })
    .await;
    let doomed = site.watch.join("doomed.txt");
    std::fs::write(&doomed, b"deleted before its turn").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = std::ffi::CString::new(changing.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 4_000) }, 0);
    std::fs::remove_file(&doomed).unwrap();

    daemon
        .wait_for_event("upload_failed", &[("kind", "changed")], ARRIVAL)
        .unwrap();
    proxy.set_put_delay(Duration::ZERO);
    daemon
        .wait_for_event("dropped", &[("reason", "gone_before_upload")], ARRIVAL)
        .unwrap();
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let now = world.get_object(&key("changing.log")).await.unwrap();
        if now.as_deref() == Some(&content(7, 10_000)[..4_000]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the truncated version never replaced the first upload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        world
            .get_object(&key("doomed.txt"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(daemon.stop().unwrap().success());
    // The ledger recorded the second version only: a restart sends nothing again.
    let before = fc.objects_stored(BUCKET);
    let mut again = Daemon::start(&site, s3drop(), &fc).unwrap();
    again
        .wait_for_event("scanned", &[("reason", "startup")], ARRIVAL)
        .unwrap();
    wait_idle(&site, &fc).await;
    assert!(again.stop().unwrap().success());
    assert_eq!(fc.objects_stored(BUCKET), before);
}

/// A small tmpfs mounted over a directory for the test's duration (root only).
struct TinyFs {
    path: std::path::PathBuf,
}

impl TinyFs {
    fn mount(path: &Path, size: &str) -> Option<TinyFs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .ok()?
            .success();
        ok.then(|| TinyFs {
            path: path.to_owned(),
        })
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_dir_loses_no_file_and_recovers() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let Some(_tmpfs) = TinyFs::mount(&site.state, "2M") else {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root); full state_dir not tested");
        return;
    };
    let mut daemon = start_ready(&site, &fc);
    drop_file(&world, &site, "early.txt", b"recorded").await;

    // Fill the state filesystem to the last byte.
    let filler = site.state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    for i in 0..5 {
        std::fs::write(
            site.watch.join(format!("while-full-{i}.txt")),
            format!("{i}"),
        )
        .unwrap();
    }
    let unrecorded = daemon.wait_for_event("unrecorded", &[], ARRIVAL).unwrap();
    assert!(
        unrecorded["message"]
            .as_str()
            .unwrap()
            .contains("is state_dir full or read-only?"),
        "{unrecorded}"
    );
    // Nothing is lost: the files are in S3 and still on disk.
    for i in 0..5 {
        let rel = format!("while-full-{i}.txt");
        world.wait_for_object(&key(&rel), ARRIVAL).await.unwrap();
        assert!(site.watch.join(&rel).exists());
    }
    // Every upload that could not be recorded waits for SIGHUP (or 5 minutes): count them
    // once the last recording attempt has had time to fail.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unrecorded = daemon.events("unrecorded").len();
    assert!(unrecorded > 0, "{}", daemon.log());
    // Space comes back; SIGHUP retries at once, and this time the ledger records them. Wait
    // for those retries to be sent (each logs "uploaded" once more) before stopping.
    std::fs::remove_file(&filler).unwrap();
    daemon.signal("-HUP").unwrap();
    let deadline = Instant::now() + ARRIVAL;
    while daemon.events("uploaded").len() < 6 + unrecorded {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(daemon.stop().unwrap().success());
    let before = fc.objects_stored(BUCKET);
    let mut again = Daemon::start(&site, s3drop(), &fc).unwrap();
    again
        .wait_for_event("scanned", &[("reason", "startup")], ARRIVAL)
        .unwrap();
    wait_idle(&site, &fc).await;
    assert!(again.stop().unwrap().success());
    assert_eq!(
        fc.objects_stored(BUCKET),
        before,
        "nothing sent twice after recovery"
    );
}

#[test]
fn a_read_only_state_dir_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o500)).unwrap();
    let config = offline_config(dir.path(), "");
    let wrapper = without_dac_override();
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = std::process::Command::new(program);
            c.args(rest).arg(s3drop());
            c
        }
        None => std::process::Command::new(s3drop()),
    };
    let out = cmd.args(["run", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ledger") && stderr.contains("Permission denied"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_upload_in_flight_finish_and_sigint_past_the_deadline_loses_nothing() {
    let (fc, world, site) = setup(BUCKET, "shutdown_timeout_seconds = 5").await;
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    let run = |site: &Site| {
        Daemon::start_with_env(site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap()
    };

    // SIGTERM while a PUT is held for 2 s: the daemon waits for it, records it, exits 0.
    let mut daemon = run(&site);
    daemon.wait_until_ready(ARRIVAL).unwrap();
    proxy.set_put_delay(Duration::from_secs(2));
    let puts = proxy.stats().s3_puts;
    std::fs::write(site.watch.join("in-flight.txt"), b"finish me").unwrap();
    wait_until("its PUT under way", ARRIVAL, || {
        proxy.stats().s3_puts > puts
    })
    .await;
    daemon.signal("-TERM").unwrap();
    let status = daemon.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(!daemon.events("uploaded").is_empty(), "{}", daemon.log());
    assert_eq!(
        world
            .get_object(&key("in-flight.txt"))
            .await
            .unwrap()
            .unwrap(),
        b"finish me"
    );

    // SIGINT while a PUT is held longer than the 5 s deadline: exit 0 without recording it;
    // the next start uploads it.
    let mut daemon = run(&site);
    daemon.wait_until_ready(ARRIVAL).unwrap();
    proxy.set_put_delay(Duration::from_secs(8));
    let puts = proxy.stats().s3_puts;
    std::fs::write(site.watch.join("cut-off.txt"), b"next time").unwrap();
    wait_until("its PUT under way", ARRIVAL, || {
        proxy.stats().s3_puts > puts
    })
    .await;
    let stopping = Instant::now();
    daemon.signal("-INT").unwrap();
    let status = daemon.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "the deadline bounded the wait"
    );
    assert!(
        !daemon.events("shutdown_deadline").is_empty(),
        "{}",
        daemon.log()
    );
    proxy.set_put_delay(Duration::ZERO);
    let mut daemon = run(&site);
    assert_eq!(
        world
            .wait_for_object(&key("cut-off.txt"), ARRIVAL)
            .await
            .unwrap(),
        b"next time"
    );
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_s3drop_may_not_write_keeps_the_file_and_the_log_names_it_and_the_fix() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to own a directory as another user");
        return;
    }
    let (fc, world, site) = setup(BUCKET, "after_upload = \"delete\"").await;
    // A producer's subdirectory: its owner, mode 0755 (umask 022). s3drop may read the
    // file but not remove it.
    let sub = site.watch.join("made-by-producer");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("report.csv"), b"kept").unwrap();
    std::os::unix::fs::chown(&sub, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&sub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut daemon = start_without_dac_override(&site, &fc);
    world
        .wait_for_object(&key("made-by-producer/report.csv"), ARRIVAL)
        .await
        .unwrap();
    let event = daemon
        .wait_for_event("after_upload_failed", &[], ARRIVAL)
        .unwrap();
    let fix = event["message"].as_str().unwrap();
    assert!(fix.contains(sub.to_str().unwrap()), "{fix}");
    assert!(fix.contains("setfacl"), "{fix}");
    assert!(sub.join("report.csv").exists(), "the file is kept");
    assert!(daemon.stop().unwrap().success());
}

/// File names are a producer's text: with ESC, BEL, CR and LF in them they must neither
/// recolour the operator's terminal nor forge a line, in the text log or in `status`.
#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_names_are_escaped_in_the_text_log_and_status() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let evil = "evil\u{1b}[31mred\u{7}\r\nINFO forged line\u{202E}txt";
    let cmd = site.command(s3drop(), &fc, &["run", "--log-format", "text"]);
    let mut daemon = Daemon::spawn(&site, cmd).unwrap();
    // The text log has no fields to wait on: wait for the status socket to answer.
    wait_until("the daemon's status socket", ARRIVAL, || {
        status_text(&site, &fc).contains("running since")
    })
    .await;
    // One that uploads, and one that fails (its key would be over 1,024 bytes) and so is
    // listed by `status`.
    std::fs::write(site.watch.join(evil), b"uploaded").unwrap();
    let deep: String = (0..150).map(|i| format!("dir{i:03}/")).collect();
    std::fs::create_dir_all(site.watch.join(&deep)).unwrap();
    std::fs::write(site.watch.join(format!("{deep}{evil}")), b"too long").unwrap();
    // Its key has the control characters as control pictures (see README).
    let stored = key("evil\u{241B}[31mred\u{2407}\u{240D}\u{240A}INFO forged line\u{202E}txt");
    world.wait_for_object(&stored, ARRIVAL).await.unwrap();
    let status = || status_text(&site, &fc);
    wait_until("the failed file in status", ARRIVAL, || {
        status().contains("failed: 1")
    })
    .await;
    let shown = status();
    let log = daemon.log();
    for (what, text) in [("status", &shown), ("text log", &log)] {
        assert!(
            !text
                .chars()
                .any(|c| matches!(c, '\u{1b}' | '\u{7}' | '\r' | '\u{202E}')),
            "{what} shows a raw control character: {text:?}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("INFO forged")),
            "{what} has a forged line: {text}"
        );
        assert!(
            text.contains("evil\\u{1b}[31mred\\u{7}\\r\\nINFO forged line"),
            "{what}: {text}"
        );
    }
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rescan_during_an_upload_in_delete_mode_reports_no_producer_delete() {
    let (fc, world, site) = setup(BUCKET, "after_upload = \"delete\"").await;
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    let mut daemon =
        Daemon::start_with_env(&site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    proxy.set_put_delay(Duration::from_secs(3));
    let puts = proxy.stats().s3_puts;
    std::fs::write(site.watch.join("twice.txt"), b"seen twice").unwrap();
    wait_until("its PUT under way", ARRIVAL, || {
        proxy.stats().s3_puts > puts
    })
    .await;
    // While it is sent, a SIGHUP's full scan finds it again (queued once more when settled).
    daemon.signal("-HUP").unwrap();
    daemon
        .wait_for_event("scanned", &[("reason", "sighup")], ARRIVAL)
        .unwrap();
    world
        .wait_for_object(&key("twice.txt"), ARRIVAL)
        .await
        .unwrap();
    wait_until("deleted after its upload", ARRIVAL, || {
        !site.watch.join("twice.txt").exists()
    })
    .await;
    proxy.set_put_delay(Duration::ZERO);
    wait_idle(&site, &fc).await;
    // s3drop deleted it itself: no line says a producer deleted it before its upload.
    assert_eq!(daemon.events("uploaded").len(), 1, "{}", daemon.log());
    assert!(daemon.events("dropped").is_empty(), "{}", daemon.log());
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_inotify_watch_limit_it_says_so_once_and_the_rescan_finds_the_rest() {
    let (fc, world, site) = setup(BUCKET, "rescan_interval_seconds = 10").await;
    // Directories made before the start: the first few are watched, the rest are not.
    for i in 0..6 {
        std::fs::create_dir(site.watch.join(format!("before{i}"))).unwrap();
    }
    let mut env = fc.sdk_env();
    env.push((s3drop::watch::MAX_WATCHES_VAR, "4".to_string()));
    let mut daemon = Daemon::start_with_env(&site, s3drop(), &env).unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    // Directories made while it runs, and a file in each directory, old and new.
    for i in 0..6 {
        std::fs::create_dir(site.watch.join(format!("after{i}"))).unwrap();
    }
    let mut keys = Vec::new();
    for dir in (0..6).flat_map(|i| [format!("before{i}"), format!("after{i}")]) {
        let rel = format!("{dir}/f.txt");
        std::fs::write(site.watch.join(&rel), rel.as_bytes()).unwrap();
        keys.push(key(&rel));
    }
    // Every file arrives: in a watched directory at once, in the others by the rescan.
    world
        .wait_for_keys(&keys, Duration::from_secs(45))
        .await
        .unwrap();
    let said = daemon.events("watch_limit_reached");
    assert_eq!(said.len(), 1, "said once: {said:?}");
    assert!(
        said[0]["message"]
            .as_str()
            .unwrap()
            .contains("fs.inotify.max_user_watches"),
        "{said:?}"
    );
    assert!(daemon.stop().unwrap().success());
}
