//! Crash safety for real: s3drop is killed with SIGKILL at random moments while files of
//! mixed sizes are being dropped, and restarted each time. Afterwards every object is
//! checked against its file. Lost and corrupted must be 0; duplicates (objects stored more
//! than once) at most the uploads that can be in flight at a kill, summed over the kills.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use s3drop_testkit::{Daemon, FakeCloud, INSTANCE_ID, Site, World};

use crate::common::*;

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
    wait_idle(&site, &fc).await;
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

/// A ledger damaged as a failing disk leaves it: `run` stops with one sentence naming
/// `s3drop ledger reset` (no panic, no crash loop), `status` says the same, the reset moves
/// it aside, and the next start uploads every file still there once more: at most once.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_ledger_stops_with_a_sentence_and_reset_costs_one_upload_per_file() {
    let (fc, world, site) = s3drop_testkit::setup(BUCKET, "").await;
    let names: Vec<String> = (0..40).map(|i| format!("d{}/f{i}.txt", i % 4)).collect();
    for name in &names {
        let path = site.watch.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, name.as_bytes()).unwrap();
    }
    let mut daemon = start_ready(&site, &fc);
    for name in &names {
        world
            .wait_for_object(&s3drop_testkit::object_key(name), ARRIVAL)
            .await
            .unwrap();
    }
    assert!(daemon.stop().unwrap().success());

    // Random bytes over part of the ledger (seeded), until s3drop finds it damaged.
    let ledger = site.state.join("ledger.redb");
    let pristine = std::fs::read(&ledger).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let offline = |args: &[&str]| {
        site.command(s3drop(), &fc, args)
            .output()
            .map(|o| (o.status, String::from_utf8_lossy(&o.stderr).into_owned()))
            .unwrap()
    };
    let damaged = (0..200).any(|_| {
        let mut bytes = pristine.clone();
        let at = rng.usize(0..bytes.len());
        let len = rng.usize(16..2048).min(bytes.len() - at);
        rng.fill(&mut bytes[at..at + len]);
        std::fs::write(&ledger, &bytes).unwrap();
        offline(&["status"]).1.contains("is damaged")
    });
    assert!(damaged, "no damage was noticed in 200 tries");

    let started = Instant::now();
    let (status, stderr) = offline(&["run"]);
    // 65 (EX_DATAERR): the unit's RestartPreventExitStatus= keeps systemd from looping.
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("s3drop ledger reset"), "{stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one sentence: {stderr}");

    let (status, out) = {
        let o = site
            .command(s3drop(), &fc, &["ledger", "reset"])
            .output()
            .unwrap();
        (o.status, String::from_utf8_lossy(&o.stdout).into_owned())
    };
    assert!(
        status.success() && out.contains("moved the ledger aside"),
        "{out}"
    );
    let before = fc.objects_stored(BUCKET);
    let mut daemon = start_ready(&site, &fc);
    wait_until("every file uploaded once more", ARRIVAL, || {
        let now = fc.objects_stored(BUCKET);
        names.iter().all(|n| {
            let key = s3drop_testkit::object_key(n);
            now.get(&key) > before.get(&key)
        })
    })
    .await;
    wait_idle(&site, &fc).await;
    let after = fc.objects_stored(BUCKET);
    for name in &names {
        let key = s3drop_testkit::object_key(name);
        let more = after.get(&key).unwrap_or(&0) - before.get(&key).unwrap_or(&0);
        assert_eq!(more, 1, "{name}: uploaded {more} more times");
    }
    assert!(daemon.stop().unwrap().success());
}
