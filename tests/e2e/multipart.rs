//! Big files: multipart uploads with per-part CRC32C, resumed after a crash from the parts
//! recorded in the ledger, and sent again whole when the file changes mid-upload. Parts are
//! counted on the server (fakecloud's log of UploadPart requests answered 200).

use std::time::{Duration, Instant};

use s3drop_testkit::proxy::FaultProxy;
use s3drop_testkit::{Daemon, Site, object_key as key, setup};

use crate::common::*;

const MIB: usize = 1 << 20;
/// 40 MiB in 5 MiB parts: 8 parts.
const CONFIG: &str = "multipart_threshold = \"8MiB\"\npart_size = \"5MiB\"";

#[tokio::test(flavor = "multi_thread")]
async fn a_40_mib_file_goes_up_in_8_verified_parts() {
    let (fc, world, site) = setup(BUCKET, &format!("{CONFIG}\npart_concurrency = 2")).await;
    let mut daemon = Daemon::start(&site, s3drop(), &fc).unwrap();
    daemon.wait_until_ready(Duration::from_secs(30)).unwrap();
    let body = content(1, 40 * MIB);
    std::fs::write(site.watch.join("big.bin"), &body).unwrap();
    let got = world
        .wait_for_object(&key("big.bin"), Duration::from_secs(120))
        .await
        .unwrap();
    assert!(got == body, "the object differs from the file");
    assert_eq!(fc.parts_stored(BUCKET, &key("big.bin")), 8);
    let uploaded = daemon.events("uploaded");
    assert_eq!(uploaded.len(), 1);
    assert!(
        uploaded[0]["crc32c"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "S3's checksum of the part checksums is recorded: {}",
        uploaded[0]
    );
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_mid_upload_resumes_instead_of_starting_over() {
    // Object options too: they go with CreateMultipartUpload, so the resumed upload keeps them.
    let options = "storage_class = \"STANDARD_IA\"\ntags = { resumed = \"yes\" }";
    let (fc, world, site) = setup(
        BUCKET,
        &format!("{CONFIG}\npart_concurrency = 1\n{options}"),
    )
    .await;
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    proxy.set_put_delay(Duration::from_millis(700));
    let run = |site: &Site| {
        Daemon::start_with_env(site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap()
    };
    let body = content(2, 40 * MIB);
    std::fs::write(site.watch.join("resume.bin"), &body).unwrap();
    let mut first = run(&site);
    // Kill it once at least 3 parts are stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fc.parts_stored(BUCKET, &key("resume.bin")) < 3 {
        assert!(Instant::now() < deadline, "{}", first.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap();
    let before_restart = fc.parts_stored(BUCKET, &key("resume.bin"));
    proxy.set_put_delay(Duration::ZERO);

    let mut second = run(&site);
    let got = world
        .wait_for_object(&key("resume.bin"), Duration::from_secs(120))
        .await
        .unwrap();
    assert!(got == body, "the resumed object differs from the file");
    let resumed = second.events("multipart_resumed");
    assert_eq!(resumed.len(), 1, "{}", second.log());
    let parts_done = resumed[0]["parts_done"].as_u64().unwrap() as usize;
    let total = fc.parts_stored(BUCKET, &key("resume.bin"));
    println!(
        "resume test: {before_restart} parts stored before the kill, {parts_done} recorded as \
         done, {total} part uploads in all for 8 parts"
    );
    assert!(parts_done >= 2, "most parts sent before the kill were kept");
    // Only the parts not recorded were sent again (one may have been in flight).
    assert_eq!(total, before_restart + (8 - parts_done));
    assert!(total <= 8 + 1, "{total} part uploads for 8 parts");
    let head = world.head(&key("resume.bin")).await.unwrap();
    assert_eq!(
        head.storage_class(),
        Some(&aws_sdk_s3::types::StorageClass::StandardIa)
    );
    assert_eq!(
        world.tags(&key("resume.bin")).await.unwrap(),
        [("resumed".to_string(), "yes".to_string())],
        "the resumed object has its tag"
    );
    assert!(second.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_changed_mid_upload_is_sent_again_whole() {
    let (fc, world, site) = setup(BUCKET, &format!("{CONFIG}\npart_concurrency = 1")).await;
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    let mut daemon =
        Daemon::start_with_env(&site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap();
    daemon.wait_until_ready(Duration::from_secs(30)).unwrap();
    proxy.set_put_delay(Duration::from_millis(500));
    let path = site.watch.join("growing.bin");
    std::fs::write(&path, content(3, 40 * MIB)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fc.parts_stored(BUCKET, &key("growing.bin")) < 2 {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Rewrite it with other content of another size while parts are going up.
    let second = content(4, 30 * MIB + 7);
    std::fs::write(&path, &second).unwrap();
    proxy.set_put_delay(Duration::ZERO);
    daemon
        .wait_for_event(
            "upload_failed",
            &[("kind", "changed")],
            Duration::from_secs(60),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(got) = world.get_object(&key("growing.bin")).await.unwrap()
            && got == second
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new version never arrived whole"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 30 MiB + 7 bytes is 7 parts, all sent for the new version.
    let total = fc.parts_stored(BUCKET, &key("growing.bin"));
    assert!(total >= 2 + 7, "{total}");
    assert!(daemon.stop().unwrap().success());
}

/// Multipart uploads of `key` S3 still keeps (not completed, not aborted).
async fn open_uploads(world: &s3drop_testkit::World, key: &str) -> usize {
    let listed = world
        .s3
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    listed
        .uploads()
        .iter()
        .filter(|u| u.key() == Some(key))
        .count()
}

/// A 50 GiB sparse file (no disk used: `truncate -s 50G`), deleted once its upload is under
/// way: the upload stops within a few parts and its UploadId is aborted. With
/// `max_file_size` it is not started at all, and `status` lists it.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_sparse_file_deleted_mid_upload_is_abandoned_and_max_file_size_refuses_it() {
    const SPARSE: u64 = 50 << 30;
    let (fc, world, site) = setup(BUCKET, "part_concurrency = 2").await;
    let mut daemon = start_ready(&site, &fc);
    let sparse = site.watch.join("sparse.bin");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(SPARSE)
        .unwrap();
    let k = key("sparse.bin");
    wait_until("two parts stored", Duration::from_secs(120), || {
        fc.parts_stored(BUCKET, &k) >= 2
    })
    .await;
    assert_eq!(open_uploads(&world, &k).await, 1);
    std::fs::remove_file(&sparse).unwrap();
    let at_delete = fc.parts_stored(BUCKET, &k);
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_uploads(&world, &k).await > 0 {
        assert!(Instant::now() < deadline, "the upload was not aborted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_idle(&site, &fc).await;
    let total = fc.parts_stored(BUCKET, &k);
    // At most a check interval (4 parts) and the parts in flight (2) after the delete.
    assert!(
        total <= at_delete + 6,
        "{total} parts, {at_delete} at the delete"
    );
    assert!(world.get_object(&k).await.unwrap().is_none());
    assert!(daemon.stop().unwrap().success());

    // With max_file_size: refused, kept, listed; no upload started.
    site.write_config(BUCKET, "part_concurrency = 2\nmax_file_size = \"1GiB\"")
        .unwrap();
    let limited = site.watch.join("limited.bin");
    std::fs::File::create(&limited)
        .unwrap()
        .set_len(SPARSE)
        .unwrap();
    let mut daemon = start_ready(&site, &fc);
    let status = || status_text(&site, &fc);
    wait_until("the refused file in status", ARRIVAL, || {
        status().contains("over max_file_size")
    })
    .await;
    assert!(limited.exists(), "the file is kept");
    assert_eq!(open_uploads(&world, &key("limited.bin")).await, 0);
    assert_eq!(fc.parts_stored(BUCKET, &key("limited.bin")), 0);
    assert!(daemon.stop().unwrap().success());
    // Recorded: `status` still lists it with the daemon stopped.
    assert!(status().contains("over max_file_size"), "{}", status());
}
