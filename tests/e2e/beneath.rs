//! Nothing outside the drop directory, end to end: a hostile producer (another uid where the
//! kernel allows, as the package's `s3drop` group members are) swaps directories for
//! symlinks at the moments that used to send s3drop elsewhere: during the quiet period
//! (read), right after a directory's creation (scan), during the upload (delete and move),
//! `watch_dir` itself, and a link planted in `move_to`. Many tries each, with deliberately
//! wide windows. Whatever they do, no byte from outside reaches S3, nothing outside is
//! unlinked or moved, and the files inside still arrive.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use s3drop_testkit::proxy::FaultProxy;
use s3drop_testkit::{Daemon, FakeCloud, Site, World, object_key as key, setup};

use crate::common::*;

/// What only s3drop (root here, as in containers) may read: a tree no producer can.
const SECRET: &[u8] = b"SECRET: only root may read this";

/// The uid the producer runs as when the test runs as root (`nobody`).
const PRODUCER_UID: u32 = 65534;

struct Arena {
    /// A root-only (0700) directory holding `secret` and `tree/a/secret`.
    private: PathBuf,
    /// A directory the producer owns, outside the drop directory, on its filesystem.
    elsewhere: PathBuf,
}

/// Opens the site to the producer (watch_dir writable, its parents traversable) and makes
/// the private and the producer's outside directories next to it.
fn arena(site: &Site) -> Arena {
    let chmod = |p: &Path, mode| std::fs::set_permissions(p, PermissionsExt::from_mode(mode));
    chmod(site.dir.path(), 0o755).unwrap();
    chmod(&site.watch, 0o1777).unwrap();
    let private = site.dir.path().join("private");
    std::fs::create_dir_all(private.join("tree/a")).unwrap();
    std::fs::write(private.join("secret"), SECRET).unwrap();
    std::fs::write(private.join("x"), SECRET).unwrap();
    std::fs::write(private.join("tree/a/secret"), SECRET).unwrap();
    chmod(&private, 0o700).unwrap();
    let elsewhere = site.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    chmod(&elsewhere, 0o1777).unwrap();
    Arena { private, elsewhere }
}

/// Runs `script` with `sh -e` in watch_dir as the producer: another uid when root.
fn produce(site: &Site, script: &str) {
    let mut cmd = if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={PRODUCER_UID}"),
            &format!("--regid={PRODUCER_UID}"),
            "--clear-groups",
            "sh",
        ]);
        cmd
    } else {
        Command::new("sh")
    };
    let out = cmd
        .args(["-ec", script])
        .current_dir(&site.watch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No object in the bucket holds a byte of the private files.
async fn nothing_secret_stored(world: &World) {
    for k in world.keys().await.unwrap() {
        let body = world.get_object(&k).await.unwrap().unwrap_or_default();
        assert!(
            !body.windows(8).any(|w| w == &SECRET[..8]),
            "{k}: a private file reached S3"
        );
    }
}

fn private_intact(arena: &Arena) {
    for p in ["secret", "x", "tree/a/secret"] {
        assert_eq!(std::fs::read(arena.private.join(p)).unwrap(), SECRET, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_swapped_for_a_link_during_the_quiet_period_is_not_read() {
    // A wide window: the file waits a whole second before it is taken.
    let (fc, world, site) = setup(BUCKET, "quiet_period_ms = 1000").await;
    let arena = arena(&site);
    let mut daemon = start_ready(&site, &fc);
    const TRIES: usize = 40;
    // Each try: write p/x (closed: the quiet period starts), then at once rename p away and
    // put a link to the private directory (which holds an `x`) in its place.
    produce(
        &site,
        &format!(
            "for i in $(seq 1 {TRIES}); do mkdir p$i; echo inside $i > p$i/x; \
             mv p$i p$i.old; ln -s {} p$i; done",
            arena.private.display()
        ),
    );
    // The renamed directories arrive whole, with what was really written inside.
    for i in 1..=TRIES {
        let stored = world
            .wait_for_object(&key(&format!("p{i}.old/x")), ARRIVAL)
            .await
            .unwrap();
        assert_eq!(stored, format!("inside {i}\n").as_bytes());
    }
    wait_idle(&site, &fc).await;
    let keys = world.keys().await.unwrap();
    assert!(
        !keys.iter().any(|k| k.contains("/p") && !k.contains(".old")),
        "a name reached through a link was uploaded: {keys:?}"
    );
    nothing_secret_stored(&world).await;
    private_intact(&arena);
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_directory_swapped_for_a_link_is_not_scanned() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let arena = arena(&site);
    let mut daemon = start_ready(&site, &fc);
    const TRIES: usize = 100;
    // Each try: a new directory (its creation event asks for a scan of it), at once
    // renamed away and replaced by a link to the private tree.
    produce(
        &site,
        &format!(
            "for i in $(seq 1 {TRIES}); do mkdir n$i; mv n$i n$i.old; ln -s {} n$i; done",
            arena.private.join("tree").display()
        ),
    );
    // A file dropped after them all is stored: the intake has taken every event before it.
    drop_file(&world, &site, "canary.txt", b"after the swaps").await;
    // SIGHUP: a full scan walks the tree with all the links in it.
    daemon.signal("-HUP").unwrap();
    drop_file(&world, &site, "canary2.txt", b"after the rescan").await;
    let keys = world.keys().await.unwrap();
    assert_eq!(
        keys,
        vec![key("canary.txt"), key("canary2.txt")],
        "only the canaries"
    );
    nothing_secret_stored(&world).await;
    private_intact(&arena);
    assert!(daemon.stop().unwrap().success());
}

/// Delete or move mode; each of `TRIES` files is held in its PUT while the producer moves
/// its directory out of the drop directory and links it back in.
async fn swap_during_the_upload(move_mode: bool) {
    const TRIES: usize = 12;
    let fc = FakeCloud::start().unwrap();
    let world = World::provision(&fc, BUCKET).await.unwrap();
    let proxy = FaultProxy::start(&fc.endpoint, 0).await.unwrap();
    let site = Site::new(BUCKET, "").unwrap();
    let done = site.dir.path().join("done");
    std::fs::create_dir(&done).unwrap();
    let arena = arena(&site);
    let action = if move_mode {
        format!("after_upload = \"move\"\nmove_to = {done:?}")
    } else {
        "after_upload = \"delete\"".to_string()
    };
    // Enough workers that every file is opened before the swap.
    site.write_config(BUCKET, &format!("{action}\nconcurrency = {}", TRIES + 4))
        .unwrap();
    let mut daemon =
        Daemon::start_with_env(&site, s3drop(), &fc.sdk_env_via(&proxy.endpoint)).unwrap();
    daemon.wait_until_ready(ARRIVAL).unwrap();
    proxy.set_put_delay(Duration::from_secs(3));
    let before = proxy.stats().s3_puts;
    produce(
        &site,
        &format!("for i in $(seq 1 {TRIES}); do mkdir d$i; echo inside $i > d$i/x; done"),
    );
    // Once every PUT is under way (held 3 s by the proxy), move each directory out and link
    // it back.
    let deadline = std::time::Instant::now() + ARRIVAL;
    while proxy.stats().s3_puts < before + TRIES as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every PUT under way: {:?} (before: {before})\n{}",
            proxy.stats(),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce(
        &site,
        &format!(
            "for i in $(seq 1 {TRIES}); do mv d$i {e}/d$i; ln -s {e}/d$i d$i; done",
            e = arena.elsewhere.display()
        ),
    );
    // The objects are stored (they were read inside the drop directory, before the swap)…
    let mut stored = 0;
    for i in 1..=TRIES {
        if world
            .wait_for_object(&key(&format!("d{i}/x")), ARRIVAL)
            .await
            .is_ok()
        {
            stored += 1;
        }
    }
    assert_eq!(stored, TRIES, "every PUT was under way when the swap came");
    proxy.set_put_delay(Duration::ZERO);
    // …and a file dropped after them shows the daemon went on: its action was done.
    drop_file(&world, &site, "canary.txt", b"after").await;
    wait_until("the canary's after-upload action", ARRIVAL, || {
        !site.watch.join("canary.txt").exists()
    })
    .await;
    // Nothing outside was deleted or moved.
    for i in 1..=TRIES {
        let outside = arena.elsewhere.join(format!("d{i}/x"));
        assert_eq!(
            std::fs::read(&outside).unwrap(),
            format!("inside {i}\n").as_bytes(),
            "{action}: {} was deleted or moved",
            outside.display()
        );
    }
    let moved: Vec<_> = std::fs::read_dir(&done)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let expect_moved: &[&str] = if move_mode { &["canary.txt"] } else { &[] };
    assert_eq!(moved, expect_moved, "only the canary was moved");
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_mode_never_deletes_outside_after_a_swap_during_the_upload() {
    swap_during_the_upload(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn move_mode_never_moves_from_outside_after_a_swap_during_the_upload() {
    swap_during_the_upload(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_planted_in_move_to_is_not_entered() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let done = site.dir.path().join("done");
    std::fs::create_dir(&done).unwrap();
    let arena = arena(&site);
    std::fs::set_permissions(&done, PermissionsExt::from_mode(0o1777)).unwrap();
    site.write_config(
        BUCKET,
        &format!("after_upload = \"move\"\nmove_to = {done:?}"),
    )
    .unwrap();
    // The producer may write move_to: it plants `sub` there as a link to the private dir.
    produce(
        &site,
        &format!("ln -s {} {}/sub", arena.private.display(), done.display()),
    );
    let mut daemon = start_ready(&site, &fc);
    produce(&site, "mkdir sub && echo planted > sub/f");
    world.wait_for_object(&key("sub/f"), ARRIVAL).await.unwrap();
    drop_file(&world, &site, "canary.txt", b"after").await;
    wait_until("the canary moved", ARRIVAL, || {
        done.join("canary.txt").exists()
    })
    .await;
    // sub/f stays where it was: its destination's directory is a link.
    assert!(site.watch.join("sub/f").exists(), "sub/f was moved");
    let mut private: Vec<_> = std::fs::read_dir(&arena.private)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    private.sort();
    assert_eq!(
        private,
        ["secret", "tree", "x"],
        "nothing planted in private"
    );
    assert!(daemon.stop().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_dir_replaced_by_a_link_is_not_scanned_until_a_directory_is_back() {
    let (fc, world, site) = setup(BUCKET, "").await;
    let arena = arena(&site);
    let mut daemon = start_ready(&site, &fc);
    drop_file(&world, &site, "first.txt", b"first").await;
    // watch_dir's parent is the administrator's; here the swap is made as root.
    let aside = site.dir.path().join("watch.aside");
    std::fs::rename(&site.watch, &aside).unwrap();
    std::os::unix::fs::symlink(arena.private.join("tree"), &site.watch).unwrap();
    // The root check (every 2 s) sees the link; a SIGHUP's full scan is then refused.
    daemon
        .wait_for_event("watch_dir_replaced", &[], ARRIVAL)
        .unwrap();
    daemon.signal("-HUP").unwrap();
    daemon
        .wait_for_event("scan_skipped", &[("reason", "sighup")], ARRIVAL)
        .unwrap();
    wait_idle(&site, &fc).await;
    assert_eq!(world.keys().await.unwrap(), vec![key("first.txt")]);
    // A directory back in its place is watched and scanned again.
    std::fs::remove_file(&site.watch).unwrap();
    std::fs::rename(&aside, &site.watch).unwrap();
    std::fs::write(site.watch.join("back.txt"), b"back").unwrap();
    world
        .wait_for_object(&key("back.txt"), ARRIVAL)
        .await
        .unwrap();
    nothing_secret_stored(&world).await;
    private_intact(&arena);
    assert!(daemon.stop().unwrap().success());
}
