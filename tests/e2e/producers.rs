//! Every way a file can appear, made by the programs and calls producers really use: hard
//! links, `linkat()` of an `O_TMPFILE`, and brand-new directory trees filled at once. None
//! may wait for the safety rescan (5 minutes by default; every test here ends well before).

use std::path::Path;
use std::time::Duration;

use s3drop_testkit::{Daemon, object_key as key, setup};

use crate::common::*;

fn publish_tmpfile(dir: &Path, dest: &Path, body: &[u8]) {
    s3drop_testkit::model::publish_tmpfile(dir, dest, body).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn hard_links_and_linked_temporary_files_arrive_without_a_close() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut daemon = start_ready(&site, &fc);
    // Written on the same filesystem, outside the drop directory, then linked in: the
    // kernel reports only the new name, never a close.
    let outside = site.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let linked = content(1, 12_345);
    std::fs::write(outside.join("x"), &linked).unwrap();
    std::fs::hard_link(outside.join("x"), site.watch.join("hard-linked.bin")).unwrap();
    let published = content(2, 54_321);
    publish_tmpfile(&site.watch, &site.watch.join("tmpfile.bin"), &published);

    for (name, body) in [("hard-linked.bin", &linked), ("tmpfile.bin", &published)] {
        let stored = world.wait_for_object(&key(name), ARRIVAL).await.unwrap();
        assert_eq!(&stored, body, "{name}");
    }
    let taken = daemon.events("taken_unwritten");
    assert_eq!(taken.len(), 2, "{}", daemon.log());
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_new_directories_filled_at_once_lose_nothing() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut daemon = start_ready(&site, &fc);
    // Four producers, each making directories (with a nested one) and filling them at
    // once, as `cp -a` or `tar -x` of a tree does.
    const PER_PRODUCER: usize = 250;
    let writers: Vec<_> = (0..4)
        .map(|p| {
            let watch = site.watch.clone();
            std::thread::spawn(move || {
                let mut names = Vec::new();
                // Half the directories are filled the moment they exist (cp -a); the other
                // half are all made first and filled right after (tar, mkdir -p then
                // copy), which is when their watches are still being added.
                let dirs: Vec<_> = (0..PER_PRODUCER)
                    .map(|d| (d, watch.join(format!("p{p}/d{d}"))))
                    .collect();
                let fill = |d: usize, dir: &Path, names: &mut Vec<String>| {
                    for rel in ["a.txt", "b.txt", "nested/c.txt"] {
                        let name = format!("p{p}/d{d}/{rel}");
                        std::fs::write(dir.join(rel), name.as_bytes()).unwrap();
                        names.push(name);
                    }
                };
                let (at_once, later) = dirs.split_at(PER_PRODUCER / 2);
                for (d, dir) in at_once {
                    std::fs::create_dir_all(dir.join("nested")).unwrap();
                    fill(*d, dir, &mut names);
                }
                for (_, dir) in later {
                    std::fs::create_dir_all(dir.join("nested")).unwrap();
                }
                for (d, dir) in later {
                    fill(*d, dir, &mut names);
                }
                names
            })
        })
        .collect();
    let names: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let expected = names.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut stored = 0;
    while std::time::Instant::now() < deadline {
        stored = world.keys().await.unwrap().len();
        if stored == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let keys = world.keys().await.unwrap();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !keys.contains(&key(n)))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{stored} of {expected} stored; missing e.g. {missing:?}"
    );
    assert!(
        daemon
            .events("scanned")
            .iter()
            .all(|e| e["reason"] != "periodic"),
        "nothing waited for the safety rescan"
    );
    // 2,000 new directories: not an INFO line each, but a summary at most every 10 s.
    assert!(
        daemon.events("scanned").len() < 10,
        "per-directory scans are not logged at INFO"
    );
    assert!(daemon.stop().unwrap().success());
    let summaries = daemon.events("scanned_new_directories");
    assert!(
        !summaries.is_empty() && summaries.len() < 10,
        "{summaries:?}"
    );
}

/// The race of a new directory: notify hands over a whole batch of events before it adds
/// the watches for the directories the batch created, so a scan started on the "directory
/// created" event can finish before the directory is watched, and a file written in
/// between has neither an event nor a scan. On an idle machine notify is quicker than the
/// scan; a loaded one can deschedule notify's thread there. The test plays that with the
/// test-only variable that makes notify's thread linger on each event, while each new
/// directory keeps receiving files after it appears. Everything must arrive without the
/// periodic safety rescan. (With the intake's own watch-before-scan removed, this test
/// loses files.)
#[tokio::test(flavor = "multi_thread")]
async fn files_written_while_a_new_directory_is_being_watched_are_not_lost() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut daemon = Daemon::start_with_env(
        &site,
        s3drop(),
        &[
            fc.sdk_env(),
            vec![(s3drop::watch::SLOW_EVENTS_VAR, "2000".to_string())],
        ]
        .concat(),
    )
    .unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    const DIRS: usize = 20;
    const FILES: usize = 10;
    let mut names = Vec::new();
    for d in 0..DIRS {
        let dir = site.watch.join(format!("t/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES {
            let name = format!("t/d{d}/f{f}");
            std::fs::write(dir.join(format!("f{f}")), name.as_bytes()).unwrap();
            names.push(name);
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut keys = world.keys().await.unwrap();
    while keys.len() < names.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        keys = world.keys().await.unwrap();
    }
    let missing: Vec<&String> = names.iter().filter(|n| !keys.contains(&key(n))).collect();
    assert!(
        missing.is_empty(),
        "{} of {} missing, e.g. {:?}",
        missing.len(),
        names.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_backups_over_an_existing_file_upload_the_database_and_never_its_journal() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut daemon = start_ready(&site, &fc);
    let source = site.dir.path().join("source.db");
    let sqlite = |db: &Path, sql: &str| {
        let out = std::process::Command::new("sqlite3")
            .arg(db)
            .arg(sql)
            .output()
            .expect("sqlite3 (Debian package sqlite3; scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sqlite(
        &source,
        "create table t(x); insert into t values (randomblob(5000000));",
    );
    let backup = site.watch.join("backup.db");
    // The first backup creates the file; the ones over it write and delete a journal.
    for round in 0..3 {
        sqlite(&source, &format!("insert into t values ({round});"));
        sqlite(&source, &format!(".backup '{}'", backup.display()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A database written in place whose journal persists (journal_mode=persist keeps the
    // file after each commit, zeroed): the journal must never be uploaded either.
    let in_place = site.watch.join("in-place.db");
    sqlite(
        &in_place,
        "pragma journal_mode=persist; create table t(x); insert into t values (1);",
    );
    assert!(site.watch.join("in-place.db-journal").exists());
    world
        .wait_for_object(&key("in-place.db"), ARRIVAL)
        .await
        .unwrap();
    let want = std::fs::read(&backup).unwrap();
    let deadline = std::time::Instant::now() + ARRIVAL;
    while world
        .get_object(&key("backup.db"))
        .await
        .unwrap()
        .as_deref()
        != Some(&want[..])
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the last backup did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Settled: a journal, had it been taken, would be stored by now.
    wait_idle(&site, &fc).await;
    let keys = world.keys().await.unwrap();
    assert_eq!(
        keys,
        vec![key("backup.db"), key("in-place.db")],
        "no journal stored"
    );
    assert!(daemon.stop().unwrap().success());
}

/// Runs a producer program, failing the test with its output if it fails.
fn run(program: &str, args: &[&str], cwd: &Path) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/install-deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rsync_inplace_and_tar_touch_files_after_closing_them_and_each_is_sent_once() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut daemon = start_ready(&site, &fc);
    // Files with an old mtime, which rsync -t and tar set again right after each close.
    let src = site.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut names = Vec::new();
    for i in 0..16u32 {
        let name = format!("f{i}.bin");
        std::fs::write(src.join(&name), content(i, 200_000)).unwrap();
        names.push(name);
    }
    run("sh", &["-c", "touch -d '2020-01-01 00:00' *.bin"], &src);
    let watch = site.watch.to_str().unwrap();
    run(
        "rsync",
        &["-rt", "--inplace", "./", &format!("{watch}/rsync/")],
        &src,
    );
    run("tar", &["-cf", "../files.tar", "."], &src);
    std::fs::create_dir(site.watch.join("tar")).unwrap();
    run(
        "tar",
        &["-xf", "../../files.tar", "-C", "."],
        &site.watch.join("tar"),
    );
    for dir in ["rsync", "tar"] {
        for name in &names {
            let want = std::fs::read(src.join(name)).unwrap();
            let got = world
                .wait_for_object(&key(&format!("{dir}/{name}")), ARRIVAL)
                .await
                .unwrap();
            assert_eq!(got, want, "{dir}/{name}");
        }
    }
    wait_idle(&site, &fc).await;
    let puts = fc.object_puts(BUCKET);
    let twice: Vec<_> = puts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(puts.len(), 2 * names.len(), "{puts:?}");
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_touch_after_the_upload_sends_nothing_but_new_bytes_of_the_same_size_are_sent() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut daemon = start_ready(&site, &fc);
    drop_file(&world, &site, "report.csv", &content(7, 4096)).await;
    let path = site.watch.join("report.csv");
    let puts = || {
        fc.object_puts(BUCKET)
            .get(&key("report.csv"))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(puts(), 1);
    // Only the mtime changes; the rescan SIGHUP asks for finds a new identity.
    run(
        "touch",
        &["-d", "2021-06-01 12:00", path.to_str().unwrap()],
        &site.watch,
    );
    hangup_and_wait_idle(&mut daemon, &site, &fc).await;
    assert_eq!(puts(), 1, "a touch alone is not a new version");
    // New bytes, same size: sent again.
    std::fs::write(&path, content(8, 4096)).unwrap();
    let stored = world.wait_for_object(&key("report.csv"), ARRIVAL).await;
    let deadline = std::time::Instant::now() + ARRIVAL;
    while world.get_object(&key("report.csv")).await.unwrap() != Some(content(8, 4096)) {
        assert!(std::time::Instant::now() < deadline, "{stored:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(puts(), 2);
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_programs_operators_fill_drop_directories_with_each_file_arrives_once_and_whole() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut daemon = start_ready(&site, &fc);
    let src = site.dir.path().join("src");
    std::fs::create_dir_all(src.join("tree/sub")).unwrap();
    std::fs::create_dir_all(src.join("linked")).unwrap();
    let file = |rel: &str, seed: u32, len: usize| {
        let body = content(seed, len);
        std::fs::write(src.join(rel), &body).unwrap();
        body
    };
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    let tree_a = file("tree/a.bin", 1, 30_000);
    let tree_b = file("tree/sub/b.bin", 2, 70_000);
    let single = file("single.bin", 3, 50_000);
    let big = file("big.bin", 4, 250_000);
    let linked = file("linked/one.bin", 5, 20_000);
    std::fs::hard_link(src.join("linked/one.bin"), src.join("linked/two.bin")).unwrap();
    let w = site.watch.to_str().unwrap().to_string();

    run("cp", &["-a", "tree", &format!("{w}/cp-a")], &src);
    expected.push(("cp-a/a.bin".into(), tree_a.clone()));
    expected.push(("cp-a/sub/b.bin".into(), tree_b.clone()));
    // Snapshot backups: rsync --link-dest hard-links what did not change since the last
    // snapshot (a link(2), no write, no close) and writes only what did.
    run("rsync", &["-a", "tree/", &format!("{w}/snap-1/")], &src);
    expected.push(("snap-1/a.bin".into(), tree_a.clone()));
    expected.push(("snap-1/sub/b.bin".into(), tree_b));
    let tree_b2 = content(12, 70_001);
    std::fs::write(src.join("tree/sub/b.bin"), &tree_b2).unwrap();
    run(
        "rsync",
        &[
            "-a",
            &format!("--link-dest={w}/snap-1"),
            "tree/",
            &format!("{w}/snap-2/"),
        ],
        &src,
    );
    let linked_back = std::fs::metadata(format!("{w}/snap-2/a.bin")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&linked_back),
        2,
        "rsync linked the unchanged file"
    );
    expected.push(("snap-2/a.bin".into(), tree_a));
    expected.push(("snap-2/sub/b.bin".into(), tree_b2));
    run("cp", &["-l", "single.bin", &format!("{w}/cp-l.bin")], &src);
    expected.push(("cp-l.bin".into(), single.clone()));
    run("rsync", &["-aH", "linked/", &format!("{w}/rsync-H/")], &src);
    expected.push(("rsync-H/one.bin".into(), linked.clone()));
    expected.push(("rsync-H/two.bin".into(), linked));
    run(
        "install",
        &["-m", "0644", "single.bin", &format!("{w}/installed.bin")],
        &src,
    );
    expected.push(("installed.bin".into(), single.clone()));
    run(
        "dd",
        &[
            "if=big.bin",
            &format!("of={w}/dd.bin"),
            "bs=64k",
            "status=none",
        ],
        &src,
    );
    expected.push(("dd.bin".into(), big.clone()));
    run(
        "split",
        &["-b", "100000", "big.bin", &format!("{w}/split-")],
        &src,
    );
    for (suffix, range) in [
        ("aa", 0..100_000),
        ("ab", 100_000..200_000),
        ("ac", 200_000..250_000),
    ] {
        expected.push((format!("split-{suffix}"), big[range].to_vec()));
    }
    // Across filesystems mv copies (then sets the times and unlinks the source).
    let shm = Path::new("/dev/shm").join(format!("s3drop-test-{}", std::process::id()));
    std::fs::write(&shm, &single).unwrap();
    run(
        "mv",
        &[shm.to_str().unwrap(), &format!("{w}/mv-xdev.bin")],
        &src,
    );
    expected.push(("mv-xdev.bin".into(), single));

    for (rel, body) in &expected {
        let got = world.wait_for_object(&key(rel), ARRIVAL).await.unwrap();
        assert_eq!(&got, body, "{rel}");
    }
    wait_idle(&site, &fc).await;
    let puts = fc.object_puts(BUCKET);
    for (rel, _) in &expected {
        assert_eq!(puts.get(&key(rel)), Some(&1), "{rel} PUTs: {puts:?}");
    }
    assert_eq!(puts.len(), expected.len(), "{puts:?}");
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_and_the_documented_logrotate_setup_deliver_whole_files_once() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let mut daemon = start_ready(&site, &fc);
    let dir = site.dir.path();
    let w = site.watch.to_str().unwrap().to_string();

    // curl writes in place and, with -R, sets the mtime after closing.
    let served = dir.join("www");
    std::fs::create_dir(&served).unwrap();
    let download = content(9, 300_000);
    std::fs::write(served.join("download.bin"), &download).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut http = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&served)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/download.bin");
    let fetched = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::process::Command::new("curl")
            .args(["-sfR", "-o", &format!("{w}/curl.bin"), &url])
            .status()
            .is_ok_and(|s| s.success())
    });
    let _ = http.kill();
    let _ = http.wait();
    assert!(fetched, "curl could not fetch from the local server");

    // README's logrotate setup: rotate outside the drop directory, move only the
    // compressed logs in (unique names through dateext).
    let (logs, rotated) = (dir.join("logs"), dir.join("rotated"));
    std::fs::create_dir(&logs).unwrap();
    std::fs::create_dir(&rotated).unwrap();
    let conf = dir.join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{logs}/app.log {{\n  rotate 5\n  compress\n  dateext\n  dateformat -%Y%m%d-%s\n  \
             olddir {rotated}\n  lastaction\n    mv {rotated}/*.gz {w}/ 2>/dev/null || true\n  \
             endscript\n}}\n",
            logs = logs.display(),
            rotated = rotated.display()
        ),
    )
    .unwrap();
    let state = dir.join("logrotate.state");
    let mut rotations = Vec::new();
    for round in 0..2u32 {
        let log = content(20 + round, 40_000);
        std::fs::write(logs.join("app.log"), &log).unwrap();
        let (conf, state) = (conf.to_str().unwrap(), state.to_str().unwrap());
        run("/usr/sbin/logrotate", &["-f", "-s", state, conf], dir);
        rotations.push(log);
        tokio::time::sleep(Duration::from_millis(1100)).await; // a new dateext name
    }

    let stored = world
        .wait_for_object(&key("curl.bin"), ARRIVAL)
        .await
        .unwrap();
    assert_eq!(stored, download);
    let deadline = std::time::Instant::now() + ARRIVAL;
    let gz = loop {
        let keys = world.keys().await.unwrap();
        let gz: Vec<String> = keys.into_iter().filter(|k| k.ends_with(".gz")).collect();
        if gz.len() == 2 || std::time::Instant::now() > deadline {
            break gz;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(gz.len(), 2, "{gz:?}");
    for (key, log) in gz.iter().zip(&rotations) {
        let object = world.get_object(key).await.unwrap().unwrap();
        let mut gunzip = std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        gunzip.stdin.take().unwrap().write_all(&object).unwrap();
        let out = gunzip.wait_with_output().unwrap();
        assert_eq!(&out.stdout, log, "{key}");
    }
    wait_idle(&site, &fc).await;
    let puts = fc.object_puts(BUCKET);
    assert!(puts.values().all(|n| *n == 1), "{puts:?}");
    assert_eq!(
        puts.len(),
        3,
        "curl.bin and two compressed logs only: {puts:?}"
    );
    assert!(daemon.stop().unwrap().success());
}
