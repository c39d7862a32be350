//! The reference model of the drop folder, shared by the in-process search (s3drop's
//! `src/model.rs`: real intake, workers and ledger against the in-memory bucket) and the
//! end-to-end run (`tests/e2e/generated.rs`: the real binary against fakecloud): the
//! actions a generated sequence is made of, what the producers' actions do to a real
//! folder and to the model, and the rules the bucket and the folder must keep.
//!
//! The rules: what each path holds when the producers are done is stored as the last
//! version of its key (in keep mode the file is still there; in delete mode s3drop deleted
//! it, only after that); the last version of every key is bytes its path held at some
//! moment (nothing else stays stored); excluded names are never stored; nothing written
//! through a link to a directory outside the tree is ever stored, and a file there is
//! untouched. Earlier versions may be a file read half-rewritten (rewritten in place while
//! its upload streamed: s3drop saw the change and sent it again).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};

/// The paths producers use: nested, excluded (hidden, `.tmp`), an odd name, a new tree
/// (`new/deep/`, made and filled at once), and the directories of [`SWAPPABLE`].
pub const FILES: [&str; 9] = [
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
/// The directories a hostile producer may swap for a link to a directory outside the tree:
/// `d/`, there from the start, and `new/`, made while s3drop runs (swapped, it may be
/// while s3drop is still scanning it).
pub const SWAPPABLE: [&str; 2] = ["d", "new"];
pub const SECRET: &[u8] = b"OUTSIDE: only s3drop may read this";

/// Where a kill is most telling (the daemon's `kill_point!`s): S3 confirmed but the ledger
/// does not know; the ledger knows but the file is still there; the file deleted but the
/// ledger still has it.
pub const KILL_POINTS: [&str; 3] = ["upload::confirmed", "upload::recorded", "upload::acted"];
/// The operations a fault can be put on.
pub const OPS: [&str; 1] = ["PutObject"];
/// The faults, by name: 500, 503 SlowDown, 403, the answer lost after the write, an answer
/// without a checksum.
pub const FAULTS: [&str; 5] = [
    "InternalError",
    "SlowDown",
    "AccessDenied",
    "LostAnswer",
    "NoChecksum",
];

#[derive(Debug, Clone)]
pub enum Action {
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
    /// Written into an unnamed `O_TMPFILE` in the file's directory, then given its name
    /// with `linkat()` (no close after the name appears, until after the link).
    TmpfileLink {
        file: usize,
        len: usize,
    },
    Delete {
        file: usize,
    },
    Touch {
        file: usize,
    },
    /// `SWAPPABLE[dir]` renamed to `<dir>.old/` and replaced by a link to a directory
    /// outside the tree.
    SwapDirForLink {
        dir: usize,
    },
    Pause {
        ms: u64,
    },
    /// The daemon is killed, at once or (with the `failpoints` feature) when a worker
    /// reaches kill point `at` (or after a while if none does), and started again.
    Kill {
        at: Option<usize>,
    },
    /// SIGHUP: a full scan, and every waiting retry at once.
    Hangup,
    /// Events were lost (the kernel's queue overflowed).
    Overflow,
    /// The next request of operation `op` meets fault `fault` (see [`OPS`], [`FAULTS`]).
    Fault {
        op: usize,
        fault: usize,
    },
    /// Every session minted so far lapses (ExpiredToken).
    SessionLapse,
    /// From now on, a worker lingers at kill point `at` (with the `failpoints` feature),
    /// holding open the window between two steps of a file's fate for producers.
    Linger {
        at: usize,
    },
}

/// One generated action, weighted towards what producers do most.
pub fn action() -> impl Strategy<Value = Action> {
    let file = 0..FILES.len();
    prop_oneof![
        4 => (file.clone(), 0..3000usize, 1..4u8)
            .prop_map(|(file, len, closes)| Action::Write { file, len, closes }),
        2 => (file.clone(), 1..2000usize).prop_map(|(file, len)| Action::Append { file, len }),
        1 => (file.clone(), 0..100usize).prop_map(|(file, len)| Action::Truncate { file, len }),
        2 => (file.clone(), 0..3000usize).prop_map(|(file, len)| Action::RenameIn { file, len }),
        1 => (file.clone(), file.clone()).prop_map(|(from, to)| Action::RenameWithin { from, to }),
        1 => (file.clone(), 1..500usize).prop_map(|(file, len)| Action::HardLinkIn { file, len }),
        1 => (file.clone(), 0..2000usize).prop_map(|(file, len)| Action::TmpfileLink { file, len }),
        1 => file.clone().prop_map(|file| Action::Delete { file }),
        1 => file.clone().prop_map(|file| Action::Touch { file }),
        1 => (0..SWAPPABLE.len()).prop_map(|dir| Action::SwapDirForLink { dir }),
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
pub struct Model {
    /// Every content each key's path had after an action (what may be stored under it).
    pub history: HashMap<String, HashSet<Vec<u8>>>,
    /// Contents written through the link, outside the tree: never to be stored.
    pub outside: HashSet<Vec<u8>>,
    /// What each path holds now, as the producers left it (by key of the path).
    pub current: HashMap<String, Vec<u8>>,
    /// Which of [`SWAPPABLE`] are links to the outside directory.
    pub swapped: Vec<&'static str>,
    pub written: u64,
}

impl Model {
    /// Unique bytes for the next write.
    pub fn bytes(&mut self, file: &str, len: usize) -> Vec<u8> {
        self.written += 1;
        let mut b = format!("{file}#{}:", self.written).into_bytes();
        b.extend((0..len).map(|i| (i as u64 * 31 + self.written) as u8));
        b
    }

    /// `file` (relative) is reached through a swapped link, outside the tree.
    pub fn through_link(&self, file: &str) -> bool {
        self.swapped
            .iter()
            .any(|dir| file.strip_prefix(dir).is_some_and(|r| r.starts_with('/')))
    }

    /// `path` (relative) has held `content` (not necessarily still).
    pub fn held(&mut self, file: &str, content: Vec<u8>) {
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
    pub fn holds(&mut self, file: &str, content: Vec<u8>) {
        if !self.through_link(file) {
            self.current.insert(key_of(file), content.clone());
        }
        self.held(file, content);
    }

    pub fn gone(&mut self, file: &str) {
        if !self.through_link(file) {
            self.current.remove(&key_of(file));
        }
    }
}

/// The key part of a relative path.
pub fn key_of(file: &str) -> String {
    s3drop::keys::encode_path(Path::new(std::ffi::OsStr::from_bytes(file.as_bytes()))).unwrap()
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

/// Carries out a producer's `action` on the real tree, telling `model`. Failures of the producer's
/// own operations (a file that is not there to rename) are ignored, as they change
/// nothing.
pub fn apply(folder: &Folder, model: &mut Model, action: &Action) {
    let staging = folder.dir.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let at = |file: usize| folder.watch.join(FILES[file]);
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
                    match (
                        model.through_link(FILES[from]),
                        model.through_link(FILES[to]),
                    ) {
                        // A file of the tree moved out through the link: its bytes were in
                        // the tree first (and may be stored already); not outside's.
                        (false, true) => {}
                        // Moved from outside into the tree: from now on theirs to upload.
                        (true, false) => {
                            model.outside.remove(&bytes);
                            model.holds(FILES[to], bytes);
                        }
                        _ => model.holds(FILES[to], bytes),
                    }
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
        Action::TmpfileLink { file, len } => {
            let (name, path) = (FILES[file], at(file));
            let bytes = model.bytes(name, len);
            parent(&path);
            if publish_tmpfile(path.parent().unwrap(), &path, &bytes).is_ok() {
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
        Action::SwapDirForLink { dir } => {
            let name = SWAPPABLE[dir];
            let d = folder.watch.join(name);
            let is_dir = std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir());
            if !model.swapped.contains(&name) && is_dir {
                let old = folder.watch.join(format!("{name}.old"));
                if std::fs::rename(&d, &old).is_ok() {
                    let inside = format!("{name}/");
                    let moved = |rest: &str| format!("{name}.old/{rest}");
                    // What the directory held is now under <dir>.old/.
                    for (key, contents) in model.history.clone() {
                        if let Some(rest) = key.strip_prefix(&inside) {
                            model
                                .history
                                .entry(moved(rest))
                                .or_default()
                                .extend(contents);
                        }
                    }
                    // Files s3drop deleted (delete mode) before the rename stay stored
                    // under their old key; those still there moved with the directory.
                    for (key, content) in model.current.clone() {
                        if let Some(rest) = key.strip_prefix(&inside)
                            && let Some(file) = FILES.iter().find(|f| key_of(f) == key)
                            && old.join(&file[inside.len()..]).exists()
                        {
                            model.current.remove(&key);
                            model.current.insert(moved(rest), content);
                        }
                    }
                    std::os::unix::fs::symlink(folder.dir.join("outside"), &d).unwrap();
                    model.swapped.push(name);
                }
            }
        }
        // Pauses, the daemon's and S3's: carried out by the harness.
        Action::Pause { .. }
        | Action::Kill { .. }
        | Action::Hangup
        | Action::Overflow
        | Action::Fault { .. }
        | Action::SessionLapse
        | Action::Linger { .. } => {}
    }
}

/// Writes `body` into an unnamed `O_TMPFILE` in `dir`, then gives it the name `dest` with
/// `linkat()`, as careful programs publish a finished file; closes it afterwards. Fails
/// (nothing named) if `dest` exists.
pub fn publish_tmpfile(dir: &Path, dest: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(dir)?;
    (&file).write_all(body)?;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    let to = std::ffi::CString::new(dest.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths; the descriptor is open until `file` drops.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The regular files in the tree (never through a link), relative.
pub fn files_in(root: &Path) -> Vec<PathBuf> {
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

/// The drop folder a case runs on: `watch` (watch_dir) and, beside it in `dir`, `staging`
/// (where files are written before they are renamed or linked in) and `outside` (where
/// the swapped link points; it holds `secret.txt`, which s3drop must never store or touch).
pub struct Folder {
    pub dir: PathBuf,
    pub watch: PathBuf,
}

impl Folder {
    /// Makes `outside/secret.txt` next to `watch`.
    pub fn new(dir: &Path, watch: &Path) -> Folder {
        let outside = dir.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
        Folder {
            dir: dir.to_owned(),
            watch: watch.to_owned(),
        }
    }
}

/// What a bucket holds, as a harness can see it: every version under each key (an
/// unversioned bucket shows its one).
pub trait Bucket {
    fn keys(&self) -> Vec<String>;
    fn versions(&self, key: &str) -> Vec<Vec<u8>>;
}

/// The model's rules, checked once the daemon has settled; the violations. `prefix` is
/// the keys' prefix, `excluded` the config's exclusion.
pub fn check(
    model: &Model,
    folder: &Folder,
    bucket: &dyn Bucket,
    prefix: &str,
    delete: bool,
    excluded: &dyn Fn(&Path) -> bool,
) -> Vec<String> {
    let mut violations = Vec::new();
    // What the producers left is stored, last, under its key; in delete mode the file is
    // gone (deleted once that very version was confirmed), in keep mode it is still there.
    for (relative, bytes) in &model.current {
        if excluded(Path::new(relative)) {
            continue;
        }
        let key = format!("{prefix}{relative}");
        let versions = bucket.versions(&key);
        if versions.last() != Some(bytes) {
            violations.push(format!(
                "{relative:?}: its final bytes are not the last version of {key} ({} versions)",
                versions.len()
            ));
        }
    }
    for rel in files_in(&folder.watch) {
        if delete && !excluded(&rel) {
            violations.push(format!("{rel:?}: still there in delete mode"));
        }
    }
    for key in bucket.keys() {
        let Some(relative) = key.strip_prefix(prefix) else {
            continue;
        };
        let versions = bucket.versions(&key);
        if versions
            .iter()
            .any(|v| v == SECRET || model.outside.contains(v))
        {
            violations.push(format!("{key}: bytes from outside the tree were stored"));
        }
        // The version that stays (an unversioned bucket keeps only it) is one the path
        // held. An earlier one may not be: a file rewritten in place while its upload
        // streams is read half old, half new; s3drop sees the change and sends it again.
        let Some(last) = versions.last() else {
            continue;
        };
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
    let secret = folder.dir.join("outside/secret.txt");
    if std::fs::read(secret).ok().as_deref() != Some(SECRET) {
        violations.push("the file outside the tree was changed or removed".into());
    }
    violations
}

/// A search's runner: `cases` sequences (and `cases_var` in the environment, if set), from
/// `seed_var`'s seed or a random one (returned, to print: it replays the run), each failure
/// shrunk at most `max_shrink_iters` times.
pub fn runner(
    cases_var: &str,
    cases: u32,
    seed_var: &str,
    max_shrink_iters: u32,
) -> (TestRunner, u32, u64) {
    let var = |name: &str| std::env::var(name).ok().and_then(|n| n.parse::<u64>().ok());
    let cases = var(cases_var).map_or(cases, |n| n as u32);
    let seed = var(seed_var).unwrap_or_else(|| fastrand::u64(..));
    let mut seed_bytes = [0u8; 32];
    for (i, b) in seed.to_le_bytes().iter().cycle().take(32).enumerate() {
        seed_bytes[i] = *b;
    }
    let runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases,
            max_shrink_iters,
            failure_persistence: None,
            ..RunnerConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    (runner, cases, seed)
}
