//! A reference model of the drop folder, checked against the real intake, workers and
//! ledger (in process, on a real directory, with real inotify) uploading to the in-memory
//! bucket, over generated sequences of producer actions, daemon events (kills, at any
//! moment or at a named kill point, and restarts; SIGHUP; lost events) and S3 faults
//! (error answers, lost answers, sessions that lapse), shrunk by proptest to a minimal
//! failing sequence.
//!
//! The model's rules: what each path holds when the producers are done is stored as the
//! last version of its key (in keep mode the file is still there; in delete mode s3drop
//! deleted it, only after that); the last version of every key is bytes its path held at
//! some moment (nothing else stays stored); excluded names are never stored; nothing
//! written through a link to a directory outside the tree is ever stored, and a file
//! there is untouched. Earlier versions may be a file read half-rewritten (rewritten in
//! place while its upload streamed: s3drop saw the change and sent it again); they count
//! as PUTs beyond one per key. Once the producers are done the operator heals what they
//! can (a SIGHUP, as after fixing a permission) and s3drop must settle.
//!
//! Each life of the daemon runs on its own runtime, so a kill drops every task where it
//! stands; the ledger (its committed state) is what the next life starts from.
//! `S3DROP_MODEL_CASES=N` runs N sequences (CI runs a few; `scripts/soak.sh` many),
//! `S3DROP_MODEL_TIME_PCT` scales every duration (the soak runs at 20 %).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

use tokio::sync::Notify;

use crate::keys::encode_path;
use crate::queue::Queue;
use crate::s3::memory::Fault;
use crate::tree::Tree;
use crate::upload::tests::Rig;
use crate::watch::{DirWatcher, Intake, IntakeConfig, Probe};

/// The paths producers use: nested, excluded (hidden, `.tmp`), an odd name, and `d/`,
/// which a hostile producer may swap for a link to a directory outside the tree.
const FILES: [&str; 9] = [
    "a.txt",
    "b.bin",
    "d/c.txt",
    "d/e/f.csv",
    ".hidden",
    "g.tmp",
    "d/odd\nname",
    "new/deep/n.txt",
    "d/c2.txt",
];
/// At 100 %: what a file found by a scan must be left alone for, how long a closed file
/// waits, and how long each S3 request takes (so producers act while uploads are in
/// flight). Pauses in sequences scale the same way.
const SETTLE_MS: u64 = 300;
const QUIET_MS: u64 = 100;
const REQUEST_MS: u64 = 250;
const SECRET: &[u8] = b"OUTSIDE: only s3drop may read this";

#[derive(Debug, Clone)]
enum Action {
    /// Create or overwrite in place, written in `closes` pieces with a close after each.
    Write {
        file: usize,
        len: usize,
        closes: u8,
    },
    Append {
        file: usize,
        len: usize,
    },
    Truncate {
        file: usize,
        len: usize,
    },
    /// Written outside the tree, then renamed into place (rsync, atomic writers).
    RenameIn {
        file: usize,
        len: usize,
    },
    RenameWithin {
        from: usize,
        to: usize,
    },
    /// Written outside the tree, then hard-linked into place.
    HardLinkIn {
        file: usize,
        len: usize,
    },
    Delete {
        file: usize,
    },
    Touch {
        file: usize,
    },
    /// `d/` renamed to `d.old/` and replaced by a link to a directory outside the tree.
    SwapDirForLink,
    Pause {
        ms: u64,
    },
    /// The daemon is killed, at once or (with the `failpoints` feature) when a worker
    /// reaches `KILL_POINTS[at]` (or after a while if none does), and started again.
    Kill {
        at: Option<usize>,
    },
    /// SIGHUP: a full scan, and every waiting retry at once.
    Hangup,
    /// Events were lost (the kernel's queue overflowed).
    Overflow,
    /// The next request of `OPS[op]` meets `FAULTS[fault]`.
    Fault {
        op: usize,
        fault: usize,
    },
    /// Every session minted so far lapses (ExpiredToken).
    SessionLapse,
    /// From now on, a worker lingers at `KILL_POINTS[at]` (with the `failpoints` feature),
    /// holding open the window between two steps of a file's fate for producers.
    Linger {
        at: usize,
    },
}

/// Where a kill is most telling: S3 confirmed but the ledger does not know; the ledger
/// knows but the file is still there; the file deleted but the ledger still has it.
const KILL_POINTS: [&str; 3] = ["upload::confirmed", "upload::recorded", "upload::acted"];
const OPS: [&str; 1] = ["PutObject"];
const FAULTS: [Fault; 5] = [
    Fault::INTERNAL_ERROR,
    Fault::SLOW_DOWN,
    Fault::ACCESS_DENIED,
    Fault::LostAnswer,
    Fault::NoChecksum,
];

fn action() -> impl Strategy<Value = Action> {
    let file = 0..FILES.len();
    prop_oneof![
        4 => (file.clone(), 0..3000usize, 1..4u8)
            .prop_map(|(file, len, closes)| Action::Write { file, len, closes }),
        2 => (file.clone(), 1..2000usize).prop_map(|(file, len)| Action::Append { file, len }),
        1 => (file.clone(), 0..100usize).prop_map(|(file, len)| Action::Truncate { file, len }),
        2 => (file.clone(), 0..3000usize).prop_map(|(file, len)| Action::RenameIn { file, len }),
        1 => (file.clone(), file.clone()).prop_map(|(from, to)| Action::RenameWithin { from, to }),
        1 => (file.clone(), 1..500usize).prop_map(|(file, len)| Action::HardLinkIn { file, len }),
        1 => file.clone().prop_map(|file| Action::Delete { file }),
        1 => file.clone().prop_map(|file| Action::Touch { file }),
        1 => Just(Action::SwapDirForLink),
        2 => (0..400u64).prop_map(|ms| Action::Pause { ms }),
        1 => proptest::option::of(0..KILL_POINTS.len()).prop_map(|at| Action::Kill { at }),
        1 => Just(Action::Hangup),
        1 => Just(Action::Overflow),
        1 => (0..OPS.len(), 0..FAULTS.len()).prop_map(|(op, fault)| Action::Fault { op, fault }),
        1 => Just(Action::SessionLapse),
        3 => (0..KILL_POINTS.len()).prop_map(|at| Action::Linger { at }),
    ]
}

/// What the producers did, as the model sees it.
#[derive(Default)]
struct Model {
    /// Every content each key's path had after an action (what may be stored under it).
    history: HashMap<String, HashSet<Vec<u8>>>,
    /// Contents written through the link, outside the tree: never to be stored.
    outside: HashSet<Vec<u8>>,
    /// What each path holds now, as the producers left it (by key of the path).
    current: HashMap<String, Vec<u8>>,
    /// `d/` is a link to the outside directory.
    swapped: bool,
    written: u64,
}

impl Model {
    /// Unique bytes for the next write.
    fn bytes(&mut self, file: &str, len: usize) -> Vec<u8> {
        self.written += 1;
        let mut b = format!("{file}#{}:", self.written).into_bytes();
        b.extend((0..len).map(|i| (i as u64 * 31 + self.written) as u8));
        b
    }

    fn through_link(&self, file: &str) -> bool {
        self.swapped && file.starts_with("d/")
    }

    /// `path` (relative) has held `content` (not necessarily still).
    fn held(&mut self, file: &str, content: Vec<u8>) {
        if self.through_link(file) {
            self.outside.insert(content);
            return;
        }
        self.history
            .entry(key_of(file))
            .or_default()
            .insert(content);
    }

    /// `path` (relative) holds `content` now.
    fn holds(&mut self, file: &str, content: Vec<u8>) {
        if !self.through_link(file) {
            self.current.insert(key_of(file), content.clone());
        }
        self.held(file, content);
    }

    fn gone(&mut self, file: &str) {
        if !self.through_link(file) {
            self.current.remove(&key_of(file));
        }
    }
}

/// The key part of a relative path.
fn key_of(file: &str) -> String {
    encode_path(Path::new(std::ffi::OsStr::from_bytes(file.as_bytes()))).unwrap()
}

fn write_in_pieces(path: &Path, bytes: &[u8], pieces: u8) -> std::io::Result<()> {
    let step = bytes.len().div_ceil(pieces.max(1) as usize).max(1);
    let mut f = std::fs::File::create(path)?;
    for (i, chunk) in bytes.chunks(step).enumerate() {
        if i > 0 {
            f = std::fs::OpenOptions::new().append(true).open(path)?;
        }
        f.write_all(chunk)?;
        drop(f);
        f = std::fs::OpenOptions::new().append(true).open(path)?;
    }
    Ok(())
}

/// Carries out `action` on the real tree, telling `model`. Failures of the producer's
/// own operations (a file that is not there to rename) are ignored, as they change
/// nothing.
async fn apply(rig: &Rig, model: &mut Model, action: &Action) {
    let staging = rig.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let at = |file: usize| rig.watch.join(FILES[file]);
    let parent = |p: &Path| {
        let _ = std::fs::create_dir_all(p.parent().unwrap());
    };
    let current = |p: &Path| std::fs::read(p).ok();
    match *action {
        Action::Write { file, len, closes } => {
            let (name, path) = (FILES[file], at(file));
            parent(&path);
            let bytes = model.bytes(name, len);
            // Every prefix a close exposes may be taken.
            let step = bytes.len().div_ceil(closes as usize).max(1);
            if write_in_pieces(&path, &bytes, closes).is_ok() {
                for end in (step..bytes.len()).step_by(step) {
                    model.held(name, bytes[..end].to_vec());
                }
                model.held(name, Vec::new());
                model.holds(name, bytes);
            }
        }
        Action::Append { file, len } => {
            let (name, path) = (FILES[file], at(file));
            let more = model.bytes(name, len);
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&path)
                && f.write_all(&more).is_ok()
            {
                drop(f);
                if let Some(now) = current(&path) {
                    model.holds(name, now);
                }
            }
        }
        Action::Truncate { file, len } => {
            let (name, path) = (FILES[file], at(file));
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path)
                && f.set_len(len as u64).is_ok()
            {
                drop(f);
                if let Some(now) = current(&path) {
                    model.holds(name, now);
                }
            }
        }
        Action::RenameIn { file, len } => {
            let (name, path) = (FILES[file], at(file));
            let bytes = model.bytes(name, len);
            let temp = staging.join(format!("in-{}", model.written));
            std::fs::write(&temp, &bytes).unwrap();
            parent(&path);
            if std::fs::rename(&temp, &path).is_ok() {
                model.holds(name, bytes);
            }
        }
        Action::RenameWithin { from, to } => {
            let (from_path, to_path) = (at(from), at(to));
            let is_file = std::fs::symlink_metadata(&from_path).is_ok_and(|m| m.is_file());
            if from != to
                && is_file
                && let Some(bytes) = current(&from_path)
            {
                parent(&to_path);
                if std::fs::rename(&from_path, &to_path).is_ok() {
                    model.gone(FILES[from]);
                    if model.through_link(FILES[from]) && !model.through_link(FILES[to]) {
                        // The producer moved a file from outside into the tree: from now
                        // on it is theirs to upload.
                        model.outside.remove(&bytes);
                    }
                    model.holds(FILES[to], bytes);
                }
            }
        }
        Action::HardLinkIn { file, len } => {
            let (name, path) = (FILES[file], at(file));
            let bytes = model.bytes(name, len);
            let source = staging.join(format!("link-{}", model.written));
            std::fs::write(&source, &bytes).unwrap();
            parent(&path);
            if !path.exists() && std::fs::hard_link(&source, &path).is_ok() {
                model.holds(name, bytes);
            }
        }
        Action::Delete { file } => {
            if std::fs::remove_file(at(file)).is_ok() {
                model.gone(FILES[file]);
            }
        }
        Action::Touch { file } => {
            if let Ok(f) = std::fs::File::options().write(true).open(at(file)) {
                let _ = f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5));
            }
        }
        Action::SwapDirForLink => {
            let d = rig.watch.join("d");
            let is_dir = std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir());
            if !model.swapped && is_dir {
                let old = rig.watch.join("d.old");
                if std::fs::rename(&d, &old).is_ok() {
                    // What d/ held is now under d.old/.
                    for (key, contents) in model.history.clone() {
                        if let Some(rest) = key.strip_prefix("d/") {
                            let moved = format!("d.old/{rest}");
                            model.history.entry(moved).or_default().extend(contents);
                        }
                    }
                    // Files s3drop deleted (delete mode) before the rename stay stored
                    // under their old key; those still there moved with d/.
                    for (key, content) in model.current.clone() {
                        if let Some(rest) = key.strip_prefix("d/")
                            && let Some(file) = FILES.iter().find(|f| key_of(f) == key)
                            && old.join(&file[2..]).exists()
                        {
                            model.current.remove(&key);
                            model.current.insert(format!("d.old/{rest}"), content);
                        }
                    }
                    std::os::unix::fs::symlink(rig.dir.path().join("outside"), &d).unwrap();
                    model.swapped = true;
                }
            }
        }
        Action::Pause { ms } => tokio::time::sleep(scaled(ms)).await,
        // The daemon's and S3's: carried out by run_case.
        Action::Kill { .. }
        | Action::Hangup
        | Action::Overflow
        | Action::Fault { .. }
        | Action::SessionLapse
        | Action::Linger { .. } => {}
    }
}

/// The regular files in the tree (never through a link), relative.
fn files_in(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let rel = dir.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(rel),
                Ok(t) if t.is_file() => out.push(rel),
                _ => {}
            }
        }
    }
    out
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
        rig.queue = Arc::new(Queue::new());
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
    let outside = rig.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // A file producers never write: s3drop must neither store nor touch it.
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
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
            Action::Fault { op, fault } => rig.store.fail_next(OPS[op], FAULTS[fault].clone()),
            Action::SessionLapse => rig.lapse_sessions(),
            Action::Linger { at } => linger(KILL_POINTS[at]),
            _ => apply(&rig, &mut model, action).await,
        }
    }
    let settled = life.settle(&rig, 0, true).await;
    rig.stop();
    life.kill();
    for point in KILL_POINTS {
        disarm(point);
    }

    let mut violations = Vec::new();
    if let Err(e) = settled {
        violations.push(e);
    }
    let excluded = |rel: &Path| rig.config.exclude.is_excluded(rel);
    // What the producers left is stored, last, under its key; in delete mode the file is
    // gone (deleted once that very version was confirmed), in keep mode it is still there.
    for (relative, bytes) in &model.current {
        if excluded(Path::new(relative)) {
            continue;
        }
        let key = format!("p/{relative}");
        if rig.store.versions(&key).last() != Some(bytes) {
            violations.push(format!(
                "{relative:?}: its final bytes are not the last version of {key} ({} versions)",
                rig.store.versions(&key).len()
            ));
        }
    }
    for rel in files_in(&rig.watch) {
        if delete && !excluded(&rel) {
            violations.push(format!("{rel:?}: still there in delete mode"));
        }
    }
    for key in rig.store.keys() {
        let relative = key.strip_prefix("p/").unwrap();
        let versions = rig.store.versions(&key);
        if versions
            .iter()
            .any(|v| v == SECRET || model.outside.contains(v))
        {
            violations.push(format!("{key}: bytes from outside the tree were stored"));
        }
        // The version that stays (an unversioned bucket keeps only it) is one the path
        // held. An earlier one may not be: a file rewritten in place while its upload
        // streams is read half old, half new; s3drop sees the change and sends it again.
        let last = versions.last().unwrap();
        if !model
            .history
            .get(relative)
            .is_some_and(|h| h.contains(last))
        {
            violations.push(format!(
                "{key}: its last version is bytes the path never held ({} bytes)",
                last.len()
            ));
        }
        if excluded(Path::new(relative)) {
            violations.push(format!("{key}: an excluded name was stored"));
        }
    }
    let keys = rig.store.keys();
    let versions: usize = keys.iter().map(|k| rig.store.versions(k).len()).sum();
    EXTRA_PUTS.fetch_add(versions - keys.len(), Ordering::Relaxed);
    if actions.iter().any(|a| matches!(a, Action::Kill { .. })) {
        EXTRA_PUTS_KILLED.fetch_add(versions - keys.len(), Ordering::Relaxed);
    }
    CASES_RUN.fetch_add(1, Ordering::Relaxed);
    KEYS_STORED.fetch_add(keys.len(), Ordering::Relaxed);
    if std::fs::read(outside.join("secret.txt")).ok().as_deref() != Some(SECRET) {
        violations.push("the file outside the tree was changed or removed".into());
    }
    violations
}

#[test]
fn generated_producer_sequences_keep_the_models_promise() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let var = |name: &str| std::env::var(name).ok().and_then(|n| n.parse::<u64>().ok());
    let cases = var("S3DROP_MODEL_CASES").unwrap_or(32) as u32;
    // A run is replayed by its seed (printed whether it passes or not).
    let seed = var("S3DROP_MODEL_SEED").unwrap_or_else(|| fastrand::u64(..));
    let mut seed_bytes = [0u8; 32];
    for (i, b) in seed.to_le_bytes().iter().cycle().take(32).enumerate() {
        seed_bytes[i] = *b;
    }
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases,
            max_shrink_iters: 200,
            failure_persistence: None,
            ..RunnerConfig::default()
        },
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &seed_bytes,
        ),
    );
    // A kill point's panic is the kill, not a failure: nothing to print.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&KILL) {
            previous(info);
        }
    }));
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

/// Sequences the search needs many cases to happen upon, run every time: each holds open a
/// window that a broken guard would lose a file in.
#[test]
fn sequences_that_hold_a_narrow_window_open() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use Action::*;
    let sequences: [(&[Action], bool); 2] = [
        // Rewritten while its upload is being recorded (the worker lingers there): the new
        // version must not be deleted, it is sent in turn.
        (
            &[
                Linger { at: 1 },
                Write {
                    file: 0,
                    len: 100,
                    closes: 1,
                },
                Pause { ms: 420 },
                Append { file: 0, len: 10 },
            ],
            true,
        ),
        // Rewritten between S3's answer and the record: the record is of the old version.
        (
            &[
                Linger { at: 0 },
                Write {
                    file: 0,
                    len: 100,
                    closes: 1,
                },
                Pause { ms: 420 },
                Append { file: 0, len: 10 },
            ],
            true,
        ),
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
