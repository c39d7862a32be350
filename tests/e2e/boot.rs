//! s3drop under a real systemd booted as PID 1 in namespaces, installed from its .deb:
//! runs scripts/boot-test.sh (see there for every assertion) against a local AWS this test
//! provisions, with the package built from this run's binary.

use std::process::Command;

use s3drop_testkit::{FakeCloud, World, world_env};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_real_systemd_installs_the_deb_and_runs_s3drop_as_operators_rely_on() {
    if !is_root() {
        eprintln!("SKIPPED: booting systemd in namespaces needs root");
        return;
    }
    let fc = FakeCloud::start().unwrap();
    World::provision(&fc, BUCKET).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("world.env");
    std::fs::write(&env_file, world_env(&fc, BUCKET)).unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let package = debug_deb(&dir.path().join("deb"));
    let run = tokio::task::spawn_blocking(move || {
        Command::new(format!("{repo}/scripts/boot-test.sh"))
            .arg(&package)
            .env("S3DROP_BOOT_WORLD", &env_file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("boot test: all passed"), "{stdout}");
}
