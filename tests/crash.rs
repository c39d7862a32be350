//! Crash safety for real: s3drop is killed with SIGKILL at random moments while files of
//! mixed sizes are being dropped, and restarted each time. Afterwards every object is
//! checked against its file. Lost and corrupted must be 0; duplicates (objects stored more
//! than once) at most the uploads that can be in flight at a kill, summed over the kills.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use s3drop_testkit::{Daemon, FakeCloud, INSTANCE_ID, Site, World};

mod common;
use common::*;

const FILES: usize = 1_000;
const KILLS: usize = 20;
const CONCURRENCY: usize = 8;

fn body(i: usize) -> Vec<u8> {
    // Mostly small files, some larger: 0 B to 1 MiB.
    let len = [
        0,
        100,
        1_000,
        4_096,
        20_000,
        100,
        65_536,
        3_000,
        1 << 20,
        500,
    ][i % 10];
    let seed = (i as u32).wrapping_mul(2_654_435_761);
    (0..len)
        .map(|j| (j as u32).wrapping_mul(31).wrapping_add(seed) as u8)
        .collect()
}

fn name(i: usize) -> String {
    format!("d{}/file-{i:04}.bin", i % 7)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_corrupts_nothing() {
    let fc = FakeCloud::start().unwrap();
    let world = World::provision(&fc, BUCKET).await.unwrap();
    let site = Site::new(BUCKET, &format!("concurrency = {CONCURRENCY}")).unwrap();
    let s3drop = Path::new(S3DROP);
    let started = Instant::now();

    // The producer writes files in place (some renamed into place), at a steady pace.
    let watch = site.watch.clone();
    let staging = site.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let producing = Arc::new(AtomicBool::new(true));
    let producing_flag = producing.clone();
    let producer = std::thread::spawn(move || {
        for i in 0..FILES {
            let target = watch.join(name(i));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            if i % 4 == 0 {
                let tmp = staging.join(format!("{i}"));
                std::fs::write(&tmp, body(i)).unwrap();
                std::fs::rename(&tmp, &target).unwrap();
            } else {
                std::fs::write(&target, body(i)).unwrap();
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        producing_flag.store(false, Ordering::SeqCst);
    });

    let mut daemon = Daemon::start(&site, s3drop, &fc).unwrap();
    let mut kills = 0;
    while kills < KILLS || producing.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(200..1_200))).await;
        if kills < KILLS {
            daemon.kill().unwrap();
            kills += 1;
            daemon = Daemon::start(&site, s3drop, &fc).unwrap();
        }
    }
    producer.join().unwrap();

    // The last daemon runs undisturbed until everything is there.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let have = world.keys().await.unwrap().len();
        if have >= FILES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {FILES} objects after the kills"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(daemon.stop().unwrap().success());

    let mut lost = 0;
    let mut corrupted = 0;
    for i in 0..FILES {
        match world
            .get_object(&format!("{INSTANCE_ID}/{}", name(i)))
            .await
            .unwrap()
        {
            None => lost += 1,
            Some(got) if got != body(i) => corrupted += 1,
            Some(_) => {}
        }
    }
    let stored = fc.objects_stored(BUCKET);
    let duplicates: usize = stored.values().map(|n| n - 1).sum();
    let extra_keys = stored.len().saturating_sub(FILES);
    let bound = kills * CONCURRENCY;
    println!(
        "crash test: files={FILES} kills={kills} lost={lost} corrupted={corrupted} \
         duplicates={duplicates} (bound {bound} = kills x concurrency) unexpected_keys={extra_keys} \
         elapsed={:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0);
    assert_eq!(corrupted, 0);
    assert_eq!(extra_keys, 0);
    assert!(duplicates <= bound, "{duplicates} duplicates > {bound}");
}
