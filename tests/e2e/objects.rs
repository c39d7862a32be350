//! What lands in S3: the object options of the config on every stored object, single PUT
//! and multipart alike, read back as fakecloud's admin (HeadObject, GetObjectTagging); the
//! session policy grown exactly by them, as `check` shows it.
//!
//! fakecloud 0.51 stores tags, ACLs, storage classes, SSE-KMS and metadata, but does not
//! require `s3:PutObjectTagging` / `s3:PutObjectAcl` for the tagging and ACL headers of a
//! PutObject, nor `kms:GenerateDataKey` for a key of the caller's own account, as AWS does
//! (../shared/LOCAL-AWS.md, 7 and 8): that the policy holds those actions, and only when
//! configured, is proven by the policy's unit tests (src/auth/policy.rs) and shown here in
//! `check`'s line.

use std::time::Duration;

use crate::common::*;
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use s3drop_testkit::{object_key as key, setup};

const MIB: usize = 1 << 20;

fn options(key_arn: &str) -> String {
    format!(
        "storage_class = \"STANDARD_IA\"\nsse = \"aws:kms\"\nsse_kms_key_id = \"{key_arn}\"\n\
         bucket_key = true\nacl = \"bucket-owner-full-control\"\n\
         tags = {{ team = \"data\", host = \"{{hostname}}\", \"with space\" = \"a&b=c\" }}\n\
         metadata = {{ source = \"{{instance_id}}\" }}\n\
         multipart_threshold = \"8MiB\"\npart_size = \"5MiB\""
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_object_option_is_on_the_stored_object_single_and_multipart() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let key_arn = world.create_kms_key().await.unwrap();
    site.write_config(BUCKET, &options(&key_arn)).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();

    // check shows the grown policy, and its probe carries the options.
    let out = site.command(s3drop(), &fc, &["check"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(
            "s3:PutObject, s3:AbortMultipartUpload, s3:PutObjectTagging, s3:PutObjectAcl on"
        ),
        "{report}"
    );
    assert!(
        report.contains(&format!("kms:GenerateDataKey, kms:Decrypt on {key_arn}")),
        "{report}"
    );

    let mut daemon = start_ready(&site, &fc);
    let small = br#"{"small": true}"#.to_vec();
    let big = content(3, 12 * MIB);
    std::fs::write(site.watch.join("small.json"), &small).unwrap();
    std::fs::write(site.watch.join("big.bin"), &big).unwrap();
    // Both stored before either is read: fakecloud 0.51 can deadlock reading an SSE-KMS
    // object while s3drop's next upload writes (LOCAL-AWS.md's divergences).
    world
        .wait_for_keys(
            &[key("small.json"), key("big.bin")],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    for (name, body, content_type) in [
        ("small.json", &small, "application/json"),
        ("big.bin", &big, "application/octet-stream"),
    ] {
        let k = key(name);
        let got = world
            .wait_for_object(&k, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(&got == body, "{name} differs");
        let head = world.head(&k).await.unwrap();
        assert_eq!(
            head.storage_class(),
            Some(&StorageClass::StandardIa),
            "{name}"
        );
        assert_eq!(
            head.server_side_encryption(),
            Some(&ServerSideEncryption::AwsKms),
            "{name}"
        );
        assert_eq!(head.ssekms_key_id(), Some(key_arn.as_str()), "{name}");
        assert_eq!(head.bucket_key_enabled(), Some(true), "{name}");
        assert_eq!(head.content_type(), Some(content_type), "{name}");
        assert_eq!(
            head.metadata()
                .and_then(|m| m.get("source"))
                .map(String::as_str),
            Some(s3drop_testkit::INSTANCE_ID),
            "{name}"
        );
        assert_eq!(
            world.tags(&k).await.unwrap(),
            [
                ("host".to_string(), host.to_string()),
                ("team".to_string(), "data".to_string()),
                ("with space".to_string(), "a&b=c".to_string()),
            ],
            "{name}"
        );
        let acl = world
            .s3
            .get_object_acl()
            .bucket(BUCKET)
            .key(&k)
            .send()
            .await
            .unwrap();
        assert!(!acl.grants().is_empty(), "{name}: an ACL is stored");
    }
    assert_eq!(
        fc.parts_stored(BUCKET, &key("big.bin")),
        3,
        "multipart: 12 MiB in 5 MiB parts"
    );
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_options_nothing_extra_is_sent_or_allowed() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let out = site.command(s3drop(), &fc, &["check"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("✔ session policy: s3:PutObject, s3:AbortMultipartUpload on arn:"),
        "{report}"
    );
    assert!(!report.contains("kms:"), "{report}");
    let mut daemon = start_ready(&site, &fc);
    drop_file(&world, &site, "plain.txt", b"plain").await;
    let head = world.head(&key("plain.txt")).await.unwrap();
    assert_eq!(head.content_type(), Some("text/plain"));
    assert!(head.ssekms_key_id().is_none());
    assert!(head.metadata().is_none_or(|m| m.is_empty()));
    assert!(daemon.stop().unwrap().success());
}

/// How many conflicts (`overwrite = false` met an object) the daemon reported.
fn conflicts(daemon: &s3drop_testkit::Daemon) -> usize {
    daemon
        .events("upload_failed")
        .iter()
        .filter(|e| e["kind"] == "conflict")
        .count()
}

/// `overwrite = false` (conditional writes): an object already under the key is left
/// intact, the file is neither uploaded nor deleted, the conflict is in the log and the
/// ledger, a restart does not try again, and a SIGHUP does (once).
#[tokio::test(flavor = "multi_thread")]
async fn with_overwrite_false_an_existing_object_is_never_replaced() {
    let config = "overwrite = false\nafter_upload = \"delete\"\n\
                  multipart_threshold = \"5MiB\"\npart_size = \"5MiB\"";
    let (fc, world, site) = setup(BUCKET, config).await;
    for name in ["exists.txt", "exists-big.bin"] {
        world
            .s3
            .put_object()
            .bucket(BUCKET)
            .key(key(name))
            .body(b"the original".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let mut daemon = start_ready(&site, &fc);
    std::fs::write(site.watch.join("exists.txt"), b"a newer file").unwrap();
    std::fs::write(site.watch.join("exists-big.bin"), content(9, 11 * MIB)).unwrap();
    drop_file(&world, &site, "fresh.txt", b"nothing here before").await;
    wait_until("both conflicts", ARRIVAL, || conflicts(&daemon) == 2).await;
    for name in ["exists.txt", "exists-big.bin"] {
        let stored = world.get_object(&key(name)).await.unwrap().unwrap();
        assert_eq!(stored, b"the original", "{name} was replaced");
        assert!(site.watch.join(name).exists(), "{name} was deleted");
    }
    wait_until("fresh.txt deleted after its upload", ARRIVAL, || {
        !site.watch.join("fresh.txt").exists()
    })
    .await;
    let puts = |name: &str| fc.object_puts(BUCKET).get(&key(name)).copied().unwrap_or(0);
    assert_eq!(
        puts("exists.txt"),
        2,
        "the original and one conditional attempt"
    );
    assert!(daemon.stop().unwrap().success());

    // The ledger says why.
    let ledger = s3drop::ledger::Ledger::open(&site.state).unwrap();
    let record = ledger
        .get(std::path::Path::new("exists.txt"))
        .unwrap()
        .unwrap();
    assert_eq!(
        record.state,
        s3drop::ledger::FileState::Conflict {
            key: key("exists.txt")
        }
    );
    drop(ledger);

    // A restart does not try again; a SIGHUP does, once.
    let mut daemon = start_ready(&site, &fc);
    wait_idle(&site, &fc).await;
    assert_eq!(puts("exists.txt"), 2, "a restart retried the conflict");
    hangup_and_wait_idle(&mut daemon, &site, &fc).await;
    assert_eq!(puts("exists.txt"), 3, "a SIGHUP retries it once");
    assert_eq!(
        world.get_object(&key("exists.txt")).await.unwrap().unwrap(),
        b"the original"
    );
    assert!(daemon.stop().unwrap().success());
}

/// `key_template` with the file's modification time, kept through a restart that resumes
/// a multipart upload; and two files a non-injective template maps to one key: one is
/// uploaded, the other refused, nothing overwritten.
#[tokio::test(flavor = "multi_thread")]
async fn key_templates_use_the_mtime_and_never_let_two_files_share_a_key() {
    use s3drop_testkit::proxy::FaultProxy;
    let config = "key_template = \"{yyyy}/{mm}/{dd}/{hh}/{path}\"\n\
                  multipart_threshold = \"5MiB\"\npart_size = \"5MiB\"\npart_concurrency = 1";
    let (fc, world, site) = setup(BUCKET, config).await;
    let touch = |name: &str| {
        let status = std::process::Command::new("touch")
            .args(["-d", "2021-06-01 12:34:56 UTC"])
            .arg(site.watch.join(name))
            .status()
            .unwrap();
        assert!(status.success());
    };
    let dated = |name: &str| key(&format!("2021/06/01/12/{name}"));

    // A big file, slowed down so the daemon can be killed mid-upload, then resumed.
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    proxy.set_put_delay(Duration::from_millis(500));
    let body = content(11, 20 * MIB);
    let staging = site.dir.path().join("big.bin");
    std::fs::write(&staging, &body).unwrap();
    std::fs::rename(&staging, site.watch.join("big.bin")).unwrap();
    touch("big.bin");
    let mut first =
        s3drop_testkit::Daemon::start_with_env(&site, s3drop(), &fc.sdk_env_via(&proxy.endpoint))
            .unwrap();
    wait_until("two parts stored", Duration::from_secs(60), || {
        fc.parts_stored(BUCKET, &dated("big.bin")) >= 2
    })
    .await;
    first.kill().unwrap();
    proxy.set_put_delay(Duration::ZERO);
    let mut daemon = start_ready(&site, &fc);
    let got = world
        .wait_for_object(&dated("big.bin"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(got == body, "the resumed object differs");
    assert_eq!(
        daemon.events("multipart_resumed").len(),
        1,
        "{}",
        daemon.log()
    );

    // A small file dated the same way.
    let staging = site.dir.path().join("small.txt");
    std::fs::write(&staging, b"small").unwrap();
    std::fs::rename(&staging, site.watch.join("small.txt")).unwrap();
    touch("small.txt");
    world
        .wait_for_object(&dated("small.txt"), ARRIVAL)
        .await
        .unwrap();
    assert!(daemon.stop().unwrap().success());

    // {name} alone maps a/x.txt and b/x.txt to one key: one goes up, the other is refused.
    site.write_config(BUCKET, "key_template = \"{name}\"")
        .unwrap();
    let mut daemon = start_ready(&site, &fc);
    for dir in ["a", "b"] {
        std::fs::create_dir_all(site.watch.join(dir)).unwrap();
        std::fs::write(site.watch.join(dir).join("x.txt"), dir.as_bytes()).unwrap();
    }
    wait_until("the second x.txt refused", ARRIVAL, || {
        daemon
            .events("upload_failed")
            .iter()
            .any(|e| e["kind"] == "key_claimed")
    })
    .await;
    let stored = world.wait_for_object(&key("x.txt"), ARRIVAL).await.unwrap();
    wait_idle(&site, &fc).await;
    assert_eq!(
        fc.object_puts(BUCKET).get(&key("x.txt")),
        Some(&1),
        "one PUT only"
    );
    assert!(stored == b"a" || stored == b"b");
    assert!(daemon.stop().unwrap().success());
}
