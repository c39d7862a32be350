//! The ledger: a durable record, in `state_dir`, of which files S3 has confirmed, so that a
//! restart uploads nothing twice. Stored in redb (one file, ACID, crash-safe commits); each
//! record is versioned JSON keyed by the file's path relative to `watch_dir`.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files_v1");
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
    #[error("ledger {op} failed: {message} (is state_dir full or read-only?)")]
    Store { op: &'static str, message: String },
    #[error("ledger record for {path:?} is unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn writer_stopped() -> LedgerError {
    LedgerError::Store {
        op: "write",
        message: "the ledger writer has stopped".into(),
    }
}

fn store_err(op: &'static str) -> impl FnOnce(redb::Error) -> LedgerError {
    move |e| LedgerError::Store {
        op,
        message: e.to_string(),
    }
}

/// What identifies one version of a file on disk: if any of these change, it is new data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FileState {
    /// A multipart upload is under way: the parts S3 has confirmed so far, so a restart
    /// continues instead of starting over.
    Uploading {
        key: String,
        upload_id: String,
        part_size: u64,
        parts: Vec<PartRecord>,
    },
    /// S3 confirmed the object `key` with this CRC32C (base64; for a multipart upload,
    /// S3's checksum of the part checksums).
    Uploaded { key: String, crc32c: String },
    /// S3 refused the upload for a reason an operator must fix; retried later.
    Failed { key: String, error: String },
}

/// One part S3 confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub number: i32,
    pub etag: String,
    pub crc32c: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub identity: FileIdentity,
    #[serde(flatten)]
    pub state: FileState,
    pub updated_unix: u64,
}

impl FileRecord {
    pub fn is_uploaded_as(&self, identity: &FileIdentity) -> bool {
        matches!(self.state, FileState::Uploaded { .. }) && self.identity == *identity
    }
}

/// The database, reopened after an I/O error.
struct Store {
    path: PathBuf,
    /// `None` only while it is being reopened.
    db: std::sync::RwLock<Option<Database>>,
    /// Transactions the writer has committed.
    commits: std::sync::atomic::AtomicU64,
}

/// One change for the writer thread, with where to report the commit's outcome.
struct Write {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    done: tokio::sync::oneshot::Sender<Result<(), LedgerError>>,
}

/// Writes are group-committed: a writer thread takes every change waiting, applies them in
/// one transaction and one fsync, then answers each caller. Many uploads finishing at once
/// thus cost one disk flush, not one each. Reads go straight to the database.
pub struct Ledger {
    store: Arc<Store>,
    writes: Mutex<Option<std::sync::mpsc::Sender<Write>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Most changes one commit takes.
const MAX_BATCH: usize = 4096;
/// Least time between the starts of two commits. Each commit costs an fsync and a few
/// pages written whatever its size, so pacing them bounds the ledger's CPU and disk work
/// under a burst (at most 50 commits a second) while a lone upload is still recorded
/// at once. Nothing waits on a commit in the upload path itself.
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(20);

fn open_db(path: &Path) -> Result<Database, LedgerError> {
    let db = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => LedgerError::InUse {
            path: path.to_owned(),
        },
        other => LedgerError::Open {
            path: path.to_owned(),
            message: other.to_string(),
        },
    })?;
    let txn = db.begin_write().map_err(|e| store_err("begin")(e.into()))?;
    txn.open_table(FILES)
        .map_err(|e| store_err("create table")(e.into()))?;
    txn.commit().map_err(|e| store_err("commit")(e.into()))?;
    Ok(db)
}

impl Store {
    /// Runs `f` on the database. After an I/O error (a full or failing disk) redb refuses
    /// all further work until reopened, so the store reopens it and tries once more.
    fn with_db<T>(
        &self,
        op: &'static str,
        f: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, LedgerError> {
        let first = {
            let guard = self.db.read().expect("ledger lock");
            match guard.as_ref() {
                Some(db) => f(db),
                None => Err(redb::Error::DatabaseClosed),
            }
        };
        match first {
            Ok(v) => Ok(v),
            Err(redb::Error::PreviousIo | redb::Error::Io(_) | redb::Error::DatabaseClosed) => {
                let mut guard = self.db.write().expect("ledger lock");
                *guard = None; // release the file lock before opening again
                let db = open_db(&self.path)?;
                let result = f(&db).map_err(store_err(op));
                *guard = Some(db);
                result
            }
            Err(e) => Err(store_err(op)(e)),
        }
    }

    /// Applies `batch` in one transaction.
    fn commit(&self, batch: &[Write]) -> Result<(), LedgerError> {
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.with_db("commit", |db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(FILES)?;
                for write in batch {
                    match &write.value {
                        Some(value) => {
                            table.insert(write.key.as_slice(), value.as_slice())?;
                        }
                        None => {
                            table.remove(write.key.as_slice())?;
                        }
                    }
                }
            }
            Ok(txn.commit()?)
        })
    }
}

fn write_loop(store: Arc<Store>, writes: std::sync::mpsc::Receiver<Write>) {
    let mut last_commit: Option<Instant> = None;
    while let Ok(first) = writes.recv() {
        // Commits are paced: the next one starts no sooner than MIN_COMMIT_INTERVAL after
        // the last one began, and takes everything that arrived meanwhile. A lone write
        // after a quiet spell is committed at once; under load many share one fsync. The
        // writer sleeps rather than waking for every write that arrives.
        if let Some(due) = last_commit.map(|at| at + MIN_COMMIT_INTERVAL) {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match writes.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        last_commit = Some(Instant::now());
        let result = store.commit(&batch);
        for write in batch {
            let _ = write.done.send(result.clone());
        }
    }
}

impl Ledger {
    /// Opens (or creates) the ledger in `state_dir`. The store holds an exclusive lock, so a
    /// second daemon on the same state fails here instead of racing.
    pub fn open(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let path = state_dir.join(LEDGER_FILE);
        let db = open_db(&path)?;
        let store = Arc::new(Store {
            path,
            db: std::sync::RwLock::new(Some(db)),
            commits: Default::default(),
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
        let value = serde_json::to_vec(record).expect("ledger records always serialize");
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
            serde_json::from_slice(&bytes).map_err(|e| LedgerError::Corrupt {
                path: relative.to_owned(),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    /// Durably records `record` (its commit is fsynced before this returns).
    pub fn put(&self, relative: &Path, record: &FileRecord) -> Result<(), LedgerError> {
        let value = serde_json::to_vec(record).expect("ledger records always serialize");
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
                crc32c: "AAAAAA==".into(),
            },
            updated_unix: 4,
        }
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
}
