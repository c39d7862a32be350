//! What the broker's socket carries: one JSON line asked, one JSON line answered, then the
//! connection closes. The caller is untrusted: what it asks is parsed with a size bound and
//! checked as `s3drop credentials` checks its own flags ([`crate::handoff::reach`]).

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The longest question the broker reads.
pub const MAX_ASK_BYTES: usize = 4096;
/// The longest answer a client reads (a session is about 1.5 KB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long a client waits for the broker (a mint is one STS call).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A session asked for: the whole prefix, or `--prefix SUB` / `--key KEY` under it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `s3drop exec`: register the asking process (which then becomes the command) for
    /// sessions from the loopback endpoint, instead of one session now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAsk>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAsk {
    /// The registration ends then, if the program has not exited before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_seconds: Option<u64>,
}

/// What the broker answers.
#[derive(Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Session {
        access_key_id: String,
        secret_access_key: String,
        session_token: String,
        /// Unix seconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        expiration: Option<u64>,
        region: String,
    },
    /// `exec`: fetch sessions from `uri` with `token` (the container credentials protocol).
    Endpoint {
        uri: String,
        token: String,
        region: String,
    },
    /// The scope cannot be granted: the caller's to fix.
    Refused { error: String },
    /// STS did not mint it.
    Failed { error: String },
    /// The daemon has no session yet (IMDS or STS not answering, the start-up jitter):
    /// the caller may mint its own.
    Unavailable { reason: String },
}

/// Never prints a secret.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Session { expiration, .. } => f
                .debug_struct("Session")
                .field("expiration", expiration)
                .finish_non_exhaustive(),
            Answer::Endpoint { uri, .. } => f
                .debug_struct("Endpoint")
                .field("uri", uri)
                .finish_non_exhaustive(),
            Answer::Refused { error } => f.debug_struct("Refused").field("error", error).finish(),
            Answer::Failed { error } => f.debug_struct("Failed").field("error", error).finish(),
            Answer::Unavailable { reason } => f
                .debug_struct("Unavailable")
                .field("reason", reason)
                .finish(),
        }
    }
}

impl Answer {
    pub fn session(credentials: &Credentials, region: &str) -> Answer {
        Answer::Session {
            access_key_id: credentials.access_key_id().to_string(),
            secret_access_key: credentials.secret_access_key().to_string(),
            session_token: credentials.session_token().unwrap_or_default().to_string(),
            expiration: credentials.expiry().and_then(|e| {
                e.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs())
            }),
            region: region.to_string(),
        }
    }
}

/// Why no broker answered.
#[derive(Debug)]
pub struct Unanswered {
    /// The socket exists but this user may not open it (not in its group).
    pub denied: bool,
    pub message: String,
}

/// Asks the broker on `socket`; the answer, or why none came.
pub async fn ask(socket: &Path, ask: &Ask) -> Result<Answer, Unanswered> {
    let unanswered = |denied: bool, message: String| Unanswered { denied, message };
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            let denied = e.kind() == std::io::ErrorKind::PermissionDenied;
            unanswered(denied, format!("{}: {e}", socket.display()))
        })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(ask).expect("an ask serializes");
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|e| unanswered(false, format!("cannot ask the broker: {e}")))?;
        let mut answer = Vec::new();
        let mut reader = tokio::io::BufReader::new(read).take(MAX_ANSWER_BYTES as u64);
        reader
            .read_until(b'\n', &mut answer)
            .await
            .map_err(|e| unanswered(false, format!("the broker did not answer: {e}")))?;
        serde_json::from_slice(&answer)
            .map_err(|e| unanswered(false, format!("the broker's answer is unreadable: {e}")))
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(unanswered(
            false,
            format!(
                "the broker on {} did not answer within {} s",
                socket.display(),
                CLIENT_TIMEOUT.as_secs()
            ),
        )),
    }
}
