//! The redb database under the ledger and its writer thread: changes are group-committed,
//! the commits paced, and the database reopened after an I/O error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};

use super::LedgerError;

/// The table's name carries no schema version: records version themselves (`record`).
pub(super) const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files_v1");

pub(super) fn store_err(op: &'static str) -> impl FnOnce(redb::Error) -> LedgerError {
    move |e| LedgerError::Store {
        op,
        message: e.to_string(),
    }
}

/// The database, reopened after an I/O error.
pub(super) struct Store {
    pub(super) path: PathBuf,
    /// `None` only while it is being reopened.
    pub(super) db: std::sync::RwLock<Option<Database>>,
    /// Transactions the writer has committed.
    pub(super) commits: std::sync::atomic::AtomicU64,
    /// Tests: how many of the next commits fail as on a full disk.
    #[cfg(test)]
    pub(super) failing: std::sync::atomic::AtomicU32,
}

/// One change for the writer thread, with where to report the commit's outcome.
pub(super) struct Write {
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) done: tokio::sync::oneshot::Sender<Result<(), LedgerError>>,
}

/// Most changes one commit takes.
const MAX_BATCH: usize = 4096;
/// Least time between the starts of two commits. Each commit costs an fsync and a few
/// pages written whatever its size, so pacing them bounds the ledger's CPU and disk work
/// under a burst (at most 10 commits a second) while a lone upload is still recorded
/// at once. Nothing waits on a commit in the upload path itself. At 20 ms the commits
/// were 11 % of the daemon's CPU at 1,800 files/s (`perf`, issue 26); at 100 ms about
/// 2 %, and a crash re-sends at most the last 100 ms of uploads.
pub(super) const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// redb's page cache. Its default (1 GiB) would let a ledger of a million records grow the
/// daemon's memory towards the file's size while a backlog drains; lookups that miss it
/// read the file (the kernel's page cache), which a drain at the S3 server's pace does not
/// notice.
const CACHE_BYTES: usize = 16 << 20;

pub(super) fn open_db(path: &Path) -> Result<Database, LedgerError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => LedgerError::InUse {
                path: path.to_owned(),
            },
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(cause)) => {
                super::damaged(path, cause)
            }
            // Not a redb file any more (its header overwritten).
            redb::DatabaseError::Storage(redb::StorageError::Io(e))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                super::damaged(path, e)
            }
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
    pub(super) fn with_db<T>(
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
        #[cfg(test)]
        if self
            .failing
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
        {
            return Err(LedgerError::Store {
                op: "commit",
                message: "No space left on device (os error 28)".into(),
            });
        }
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

pub(super) fn write_loop(store: Arc<Store>, writes: std::sync::mpsc::Receiver<Write>) {
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
