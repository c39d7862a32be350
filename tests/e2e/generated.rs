//! The reference model's generated sequences (`s3drop_testkit::model`, the same generator
//! and rules as the in-process search in src/model.rs) run against the real binary, the
//! real SDK and fakecloud (strict IAM, SigV4): a few cases per run keep the in-memory seam
//! honest. Producer actions run as generated; a kill is SIGKILL then a restart; SIGHUP is
//! SIGHUP. What only the in-memory store can do (its faults, lapsed sessions, lost events,
//! workers lingering at a kill point) is left out here. The bucket is unversioned: only
//! each key's last version is seen.
//! `S3DROP_E2E_MODEL_CASES=N` runs N sequences (default 8), `S3DROP_E2E_MODEL_SEED` replays.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use s3drop_testkit::model::{Action, Bucket, Folder, Model, action, apply, check, runner};
use s3drop_testkit::{FakeCloud, Site, World, setup};

use crate::common::*;

/// Keys stored over every case (a run that stores nothing proves nothing).
static STORED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What fakecloud holds under the case's prefix, read once the daemon has stopped.
struct Snapshot(BTreeMap<String, Vec<u8>>);

impl Bucket for Snapshot {
    fn keys(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    fn versions(&self, key: &str) -> Vec<Vec<u8>> {
        self.0.get(key).cloned().into_iter().collect()
    }
}

async fn snapshot(world: &World, prefix: &str) -> Snapshot {
    let mut objects = BTreeMap::new();
    for key in world.keys().await.unwrap() {
        if key.starts_with(prefix)
            && let Some(body) = world.get_object(&key).await.unwrap()
        {
            objects.insert(key, body);
        }
    }
    Snapshot(objects)
}

/// Runs one sequence on a fresh site (its own key prefix) and checks the model's rules.
async fn run_case(
    fc: &FakeCloud,
    world: &World,
    case: usize,
    actions: &[Action],
    delete: bool,
) -> Vec<String> {
    let prefix = format!("case{case}/");
    let after = if delete {
        "after_upload = \"delete\"\n"
    } else {
        ""
    };
    let extra = format!("key_prefix = \"{prefix}\"\nquiet_period_ms = 200\n{after}");
    let site = Site::new(BUCKET, &extra).unwrap();
    let config =
        s3drop::config::Config::parse(&std::fs::read_to_string(&site.config).unwrap()).unwrap();
    let excluded = |rel: &Path| config.exclude.is_excluded(rel);
    let folder = Folder::new(site.dir.path(), &site.watch);
    let mut daemon = start_ready(&site, fc);
    let mut model = Model::default();
    for action in actions {
        match *action {
            Action::Kill { .. } => {
                daemon.kill().unwrap();
                daemon = start_ready(&site, fc);
            }
            Action::Hangup => daemon.signal("-HUP").unwrap(),
            Action::Pause { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
            _ => apply(&folder, &mut model, action),
        }
    }
    // Settled: every final version stored (and, in delete mode, nothing left), or a
    // minute passed; then a SIGTERM lets what is in flight finish.
    let done = |model: &Model, stored: &Snapshot| {
        model.current.iter().all(|(relative, bytes)| {
            excluded(Path::new(relative))
                || stored.0.get(&format!("{prefix}{relative}")) == Some(bytes)
        }) && (!delete
            || s3drop_testkit::model::files_in(&site.watch)
                .iter()
                .all(|rel| excluded(rel)))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&model, &snapshot(world, &prefix).await) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Whatever it was still going to send (a stray re-send would replace a final version).
    wait_idle(&site, fc).await;
    assert!(daemon.stop().unwrap().success(), "{}", daemon.log());
    let stored = snapshot(world, &prefix).await;
    STORED.fetch_add(stored.0.len(), std::sync::atomic::Ordering::Relaxed);
    check(&model, &folder, &stored, &prefix, delete, &excluded)
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_sequences_keep_the_models_promise_against_fakecloud() {
    let (fc, world, _site) = setup(BUCKET, "").await;
    // Each case takes seconds: a short shrink, then the seed replays it.
    let (mut runner, cases, seed) =
        runner("S3DROP_E2E_MODEL_CASES", 8, "S3DROP_E2E_MODEL_SEED", 16);
    let handle = tokio::runtime::Handle::current();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let here = action().prop_filter("what the real binary and fakecloud can do", |a| {
        !matches!(
            a,
            Action::Overflow
                | Action::Fault { .. }
                | Action::SessionLapse
                | Action::Linger { .. }
                | Action::Kill { at: Some(_) }
        )
    });
    let sequences = (proptest::collection::vec(here, 2..14), any::<bool>());
    let result = tokio::task::block_in_place(|| {
        runner.run(&sequences, |(actions, delete)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let violations = handle.block_on(run_case(&fc, &world, n, &actions, delete));
            prop_assert!(violations.is_empty(), "{violations:#?}");
            Ok(())
        })
    });
    eprintln!(
        "model against fakecloud: {} sequences (with shrinking), {} keys stored, seed {seed}; \
         replay: S3DROP_E2E_MODEL_SEED={seed} S3DROP_E2E_MODEL_CASES={cases}",
        case.into_inner(),
        STORED.load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Err(e) = result {
        panic!("seed {seed}: {e}");
    }
}
