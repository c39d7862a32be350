//! The broker's Unix socket: bound at start (a socket that cannot be made is a start-up
//! error), answering once the daemon has its session. Each connection: who it is
//! (`SO_PEERCRED`), one bounded question, one answer, closed.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::children::Children;
use super::wire::{Answer, Ask, MAX_ASK_BYTES};
use super::{Broker, HandOutError};
use crate::connections::Connections;
use crate::events::{BrokerRefused, CredentialsHanded, Event};

/// Connections open at once; a new one closes the oldest.
const MAX_CONNECTIONS: usize = 64;
/// A connection's question must arrive, and its answer be taken, this soon.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// After a failed accept (no descriptor left), before the next try.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The broker's socket, bound.
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
}

/// Makes the socket at `path`: its directory must exist or be made, and not be writable by
/// others (who could replace the socket); a stale socket of an earlier run is replaced,
/// anything else there is refused. Mode 0660: the daemon's user and group.
pub fn bind(path: &Path) -> Result<Bound, String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("broker_socket {} has no directory", path.display()))?;
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)))
            .map_err(|e| {
                format!(
                    "cannot make broker_socket's directory {}: {e}",
                    dir.display()
                )
            })?;
    }
    let mode = std::fs::metadata(dir)
        .map_err(|e| format!("broker_socket's directory {}: {e}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o002 != 0 {
        return Err(format!(
            "broker_socket's directory {} is writable by every user (mode {:o}): anyone could \
             put their own socket in its place; use a directory only s3drop may write, such \
             as /run/s3drop",
            dir.display(),
            mode & 0o7777
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot replace the stale socket {}: {e}", path.display()))?;
        }
        Ok(_) => {
            return Err(format!(
                "broker_socket {} exists and is not a socket; s3drop does not replace it",
                path.display()
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on broker_socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("cannot set broker_socket's mode: {e}"))?;
    Ok(Bound {
        listener,
        path: path.to_owned(),
    })
}

/// What every connection needs.
pub struct Shared {
    /// The broker, once the daemon has its session.
    pub broker: Arc<OnceLock<Broker>>,
    /// Why the daemon has no session yet.
    pub waiting_for: Arc<std::sync::Mutex<String>>,
    pub children: Arc<Children>,
    /// Where registered programs fetch their sessions.
    pub endpoint: std::net::SocketAddr,
    /// Ends every registration when the daemon stops.
    pub cancel: CancellationToken,
}

impl Bound {
    /// Answers on the socket until `cancel`.
    pub fn serve(self, shared: Shared, tracker: &TaskTracker) {
        let Bound { listener, path } = self;
        let shared = Arc::new(shared);
        tracker.spawn(async move {
            let open = Connections::new(MAX_CONNECTIONS);
            loop {
                let stream = tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => {
                            open.close_oldest();
                            tokio::time::sleep(ACCEPT_PAUSE).await;
                            continue;
                        }
                    },
                };
                let (id, closed) = open.admit();
                let (open, shared) = (open.clone(), shared.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = answer(stream, &shared) => {}
                        _ = closed.cancelled() => {}
                        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                    }
                    open.forget(id);
                });
            }
            let _ = std::fs::remove_file(&path);
        });
    }
}

/// One connection: the question, the answer.
async fn answer(stream: tokio::net::UnixStream, shared: &Shared) {
    let peer = stream.peer_cred().ok();
    let (uid, pid) = (
        peer.as_ref().map(|p| p.uid()),
        peer.as_ref().and_then(|p| p.pid()),
    );
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_ASK_BYTES as u64 + 1);
    let asked = match reader.read_until(b'\n', &mut line).await {
        Ok(_) if line.len() > MAX_ASK_BYTES => {
            Err(format!("the question is longer than {MAX_ASK_BYTES} bytes"))
        }
        Ok(_) => serde_json::from_slice::<Ask>(&line)
            .map_err(|e| format!("the question is unreadable: {e}")),
        Err(e) => Err(format!("cannot read the question: {e}")),
    };
    let answer = match asked {
        Err(error) => refused(uid, pid, None, HandOutError::Refused(error)),
        Ok(ask) => answer_ask(ask, uid, pid, shared).await,
    };
    let mut doc = serde_json::to_vec(&answer).expect("an answer serializes");
    doc.push(b'\n');
    let _ = write.write_all(&doc).await;
}

async fn answer_ask(ask: Ask, uid: Option<u32>, pid: Option<i32>, shared: &Shared) -> Answer {
    let reach = match crate::handoff::reach(ask.key.as_deref(), ask.prefix.as_deref()) {
        Ok(reach) => reach,
        Err(e) => return refused(uid, pid, None, HandOutError::Refused(e.to_string())),
    };
    let Some(broker) = shared.broker.get() else {
        return Answer::Unavailable {
            reason: format!(
                "the daemon has no session yet ({})",
                shared.waiting_for.lock().expect("status lock")
            ),
        };
    };
    let scope = broker.describe(&reach);
    if let Some(exec) = ask.exec {
        let (Some(uid), Some(pid)) = (uid, pid) else {
            let error = HandOutError::Refused("the asking process cannot be identified".into());
            return refused(uid, pid, Some(&scope), error);
        };
        let max = exec.max_duration_seconds.map(Duration::from_secs);
        // The scope must be one the broker can mint (a policy too long is refused now,
        // not at the program's first call).
        if let Err(error) = broker.hand_out(&reach).await {
            return refused(Some(uid), Some(pid), Some(&scope), error);
        }
        return match shared
            .children
            .register(reach, scope.clone(), uid, pid, max, &shared.cancel)
        {
            Ok(token) => Answer::Endpoint {
                uri: super::endpoint::uri(shared.endpoint),
                token,
                region: broker.region().to_string(),
            },
            Err(error) => refused(
                Some(uid),
                Some(pid),
                Some(&scope),
                HandOutError::Refused(error),
            ),
        };
    }
    match broker.hand_out(&reach).await {
        Ok(credentials) => {
            CredentialsHanded {
                uid,
                pid,
                scope: &scope,
                expiry: credentials.expiry(),
                via: "socket",
            }
            .emit();
            Answer::session(&credentials, broker.region())
        }
        Err(error) => refused(uid, pid, Some(&scope), error),
    }
}

/// Logs and counts a refusal; its answer.
fn refused(uid: Option<u32>, pid: Option<i32>, scope: Option<&str>, error: HandOutError) -> Answer {
    BrokerRefused {
        uid,
        pid,
        scope,
        error: &error,
    }
    .emit();
    match error {
        HandOutError::Refused(error) => Answer::Refused { error },
        HandOutError::Failed(error) => Answer::Failed { error },
    }
}
