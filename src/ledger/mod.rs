//! The ledger: a durable record, in `state_dir`, of what S3 has confirmed for each file, so
//! that a restart uploads nothing twice and a multipart upload resumes. Stored in redb (one
//! file, ACID, crash-safe commits), keyed by the file's path relative to `watch_dir`; each
//! value is a versioned record ([`record`]). Writes go through one writer thread that
//! group-commits them ([`store`]).

pub(crate) mod record;
mod store;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase};

pub use record::{FileRecord, FileState, PartRecord};
use store::{FILES, Store, Write, open_db, write_loop};

const LEDGER_FILE: &str = "ledger.redb";

#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "the ledger {path} is in use by another process: is another s3drop running with the \
         same state_dir?"
    )]
    InUse { path: PathBuf },
    #[error("cannot open the ledger {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "the ledger {path} is damaged ({cause}), so s3drop cannot use it. Stop s3drop and run \
         `s3drop ledger reset` (with the same --config) to move it aside; the next start builds \
         a new ledger, and every file still in watch_dir is uploaded once more"
    )]
    Damaged { path: PathBuf, cause: String },
    #[error("ledger {op} failed: {message} (is state_dir full or read-only?)")]
    Store { op: &'static str, message: String },
    #[error("ledger record for {path:?} is unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// The writer thread is gone: nothing more can be recorded, so the daemon must stop.
    #[error("the ledger writer has stopped; nothing more can be recorded")]
    WriterStopped,
}

impl LedgerError {
    /// No further write can succeed in this process.
    pub fn is_fatal(&self) -> bool {
        matches!(self, LedgerError::WriterStopped)
    }
}

/// The ledger's path in `state_dir`, if there is one there.
fn existing(state_dir: &Path) -> Result<PathBuf, LedgerError> {
    let path = state_dir.join(LEDGER_FILE);
    if !path.exists() {
        return Err(LedgerError::Open {
            path,
            message: "no ledger here (has s3drop run with this config?)".into(),
        });
    }
    Ok(path)
}

fn damaged(path: &Path, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Damaged {
        path: path.to_owned(),
        cause: e.to_string(),
    }
}

/// Runs `f`; a panic in it (redb's on some damaged files) becomes [`LedgerError::Damaged`],
/// without the panic's message on stderr.
fn without_panicking<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|payload| {
        let cause = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "it made the database code fail".into());
        Err(damaged(path, cause))
    })
}

/// Reads every record once (the pages they are on, and their bytes).
fn read_everything(db: &Database) -> Result<(), redb::Error> {
    use redb::ReadableTable;
    let txn = db.begin_read()?;
    let table = txn.open_table(FILES)?;
    for entry in table.iter()? {
        let (key, value) = entry?;
        std::hint::black_box((key.value().len(), value.value().len()));
    }
    Ok(())
}

fn writer_stopped() -> LedgerError {
    LedgerError::WriterStopped
}

/// Writes are group-committed: a writer thread takes every change waiting, applies them in
/// one transaction and one fsync, then answers each caller. Many uploads finishing at once
/// thus cost one disk flush, not one each. Reads go straight to the database.
pub struct Ledger {
    store: Arc<Store>,
    writes: Mutex<Option<std::sync::mpsc::Sender<Write>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Ledger {
    /// Opens the ledger in `state_dir` only if there is one (for reading it: `status`).
    pub fn open_existing(state_dir: &Path) -> Result<Ledger, LedgerError> {
        existing(state_dir)?;
        Ledger::open(state_dir)
    }

    /// Opens (or creates) the ledger in `state_dir`. The store holds an exclusive lock, so a
    /// second daemon on the same state fails here instead of racing. Every record is read
    /// once: a file a failing disk damaged is [`LedgerError::Damaged`] now, not a panic
    /// later (redb panics on some damage).
    pub fn open(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let path = state_dir.join(LEDGER_FILE);
        let db = without_panicking(&path, || {
            let db = open_db(&path)?;
            read_everything(&db).map_err(|e| damaged(&path, e))?;
            Ok(db)
        })?;
        let store = Arc::new(Store {
            path,
            db: std::sync::RwLock::new(Some(db)),
            commits: Default::default(),
            #[cfg(test)]
            failing: Default::default(),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let writer_store = store.clone();
        let writer = std::thread::Builder::new()
            .name("s3drop-ledger".into())
            .spawn(move || write_loop(writer_store, rx))
            .map_err(|e| LedgerError::Open {
                path: store.path.clone(),
                message: e.to_string(),
            })?;
        Ok(Ledger {
            store,
            writes: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Moves a (damaged) ledger in `state_dir` aside, to `ledger.redb.damaged-<unix time>`,
    /// so the next start builds a new one. Refused while a daemon holds it.
    pub fn reset(state_dir: &Path) -> Result<PathBuf, LedgerError> {
        let path = existing(state_dir)?;
        // Only the lock matters here: a damaged file may fail or panic in any other way.
        let held = without_panicking(&path, || match Database::create(&path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                Err(LedgerError::InUse { path: path.clone() })
            }
            _ => Ok(()),
        });
        if let Err(e @ LedgerError::InUse { .. }) = held {
            return Err(e);
        }
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = state_dir.join(format!("{LEDGER_FILE}.damaged-{seconds}"));
        std::fs::rename(&path, &aside).map_err(|e| LedgerError::Open {
            path: path.clone(),
            message: format!("cannot move it aside: {e}"),
        })?;
        Ok(aside)
    }

    fn with_db<T>(
        &self,
        op: &'static str,
        f: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, LedgerError> {
        self.store.with_db(op, f)
    }

    /// Hands a change to the writer; the receiver answers once it is durable.
    fn submit(
        &self,
        relative: &Path,
        value: Option<Vec<u8>>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), LedgerError>>, LedgerError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let write = Write {
            key: relative.as_os_str().as_bytes().to_vec(),
            value,
            done,
        };
        self.writes
            .lock()
            .expect("ledger writes lock")
            .as_ref()
            .ok_or_else(writer_stopped)?
            .send(write)
            .map_err(|_| writer_stopped())?;
        Ok(outcome)
    }

    /// Hands a change to the writer and waits until it is durable.
    fn write(&self, relative: &Path, value: Option<Vec<u8>>) -> Result<(), LedgerError> {
        self.submit(relative, value)?
            .blocking_recv()
            .map_err(|_| writer_stopped())?
    }

    /// Forgets `relative` without blocking; resolves once that is durable.
    pub fn remove_later(
        &self,
        relative: &Path,
    ) -> impl std::future::Future<Output = Result<(), LedgerError>> + Send + use<> {
        let submitted = self.submit(relative, None);
        async move { submitted?.await.map_err(|_| writer_stopped())? }
    }

    /// Records `record` without blocking: the future resolves once it is durable, so the
    /// caller may go on with other work while the commit is under way.
    pub fn put_later(
        &self,
        relative: &Path,
        record: &FileRecord,
    ) -> impl std::future::Future<Output = Result<(), LedgerError>> + Send + use<> {
        let value = record::encode(record);
        let submitted = self.submit(relative, Some(value));
        async move { submitted?.await.map_err(|_| writer_stopped())? }
    }

    pub fn get(&self, relative: &Path) -> Result<Option<FileRecord>, LedgerError> {
        let raw = self.with_db("read", |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(FILES)?;
            Ok(table
                .get(relative.as_os_str().as_bytes())?
                .map(|v| v.value().to_vec()))
        })?;
        raw.map(|bytes| {
            record::decode(&bytes).map_err(|message| LedgerError::Corrupt {
                path: relative.to_owned(),
                message,
            })
        })
        .transpose()
    }

    /// Durably records `record` (its commit is fsynced before this returns).
    pub fn put(&self, relative: &Path, record: &FileRecord) -> Result<(), LedgerError> {
        let value = record::encode(record);
        self.write(relative, Some(value))
    }

    pub fn remove(&self, relative: &Path) -> Result<(), LedgerError> {
        self.write(relative, None)
    }

    /// Forgets every record for which `keep(relative_path)` is false (files that are gone),
    /// so the ledger does not grow forever. Returns how many were removed.
    pub fn prune(&self, keep: impl Fn(&Path) -> bool) -> Result<u64, LedgerError> {
        use std::ffi::OsStr;
        self.with_db("prune", |db| {
            let txn = db.begin_write()?;
            let mut removed = 0;
            txn.open_table(FILES)?.retain(|path, _| {
                let kept = keep(Path::new(OsStr::from_bytes(path)));
                removed += u64::from(!kept);
                kept
            })?;
            txn.commit()?;
            Ok(removed)
        })
    }

    /// Every record, for `s3drop status` (undecodable records are skipped).
    pub fn records(&self) -> Result<Vec<(PathBuf, FileRecord)>, LedgerError> {
        use redb::ReadableTable;
        use std::ffi::OsStr;
        self.with_db("read", |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(FILES)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (path, value) = entry?;
                if let Ok(record) = record::decode(value.value()) {
                    out.push((PathBuf::from(OsStr::from_bytes(path.value())), record));
                }
            }
            Ok(out)
        })
    }

    /// Tests: the next `n` commits fail as on a full disk (each write in them gets the
    /// error; nothing of them is stored).
    #[cfg(test)]
    pub(crate) fn fail_commits(&self, n: u32) {
        self.store
            .failing
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn len(&self) -> Result<u64, LedgerError> {
        use redb::ReadableTableMetadata;
        self.with_db("read", |db| {
            Ok(db.begin_read()?.open_table(FILES)?.len()?)
        })
    }

    pub fn is_empty(&self) -> Result<bool, LedgerError> {
        Ok(self.len()? == 0)
    }

    /// How many write transactions have been committed so far.
    pub fn commits(&self) -> u64 {
        self.store
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Ledger {
    /// Lets the writer finish what it holds and release the database (and its file lock).
    fn drop(&mut self) {
        self.writes.lock().expect("ledger writes lock").take();
        if let Some(writer) = self.writer.lock().expect("ledger writer lock").take() {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::FileIdentity;
    use std::time::{Duration, Instant};
    use store::MIN_COMMIT_INTERVAL;

    fn record(size: u64) -> FileRecord {
        FileRecord {
            identity: FileIdentity {
                dev: 1,
                inode: 2,
                size,
                mtime_ns: 3,
            },
            state: FileState::Uploaded {
                key: "p/a".into(),
                crc32c: Some("AAAAAA==".into()),
                multipart: false,
            },
            updated_unix: 4,
        }
    }

    /// A ledger as a failing disk leaves it: truncated, or random bytes written over it, at
    /// many offsets (seeded). Opening it never panics: it works, or says it is damaged (or
    /// cannot be opened) in one sentence; and `reset` always gives a working ledger back.
    #[test]
    fn a_damaged_ledger_never_panics_and_reset_recovers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = Ledger::open(dir.path()).unwrap();
            for i in 0..300 {
                ledger
                    .put(Path::new(&format!("dir{}/file{i}", i % 7)), &record(i))
                    .unwrap();
            }
        }
        let path = dir.path().join(LEDGER_FILE);
        let pristine = std::fs::read(&path).unwrap();
        let mut rng = fastrand::Rng::with_seed(21);
        let (mut refused, mut opened) = (0, 0);
        for round in 0..60 {
            let mut bytes = pristine.clone();
            if round % 3 == 0 {
                bytes.truncate(rng.usize(0..pristine.len()));
            } else {
                let at = rng.usize(0..pristine.len());
                let len = rng.usize(1..4096).min(pristine.len() - at);
                rng.fill(&mut bytes[at..at + len]);
            }
            std::fs::write(&path, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| Ledger::open(dir.path()).map(drop));
            match outcome.expect("opening a damaged ledger panicked") {
                Ok(()) => opened += 1,
                Err(e) => {
                    refused += 1;
                    let message = e.to_string();
                    assert!(!message.contains('\n'), "{message}");
                    if matches!(e, LedgerError::Damaged { .. }) {
                        assert!(message.contains("s3drop ledger reset"), "{message}");
                    }
                }
            }
            let aside = Ledger::reset(dir.path()).unwrap();
            assert!(aside.exists() && !path.exists());
            let fresh = Ledger::open(dir.path()).unwrap();
            assert!(fresh.is_empty().unwrap());
            drop(fresh);
            std::fs::remove_file(&aside).unwrap();
        }
        assert!(refused > 0, "no damage was ever noticed ({opened} opened)");
    }

    #[test]
    fn reset_is_refused_while_a_daemon_holds_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Ledger::open(dir.path()).unwrap();
        assert!(matches!(
            Ledger::reset(dir.path()),
            Err(LedgerError::InUse { .. })
        ));
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = Ledger::open(dir.path()).unwrap();
            ledger.put(Path::new("a/b.txt"), &record(10)).unwrap();
        }
        let ledger = Ledger::open(dir.path()).unwrap();
        let got = ledger.get(Path::new("a/b.txt")).unwrap().unwrap();
        assert!(got.is_uploaded_as(&record(10).identity));
        assert!(!got.is_uploaded_as(&record(11).identity));
        assert!(ledger.get(Path::new("other")).unwrap().is_none());
        ledger.remove(Path::new("a/b.txt")).unwrap();
        assert!(ledger.is_empty().unwrap());
    }

    #[test]
    fn prune_forgets_only_what_the_predicate_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        for name in ["keep/a", "gone/b", "gone/c"] {
            ledger.put(Path::new(name), &record(1)).unwrap();
        }
        let removed = ledger.prune(|p| p.starts_with("keep")).unwrap();
        assert_eq!(removed, 2);
        assert_eq!(ledger.len().unwrap(), 1);
        assert!(ledger.get(Path::new("keep/a")).unwrap().is_some());
    }

    #[test]
    fn concurrent_writers_are_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = Arc::new(Ledger::open(dir.path()).unwrap());
            let threads: Vec<_> = (0..64)
                .map(|t| {
                    let ledger = ledger.clone();
                    std::thread::spawn(move || {
                        for i in 0..20 {
                            ledger
                                .put(Path::new(&format!("t{t}/f{i}")), &record(i))
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.len().unwrap(), 64 * 20);
        assert!(
            ledger
                .get(Path::new("t63/f19"))
                .unwrap()
                .unwrap()
                .identity
                .size
                == 19
        );
    }

    #[tokio::test]
    async fn a_steady_stream_of_writes_shares_paced_commits() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let started = Instant::now();
        let mut pending = Vec::new();
        for i in 0..200 {
            pending.push(ledger.put_later(Path::new(&format!("f{i}")), &record(i)));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for p in pending {
            p.await.unwrap();
        }
        let elapsed = started.elapsed();
        // At most one commit per MIN_COMMIT_INTERVAL (plus the first); unpaced, a write
        // arriving every millisecond would get a commit of its own or nearly.
        let bound = elapsed.as_millis() / MIN_COMMIT_INTERVAL.as_millis() + 2;
        assert!(
            u128::from(ledger.commits()) <= bound,
            "{} commits in {elapsed:?}",
            ledger.commits()
        );
        assert_eq!(ledger.len().unwrap(), 200);

        // After a quiet spell, a lone write is committed without waiting for company.
        tokio::time::sleep(MIN_COMMIT_INTERVAL * 2).await;
        let before = ledger.commits();
        let submitted = Instant::now();
        ledger
            .put_later(Path::new("lone"), &record(1))
            .await
            .unwrap();
        let waited = submitted.elapsed();
        assert_eq!(ledger.commits(), before + 1);
        // A writer that held the write back for the pacing interval would take at least
        // MIN_COMMIT_INTERVAL; one commit with its fsync takes about 1 ms here.
        assert!(
            waited < MIN_COMMIT_INTERVAL,
            "a lone write waited {waited:?}"
        );
    }

    #[test]
    fn a_second_open_of_the_same_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Ledger::open(dir.path()).unwrap();
        let err = Ledger::open(dir.path()).err().unwrap();
        assert!(matches!(err, LedgerError::InUse { .. }), "{err}");
    }

    #[test]
    fn non_utf8_paths_are_keys_too() {
        use std::ffi::OsStr;
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let name = Path::new(OsStr::from_bytes(b"bad\xffname"));
        ledger.put(name, &record(1)).unwrap();
        assert!(ledger.get(name).unwrap().is_some());
    }

    #[test]
    fn a_ledger_written_by_the_first_release_is_read() {
        // Written by s3drop at commit cb4f9ca (records without a version field).
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/ledger/fixtures/ledger-first-release.redb"),
            dir.path().join(LEDGER_FILE),
        )
        .unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.len().unwrap(), 4);
        let uploaded = ledger
            .get(Path::new("reports/2026-11-24.csv"))
            .unwrap()
            .unwrap();
        assert_eq!(
            uploaded.state,
            FileState::Uploaded {
                key: "i-0123456789abcdef0/reports/2026-11-24.csv".into(),
                crc32c: Some("yZRlqg==".into()),
                multipart: false,
            }
        );
        assert_eq!(uploaded.identity.inode, 131_074);
        let FileState::Uploading {
            upload_id, parts, ..
        } = ledger.get(Path::new("big.bin")).unwrap().unwrap().state
        else {
            panic!("big.bin is a multipart upload in progress")
        };
        assert_eq!(upload_id, "upload-1");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].crc32c.as_deref(), Some("BBBBBB=="));
        assert!(matches!(
            ledger.get(Path::new("denied.txt")).unwrap().unwrap().state,
            FileState::Failed { .. }
        ));
        use std::ffi::OsStr;
        assert!(
            ledger
                .get(Path::new(OsStr::from_bytes(b"odd\xffname")))
                .unwrap()
                .is_some()
        );
        // Rewritten records carry the current version and still read back.
        ledger.put(Path::new("big.bin"), &record(7)).unwrap();
        assert!(
            ledger
                .get(Path::new("big.bin"))
                .unwrap()
                .unwrap()
                .is_uploaded_as(&record(7).identity)
        );
    }
}
