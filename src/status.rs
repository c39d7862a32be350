//! `s3drop status`: what the daemon is doing, whether or not it runs. The running daemon
//! answers on a Unix socket in `state_dir` (each connection gets one JSON document, then
//! the socket closes: nothing to parse on the daemon's side); when it does not run, the
//! ledger tells what is recorded. Exit 0 when nothing waits on a failure, 1 when something
//! does, 2 when it cannot tell.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::ledger::{FileState, Ledger};
use crate::message::printable;
use crate::queue::Queue;
use crate::upload::progress::Progress;

/// Failed files shown at most; the rest are counted.
const SHOWN: usize = 20;

/// The socket the running daemon answers on.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("s3drop.sock")
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Failed {
    pub path: String,
    /// Its kind, as `s3drop_upload_failures_total` labels it (`denied`, `invalid_key`, …).
    pub kind: String,
    pub error: String,
    /// Seconds since the failure was seen (running daemon only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_ago: Option<u64>,
}

/// What `status` reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// This run's uploads (running), or the ledger's uploaded records (not running).
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_expires: Option<String>,
    pub failed_total: usize,
    pub failed: Vec<Failed>,
    /// Programs `s3drop exec` started that fetch their sessions from the broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_children: Vec<crate::broker::children::Listed>,
}

/// Listens on [`socket_path`] and answers each connection with a [`Snapshot`] until
/// `cancel`. A stale socket of an earlier run is replaced (the ledger's lock already
/// guarantees one daemon per state_dir).
pub fn serve(
    state_dir: &Path,
    queue: Arc<Queue>,
    progress: Arc<Progress>,
    children: Arc<crate::broker::children::Children>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<()> {
    let path = socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    let since = crate::message::rfc3339(SystemTime::now());
    let cancel = cancel.clone();
    tracker.spawn(async move {
        loop {
            let mut stream = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let mut snapshot = running(&since, &queue, &progress);
            snapshot.exec_children = children.list();
            let doc = serde_json::to_vec(&snapshot).unwrap_or_default();
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &doc).await;
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

fn running(since: &str, queue: &Queue, progress: &Progress) -> Snapshot {
    let m = crate::metrics::get();
    let failures = progress.failures();
    let expiry = m.session_expiry.get();
    let oldest = queue.oldest_pending();
    Snapshot {
        running: true,
        pid: Some(std::process::id()),
        since: Some(since.to_string()),
        uploaded_files: m.uploaded_files.get(),
        uploaded_bytes: m.uploaded_bytes.get(),
        queue: Some(queue.depth() as u64),
        oldest_pending_seconds: Some(oldest.as_ref().map_or(0, |(_, age)| age.as_secs())),
        oldest_pending_path: oldest.map(|(path, _)| path.display().to_string()),
        session_expires: (expiry > 0).then(|| {
            crate::message::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(expiry as u64))
        }),
        failed_total: failures.len(),
        failed: failures
            .into_iter()
            .take(SHOWN)
            .map(|(path, ago, kind, error)| Failed {
                path: path.display().to_string(),
                kind: kind.label().to_string(),
                error,
                seconds_ago: Some(ago),
            })
            .collect(),
        exec_children: Vec::new(),
    }
}

/// From the ledger, when the daemon does not run.
fn recorded(config: &Config) -> Result<Snapshot, String> {
    let ledger = Ledger::open_existing(&config.state_dir).map_err(|e| e.to_string())?;
    let records = ledger.records().map_err(|e| e.to_string())?;
    let (mut files, mut bytes) = (0, 0);
    let mut failed = Vec::new();
    for (relative, record) in records {
        let path = config.watch_dir.join(&relative).display().to_string();
        match record.state {
            FileState::Uploaded { .. } => {
                files += 1;
                bytes += record.identity.size;
            }
            ref state => {
                if let Some((kind, error)) = state.failure() {
                    failed.push((record.updated_unix, path, kind, error));
                }
            }
        }
    }
    failed.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(Snapshot {
        running: false,
        pid: None,
        since: None,
        uploaded_files: files,
        uploaded_bytes: bytes,
        queue: None,
        oldest_pending_seconds: None,
        oldest_pending_path: None,
        session_expires: None,
        failed_total: failed.len(),
        failed: failed
            .into_iter()
            .take(SHOWN)
            .map(|(_, path, kind, error)| Failed {
                path,
                kind: kind.label().to_string(),
                error,
                seconds_ago: None,
            })
            .collect(),
        exec_children: Vec::new(),
    })
}

/// Asks the running daemon; `None` if none answers.
fn ask(state_dir: &Path) -> Option<Result<Snapshot, String>> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket_path(state_dir)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut doc = Vec::new();
    if let Err(e) = stream.read_to_end(&mut doc) {
        return Some(Err(format!("the daemon did not answer: {e}")));
    }
    Some(serde_json::from_slice(&doc).map_err(|e| format!("unreadable answer: {e}")))
}

/// The snapshot: from the running daemon, else from the ledger.
pub fn snapshot(config: &Config) -> Result<Snapshot, String> {
    ask(&config.state_dir).unwrap_or_else(|| recorded(config))
}

/// Prints `snapshot` for people (file names escaped for the terminal).
pub fn print(snapshot: &Snapshot, out: &mut impl Write) -> std::io::Result<()> {
    match (&snapshot.since, snapshot.pid) {
        (Some(since), Some(pid)) if snapshot.running => {
            writeln!(out, "s3drop: running since {since} (pid {pid})")?
        }
        _ => writeln!(out, "s3drop: not running (from the ledger)")?,
    }
    let scope = if snapshot.running {
        "this run"
    } else {
        "recorded"
    };
    writeln!(
        out,
        "uploaded: {} files, {} bytes ({scope})",
        snapshot.uploaded_files, snapshot.uploaded_bytes
    )?;
    if let Some(queue) = snapshot.queue {
        match (
            &snapshot.oldest_pending_path,
            snapshot.oldest_pending_seconds,
        ) {
            (Some(path), Some(age)) => writeln!(
                out,
                "queue: {queue}; oldest pending: {} ({age} s)",
                printable(path)
            )?,
            _ => writeln!(out, "queue: {queue}; oldest pending: none")?,
        }
    }
    if let Some(expires) = &snapshot.session_expires {
        writeln!(out, "session expires: {expires}")?;
    }
    if !snapshot.exec_children.is_empty() {
        writeln!(
            out,
            "exec programs served by the broker: {}",
            snapshot.exec_children.len()
        )?;
        for child in &snapshot.exec_children {
            writeln!(
                out,
                "  pid {} (uid {}) for {} since {}",
                child.pid,
                child.uid,
                printable(&child.scope),
                child.since
            )?;
        }
    }
    if snapshot.failed_total == 0 {
        return writeln!(out, "failed: none");
    }
    writeln!(out, "failed: {} (newest first)", snapshot.failed_total)?;
    for f in &snapshot.failed {
        match f.seconds_ago {
            Some(ago) => writeln!(
                out,
                "  {} ({}): {} ({ago} s ago)",
                printable(&f.path),
                f.kind,
                printable(&f.error)
            )?,
            None => writeln!(
                out,
                "  {} ({}): {}",
                printable(&f.path),
                f.kind,
                printable(&f.error)
            )?,
        }
    }
    if snapshot.failed_total > snapshot.failed.len() {
        writeln!(
            out,
            "  … and {} more",
            snapshot.failed_total - snapshot.failed.len()
        )?;
    }
    Ok(())
}
