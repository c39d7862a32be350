//! inotify queue overflow: with a tiny kernel event queue, a burst of files overflows it
//! (notify reports `Rescan`), and the rescan still delivers every file. Needs root to set
//! `fs.inotify.max_queued_events`; skipped with a message otherwise. In a test binary of its
//! own, so the short window with a tiny queue touches no other test's daemon.

use std::path::Path;
use std::time::Duration;

use s3drop_testkit::{Daemon, FakeCloud, INSTANCE_ID, Site, World};

use crate::common::*;

const QUEUE_KNOB: &str = "/proc/sys/fs/inotify/max_queued_events";

/// Sets the knob for inotify instances created from now on; restores it when dropped.
struct QueueLimit {
    original: String,
}

impl QueueLimit {
    fn set(value: u32) -> Option<QueueLimit> {
        let original = std::fs::read_to_string(QUEUE_KNOB).ok()?;
        std::fs::write(QUEUE_KNOB, value.to_string()).ok()?;
        Some(QueueLimit { original })
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(QUEUE_KNOB, self.original.trim());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overflowing_burst_is_delivered_in_full_by_the_rescan() {
    let fc = FakeCloud::start().unwrap();
    let world = World::provision(&fc, "drop-bucket").await.unwrap();
    let site = Site::new("drop-bucket", "").unwrap();

    let Some(limit) = QueueLimit::set(16) else {
        eprintln!("SKIPPED: cannot set {QUEUE_KNOB} (needs root); inotify overflow not tested");
        return;
    };
    let mut daemon = Daemon::start(&site, Path::new(S3DROP), &fc).unwrap();
    daemon
        .wait_for_event("scanned", &[("reason", "startup")], Duration::from_secs(30))
        .unwrap();
    drop(limit); // the daemon's inotify instance keeps its tiny queue

    const FILES: usize = 2_000;
    for i in 0..FILES {
        std::fs::write(site.watch.join(format!("burst-{i:05}.dat")), i.to_string()).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let keys = world.keys().await.unwrap();
        if keys.len() == FILES {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {FILES} arrived",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        daemon.events("events_lost").iter().any(|e| e["cause"]
            .as_str()
            .unwrap()
            .contains("inotify queue overflowed")),
        "the burst did overflow the kernel queue"
    );
    for i in [0, FILES / 2, FILES - 1] {
        let body = world
            .get_object(&format!("{INSTANCE_ID}/burst-{i:05}.dat"))
            .await
            .unwrap();
        assert_eq!(body.unwrap(), i.to_string().into_bytes());
    }
    let puts = fc.object_puts("drop-bucket");
    let twice = puts.values().filter(|&&n| n > 1).count();
    println!("overflow test: {FILES} files, all delivered, {twice} PUT more than once");
    assert!(daemon.stop().unwrap().success());
}
