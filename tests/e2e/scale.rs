//! Scale on one host, end to end: a backlog does not starve a file dropped elsewhere, and
//! a flood of deleted waiting files is said once. (The per-file memory bound is a unit test
//! in `src/queue.rs`; the million-file figures are `scripts/bench.sh`'s P5.)

use std::time::Duration;

use s3drop_testkit::{Daemon, object_key as key, setup};

use crate::common::*;

const BUCKET: &str = "s3drop-scale";

/// A backlog held back by `max_bandwidth`: 16 files of 4 KiB a second.
const THROTTLED: &str = "max_bandwidth = \"64KiB\"\nquiet_period_ms = 50";

/// `files` files of 4 KiB in `dir`, written a minute ago: settled, so the start-up scan
/// queues them all.
fn backlog(dir: &std::path::Path, files: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let then = std::time::SystemTime::now() - Duration::from_secs(60);
    for i in 0..files {
        let path = dir.join(format!("f{i:05}"));
        std::fs::write(&path, [b'x'; 4096]).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_in_one_directory_does_not_starve_a_file_dropped_in_another() {
    let (fc, world, site) = setup(BUCKET, THROTTLED).await;
    // 1,500 files take over 90 s at this bandwidth; a canary queued behind them would too.
    backlog(&site.watch.join("flood"), 1500);
    let mut daemon = Daemon::start(&site, s3drop(), &fc).unwrap();
    daemon.wait_until_ready(Duration::from_secs(60)).unwrap();
    daemon
        .wait_for_event("uploaded", &[], Duration::from_secs(60))
        .unwrap(); // the flood is draining
    std::fs::create_dir(site.watch.join("canary")).unwrap();
    std::fs::write(site.watch.join("canary/c.txt"), b"not starved").unwrap();
    world
        .wait_for_object(&key("canary/c.txt"), Duration::from_secs(20))
        .await
        .unwrap();
    let flood_stored = fc
        .objects_stored(BUCKET)
        .keys()
        .filter(|k| k.contains("/flood/"))
        .count();
    assert!(
        flood_stored < 1000,
        "the canary came before the flood's end ({flood_stored} of 1500 stored)"
    );
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_many_waiting_files_is_said_in_one_summary() {
    let (fc, _world, site) = setup(BUCKET, THROTTLED).await;
    let batch = site.watch.join("batch");
    backlog(&batch, 2000);
    let mut daemon = Daemon::start(&site, s3drop(), &fc).unwrap();
    daemon.wait_until_ready(Duration::from_secs(60)).unwrap();
    daemon
        .wait_for_event("uploaded", &[], Duration::from_secs(60))
        .unwrap();
    // Gone at once (moved out of the tree, then deleted), so the workers meet one burst of
    // vanished files rather than a deletion they race file by file.
    let away = site.dir.path().join("deleted");
    std::fs::rename(&batch, &away).unwrap();
    std::fs::remove_dir_all(&away).unwrap();
    // Every file ends uploaded, or said as deleted: one by one, or in the summary.
    let accounted = |daemon: &Daemon| {
        let summarized: u64 = daemon
            .events("dropped_summary")
            .iter()
            .map(|e| e["files"].as_u64().unwrap())
            .sum();
        daemon.events("dropped").len() + summarized as usize + daemon.events("uploaded").len()
    };
    wait_until("every file accounted for", Duration::from_secs(60), || {
        accounted(&daemon) == 2000
    })
    .await;
    let one_by_one = daemon
        .events("dropped")
        .into_iter()
        .filter(|e| e["reason"] == "gone_before_upload")
        .count();
    assert!(one_by_one <= 5, "{one_by_one} said one by one");
    let summaries = daemon.events("dropped_summary");
    assert_eq!(summaries.len(), 1, "one summary: {summaries:?}");
    assert!(
        summaries[0]["files"].as_u64().unwrap() > 1000,
        "{summaries:?}"
    );
    assert!(daemon.stop().unwrap().success());
}
