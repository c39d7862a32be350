//! The reference model of the drop folder (`s3drop_testkit::model`: actions, rules),
//! searched in process: the real intake (real inotify on a real directory), workers and
//! ledger upload to the in-memory bucket, over generated sequences of producer actions,
//! daemon events (kills, at any moment or at a named kill point, and restarts; SIGHUP;
//! lost events; workers lingering at a point) and S3 faults (error answers, lost answers,
//! sessions that lapse), shrunk by proptest to a minimal failing sequence. Once the
//! producers are done the operator heals what they can (a SIGHUP, as after fixing a
//! permission) and s3drop must settle; then the model's rules are checked, and the PUTs
//! beyond one per key counted.
//!
//! Each life of the daemon runs on its own runtime, so a kill drops every task where it
//! stands; the ledger (its committed state) is what the next life starts from.
//! `S3DROP_MODEL_CASES=N` runs N sequences (CI runs a few; `scripts/soak.sh` many),
//! `S3DROP_MODEL_TIME_PCT` scales every duration (the soak runs at 20 %).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;

use tokio::sync::Notify;

use crate::queue::Queue;
use crate::s3::memory::{Fault, Memory};
use crate::tree::Tree;
use crate::upload::tests::Rig;
use crate::watch::{DirWatcher, Intake, IntakeConfig, Probe};
use s3drop_testkit::model::{
    Action, Bucket, FAULTS, Folder, KILL_POINTS, Model, OPS, action, apply, check, runner,
};

/// At 100 %: what a file found by a scan must be left alone for, how long a closed file
/// waits, and how long each S3 request takes (so producers act while uploads are in
/// flight). Pauses in sequences scale the same way.
const SETTLE_MS: u64 = 300;
const QUIET_MS: u64 = 100;
const REQUEST_MS: u64 = 250;
/// The in-memory store's answer for the model's fault `name`.
fn fault(name: &str) -> Fault {
    match name {
        "InternalError" => Fault::INTERNAL_ERROR,
        "SlowDown" => Fault::SLOW_DOWN,
        "AccessDenied" => Fault::ACCESS_DENIED,
        "LostAnswer" => Fault::LostAnswer,
        "NoChecksum" => Fault::NoChecksum,
        other => unreachable!("the model's fault {other}"),
    }
}

/// In memory, every version the store kept.
impl Bucket for Memory {
    fn keys(&self) -> Vec<String> {
        Memory::keys(self)
    }

    fn versions(&self, key: &str) -> Vec<Vec<u8>> {
        Memory::versions(self, key)
    }
}

/// `ms` at 100 %, scaled by `S3DROP_MODEL_TIME_PCT`.
fn scaled(ms: u64) -> Duration {
    static PCT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let pct = *PCT.get_or_init(|| {
        std::env::var("S3DROP_MODEL_TIME_PCT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(100)
            .clamp(1, 1000)
    });
    Duration::from_millis(ms * pct / 100)
}

/// Waits until `done` holds; false after `limit` (real time).
async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// How long a daemon may take to settle before the case fails.
const LIMIT: Duration = Duration::from_secs(30);

/// PUTs beyond one per stored key, over every case run (a file closed several times is
/// legitimately sent again; a steady rise means a re-upload storm).
static EXTRA_PUTS: AtomicUsize = AtomicUsize::new(0);
static CASES_RUN: AtomicUsize = AtomicUsize::new(0);
static KEYS_STORED: AtomicUsize = AtomicUsize::new(0);
static KILLS: AtomicUsize = AtomicUsize::new(0);
/// PUTs beyond one per key in sequences with at least one kill.
static EXTRA_PUTS_KILLED: AtomicUsize = AtomicUsize::new(0);
/// Kills that happened at their kill point (the others: the point was not reached).
static KILLS_AT_POINT: AtomicUsize = AtomicUsize::new(0);

/// The threads of a daemon's life are named so that an armed kill point strikes only them.
const DAEMON_THREAD: &str = "model-daemon";
/// What a kill point panics with (the panic hook stays silent about it).
const KILL: &str = "model: killed at a kill point";
static KILLED: AtomicBool = AtomicBool::new(false);

/// Arms `point`: the first daemon thread to reach it dies there, and so does any after it
/// (the process is being killed). Without the `failpoints` feature there are no points.
fn arm(point: &'static str) {
    KILLED.store(false, Ordering::SeqCst);
    #[cfg(feature = "failpoints")]
    fail::cfg_callback(point, || {
        if std::thread::current().name() == Some(DAEMON_THREAD) {
            KILLED.store(true, Ordering::SeqCst);
            std::panic::panic_any(KILL);
        }
    })
    .unwrap();
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
}

/// Kill points are process-wide: model tests sharing a process (`cargo test`, not nextest)
/// take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Makes every worker reaching `point` wait there a while (a slow disk, a busy machine).
fn linger(point: &'static str) {
    #[cfg(feature = "failpoints")]
    fail::cfg(point, &format!("sleep({})", scaled(REQUEST_MS).as_millis())).unwrap();
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
}

fn disarm(point: &'static str) {
    #[cfg(feature = "failpoints")]
    fail::remove(point);
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
}

/// One life of the daemon: its own runtime (intake, workers, their timers), so that a
/// kill drops every task where it stands.
struct Life {
    rt: tokio::runtime::Runtime,
    rescan: Arc<Notify>,
    lost: Arc<Notify>,
    probe: Arc<std::sync::Mutex<Probe>>,
}

impl Life {
    /// Starts intake and two workers over the rig's tree, ledger and bucket, with a new
    /// queue; returns once the startup scan has queued the backlog.
    async fn start(rig: &mut Rig, delete: bool) -> Life {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(DAEMON_THREAD)
            .enable_all()
            .build()
            .unwrap();
        rig.queue = Arc::new(Queue::new(&rig.watch));
        let (life, is_ready) = {
            let _inside = rt.enter();
            rig.start(2);
            let tree = Arc::new(Tree::open(&rig.watch).unwrap());
            let watcher = DirWatcher::start(tree.clone()).unwrap();
            let lost = watcher.lost.clone();
            let intake = Intake::new(
                IntakeConfig {
                    tree,
                    exclude: rig.config.exclude.clone(),
                    settle: scaled(SETTLE_MS),
                    quiet_period: scaled(QUIET_MS),
                    rescan_interval: Duration::from_secs(3600),
                    skip_recorded: !delete,
                },
                watcher,
                rig.queue.clone(),
                rig.ledger.clone(),
            );
            let probe = intake.probe.clone();
            let rescan = Arc::new(Notify::new());
            let (ready, is_ready) = tokio::sync::oneshot::channel();
            rt.spawn(intake.run(rescan.clone(), ready, rig.cx.cancel.clone()));
            let life = Life {
                rt,
                rescan,
                lost,
                probe,
            };
            (life, is_ready)
        };
        is_ready.await.unwrap();
        life
    }

    fn probe(&self) -> Probe {
        self.probe.lock().unwrap().clone()
    }

    /// As SIGHUP does.
    fn hangup(&self, rig: &Rig) {
        rig.cx.hangups.fetch_add(1, Ordering::Relaxed);
        self.rescan.notify_one();
        rig.cx.retry_now.notify_waiters();
    }

    /// Kills the daemon: every task is dropped where it stands (work already handed to a
    /// blocking thread, such as a ledger commit, still completes, as it may in a crash).
    fn kill(self) {
        self.rt.shutdown_background();
    }

    /// Waits until intake has handled every change made so far (a barrier: an excluded
    /// name created and removed, the producers' last event) and nothing is pending: no file being
    /// written, quiet or settling, none queued, in flight or waiting for a retry. With
    /// `heal`, a SIGHUP every so often, as an operator would send after fixing a cause.
    async fn settle(&self, rig: &Rig, barrier: usize, heal: bool) -> Result<(), String> {
        let mark = rig.watch.join(format!(".model-barrier-{barrier}"));
        std::fs::write(&mark, b"").unwrap();
        std::fs::remove_file(&mark).unwrap();
        let seen = until(LIMIT, || self.probe().gone.contains(&mark)).await;
        if !seen {
            return Err(format!("intake never saw the barrier {}", mark.display()));
        }
        let mut last_hangup = std::time::Instant::now();
        let idle = until(LIMIT, || {
            if heal && last_hangup.elapsed() > scaled(QUIET_MS * 2) {
                self.hangup(rig);
                last_hangup = std::time::Instant::now();
            }
            self.probe().waiting == 0 && rig.queue.oldest_pending().is_none()
        })
        .await;
        if !idle {
            return Err(format!(
                "never settled: intake waits on {} files, the oldest pending is {:?}",
                self.probe().waiting,
                rig.queue.oldest_pending()
            ));
        }
        Ok(())
    }
}

/// Runs one sequence (with `after_upload = "delete"` if `delete`) and checks the model's
/// rules; the violations found.
async fn run_case(actions: &[Action], delete: bool) -> Vec<String> {
    let mut rig = Rig::new(if delete {
        "after_upload = \"delete\""
    } else {
        ""
    });
    let folder = Folder::new(rig.dir.path(), &rig.watch);
    rig.store.set_delay(scaled(REQUEST_MS));
    let mut life = Life::start(&mut rig, delete).await;
    let mut model = Model::default();
    for action in actions {
        match *action {
            Action::Kill { at } => {
                if let Some(point) = at.map(|i| KILL_POINTS[i]) {
                    arm(point);
                    until(scaled(SETTLE_MS * 2), || KILLED.load(Ordering::SeqCst)).await;
                    if KILLED.load(Ordering::SeqCst) {
                        KILLS_AT_POINT.fetch_add(1, Ordering::Relaxed);
                    }
                    life.kill();
                    disarm(point);
                } else {
                    life.kill();
                }
                KILLS.fetch_add(1, Ordering::Relaxed);
                life = Life::start(&mut rig, delete).await;
            }
            Action::Hangup => life.hangup(&rig),
            Action::Overflow => life.lost.notify_one(),
            Action::Fault { op, fault: f } => rig.store.fail_next(OPS[op], fault(FAULTS[f])),
            Action::SessionLapse => rig.lapse_sessions(),
            Action::Linger { at } => linger(KILL_POINTS[at]),
            Action::Pause { ms } => tokio::time::sleep(scaled(ms)).await,
            _ => apply(&folder, &mut model, action),
        }
    }
    let settled = life.settle(&rig, 0, true).await;
    rig.stop();
    life.kill();
    for point in KILL_POINTS {
        disarm(point);
    }

    let excluded = |rel: &Path| rig.config.exclude.is_excluded(rel);
    let mut violations = check(&model, &folder, &rig.store, "p/", delete, &excluded);
    if let Err(e) = settled {
        violations.insert(0, e);
    }
    let keys = rig.store.keys();
    let versions: usize = keys.iter().map(|k| rig.store.versions(k).len()).sum();
    EXTRA_PUTS.fetch_add(versions - keys.len(), Ordering::Relaxed);
    if actions.iter().any(|a| matches!(a, Action::Kill { .. })) {
        EXTRA_PUTS_KILLED.fetch_add(versions - keys.len(), Ordering::Relaxed);
    }
    CASES_RUN.fetch_add(1, Ordering::Relaxed);
    KEYS_STORED.fetch_add(keys.len(), Ordering::Relaxed);
    violations
}

/// A kill point's panic is the kill, not a failure: nothing to print.
fn quiet_kills() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&KILL) {
            previous(info);
        }
    }));
}

#[test]
fn generated_producer_sequences_keep_the_models_promise() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A run is replayed by its seed (printed whether it passes or not).
    let (mut runner, cases, seed) = runner("S3DROP_MODEL_CASES", 32, "S3DROP_MODEL_SEED", 200);
    quiet_kills();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cases_of = (proptest::collection::vec(action(), 1..14), any::<bool>());
    let result = runner.run(&cases_of, |(actions, delete)| {
        let violations = rt.block_on(run_case(&actions, delete));
        prop_assert!(violations.is_empty(), "{violations:#?}");
        Ok(())
    });
    let load = |n: &AtomicUsize| n.load(Ordering::Relaxed);
    let (run, extra, stored) = (load(&CASES_RUN), load(&EXTRA_PUTS), load(&KEYS_STORED));
    eprintln!(
        "model: {run} sequences run (with shrinking), seed {seed}, {stored} keys stored, \
         {extra} PUTs beyond one per key ({:.2} per sequence); {} kills ({} at a kill point), \
         {} PUTs beyond one per key in sequences with a kill; \
         replay: S3DROP_MODEL_SEED={seed} S3DROP_MODEL_CASES={cases}",
        extra as f64 / run.max(1) as f64,
        load(&KILLS),
        load(&KILLS_AT_POINT),
        load(&EXTRA_PUTS_KILLED),
    );
    if let Err(e) = result {
        panic!("seed {seed}: {e}");
    }
}

/// Sequences the search needs many cases to happen upon, and those it found, run every
/// time: each holds open a window that a broken guard would lose a file in.
#[test]
fn sequences_that_hold_a_narrow_window_open() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    quiet_kills();
    use Action::*;
    // A file rewritten while a worker lingers at kill point `at`, in delete mode: 0,
    // between S3's answer and the record (the record is of the old version); 1, while its
    // upload is being recorded (the new version must not be deleted: it is sent in turn).
    let rewritten_while_lingering = |at| {
        vec![
            Linger { at },
            Write {
                file: 0,
                len: 100,
                closes: 1,
            },
            Pause { ms: 420 },
            Append { file: 0, len: 10 },
        ]
    };
    let (at_answer, at_record) = (rewritten_while_lingering(0), rewritten_while_lingering(1));
    let sequences: [(&[Action], bool); 4] = [
        (&at_record, true),
        // Found by the soak (at 20 % time): killed once S3 had the file, restarted, the file
        // rewritten in place while the restart's upload read it, then its directory moved
        // away. The torn read was stored, and its re-send never came (the path was gone):
        // now a file that changed while it was read is not sent at all.
        (
            &[
                Write {
                    file: 3,
                    len: 0,
                    closes: 1,
                },
                Kill { at: Some(0) },
                Write {
                    file: 3,
                    len: 1,
                    closes: 1,
                },
                SwapDirForLink { dir: 0 },
            ],
            false,
        ),
        // Found by the soak: a file of the tree moved out through the swapped link is not
        // "bytes from outside" (the model's own false alarm, kept as a case).
        (
            &[
                Write {
                    file: 6,
                    len: 0,
                    closes: 1,
                },
                Write {
                    file: 0,
                    len: 0,
                    closes: 1,
                },
                SwapDirForLink { dir: 0 },
                Pause { ms: 107 },
                RenameWithin { from: 0, to: 3 },
            ],
            false,
        ),
        (&at_answer, true),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (actions, delete) in sequences {
        let violations = rt.block_on(run_case(actions, delete));
        assert!(violations.is_empty(), "{actions:?}: {violations:#?}");
    }
}
