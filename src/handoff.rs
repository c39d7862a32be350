//! Handing the scoped session to other programs (seeds 001–004): `s3drop credentials`
//! prints a freshly minted session, narrowed to a sub-prefix or one key if asked, in the
//! forms AWS tools read (`credential_process` JSON, `export` lines, a credentials-file
//! section); `s3drop exec` runs a command with it in its environment. Both walk the same
//! chain as `run` and `check` ([`crate::auth::establish_for`]). Secrets go to stdout, a
//! file (0600) or the child's environment only: never to a log line or an error.

use aws_credential_types::Credentials;
use std::ffi::OsString;
use std::fmt::Display;
use std::path::Path;

use crate::auth::{self, Reach, Request};
use crate::chain::{Link, Observer};
use crate::config::Config;

/// How `credentials` prints the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The AWS SDKs' `credential_process` output (Version 1).
    Json,
    /// `export NAME='value'` lines for `eval`.
    Env,
    /// A section of the shared credentials file.
    Ini,
}

/// The variables a child gets, and those of the caller it must not see: its own keys or
/// a profile would otherwise compete with the scoped session.
const REMOVED_FOR_CHILD: [&str; 8] = [
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_CREDENTIAL_PROCESS",
];

/// A minted session and where it may be used.
pub struct Handed {
    pub credentials: Credentials,
    pub region: String,
}

/// Why a hand-off failed: one line, naming the broken link as `check` does. Never holds a
/// secret: errors come from the chain before any credential is printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandoffError(String);

/// Records the first broken link, worded as `check` words it.
struct FirstFailure {
    config: Config,
    failure: Option<String>,
}

impl Observer for FirstFailure {
    fn passed(&mut self, _: Link, _: &dyn Display) {}
    fn failed(&mut self, link: Link, error: &dyn Display) {
        self.failure.get_or_insert_with(|| {
            crate::message::explain(
                &format!("✗ {}: {error}", link.name()),
                &link.fix(Some(&self.config)),
            )
        });
    }
}

/// The narrowing asked for on the command line.
pub fn reach(key: Option<&str>, prefix: Option<&str>) -> Result<Reach, HandoffError> {
    match (key, prefix) {
        (Some(key), _) => Reach::key(key).map_err(HandoffError),
        (None, Some(sub)) => Reach::under(sub).map_err(HandoffError),
        (None, None) => Ok(Reach::Prefix),
    }
}

/// The session `reach` asks for: from the running daemon's credential broker when it is on
/// (`broker = true`) and answers, which costs no STS call; else minted here. A `duration`
/// other than the config's is always minted here (the broker's sessions are
/// `session_duration_seconds` long).
pub async fn session(
    config: &Config,
    reach: Reach,
    duration: Option<u64>,
) -> Result<Handed, HandoffError> {
    if duration.is_none()
        && let Some(socket) = &config.broker
        && let Some(answered) = from_broker(socket, &reach).await
    {
        return answered;
    }
    mint(config, reach, duration).await
}

/// Asks the broker on `socket`; `None` when it cannot serve (no daemon, no session yet,
/// this user may not open the socket): the caller mints its own.
async fn from_broker(socket: &Path, reach: &Reach) -> Option<Result<Handed, HandoffError>> {
    use crate::broker::wire::Answer;
    match ask_broker(socket, &question(reach)).await {
        Asked::Answered(Answer::Session {
            access_key_id,
            secret_access_key,
            session_token,
            expiration,
            region,
        }) => Some(Ok(Handed {
            credentials: Credentials::new(
                access_key_id,
                secret_access_key,
                Some(session_token),
                expiration.map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)),
                "s3drop credential broker",
            ),
            region,
        })),
        Asked::Answered(_) => Some(Err(not_asked())),
        Asked::Refused(e) => Some(Err(e)),
        Asked::NotServed { why, denied: true } => {
            tracing::warn!(
                "cannot use the credential broker ({why}); minting a session here instead"
            );
            None
        }
        Asked::NotServed { why, denied: false } => {
            tracing::debug!("no credential broker serves ({why}); minting here");
            None
        }
    }
}

/// What asking the broker came to.
enum Asked {
    /// A session or an endpoint (which one the caller checks).
    Answered(crate::broker::wire::Answer),
    /// Refused, or STS did not mint it: the caller fails with it.
    Refused(HandoffError),
    /// No broker could serve (no daemon, no session yet, this user may not open the
    /// socket: `denied`): the caller mints its own.
    NotServed { why: String, denied: bool },
}

async fn ask_broker(socket: &Path, question: &crate::broker::wire::Ask) -> Asked {
    use crate::broker::wire::{Answer, ask};
    match ask(socket, question).await {
        Ok(Answer::Refused { error }) => Asked::Refused(HandoffError(format!(
            "the credential broker refused: {error}"
        ))),
        Ok(Answer::Failed { error }) => Asked::Refused(HandoffError(format!(
            "the credential broker could not mint the session: {error}"
        ))),
        Ok(Answer::Unavailable { reason }) => Asked::NotServed {
            why: reason,
            denied: false,
        },
        Ok(answer) => Asked::Answered(answer),
        Err(e) if e.denied => Asked::NotServed {
            why: format!("{}; is this user in the s3drop group?", e.message),
            denied: true,
        },
        Err(e) => Asked::NotServed {
            why: e.message,
            denied: false,
        },
    }
}

fn not_asked() -> HandoffError {
    HandoffError("the credential broker answered a question it was not asked".into())
}

/// Where a program `exec` starts fetches its sessions (the container credentials
/// protocol), when the broker registered it.
pub struct Endpoint {
    pub uri: String,
    pub token: String,
    pub region: String,
}

/// What the broker made of an `exec` registration.
pub enum Registration {
    Served(Endpoint),
    /// Refused or failed: the command is not run.
    Refused(HandoffError),
    /// No broker could serve (why): the command gets a session minted here.
    NotServed(String),
}

/// Registers this process (which then becomes the command: `exec(2)` keeps the pid) with
/// the broker on `socket` for `reach`, until it exits or `max_seconds` pass.
pub async fn register(socket: &Path, reach: &Reach, max_seconds: Option<u64>) -> Registration {
    use crate::broker::wire::{Answer, ExecAsk};
    let mut question = question(reach);
    question.exec = Some(ExecAsk {
        max_duration_seconds: max_seconds,
    });
    match ask_broker(socket, &question).await {
        Asked::Answered(Answer::Endpoint { uri, token, region }) => {
            Registration::Served(Endpoint { uri, token, region })
        }
        Asked::Answered(_) => Registration::Refused(not_asked()),
        Asked::Refused(e) => Registration::Refused(e),
        Asked::NotServed { why, .. } => Registration::NotServed(why),
    }
}

/// The broker's question for `reach`.
fn question(reach: &Reach) -> crate::broker::wire::Ask {
    use crate::broker::wire::Ask;
    match reach {
        Reach::Prefix => Ask::default(),
        Reach::Under(sub) => Ask {
            prefix: Some(sub.clone()),
            ..Ask::default()
        },
        Reach::Key(key) => Ask {
            key: Some(key.clone()),
            ..Ask::default()
        },
    }
}

/// Mints the session: `reach` under the configured prefix, for `duration` seconds (the
/// config's by default, within the limits of its session type).
pub async fn mint(
    config: &Config,
    reach: Reach,
    duration: Option<u64>,
) -> Result<Handed, HandoffError> {
    let duration = match duration {
        Some(seconds) => config
            .session
            .check_duration(seconds)
            .map_err(|e| HandoffError(format!("--duration {e}")))?,
        None => config.session_duration,
    };
    let mut observer = FirstFailure {
        config: config.clone(),
        failure: None,
    };
    let request = Request { reach, duration };
    match auth::establish_for(config, &request, &mut observer).await {
        Ok(session) => {
            let credentials = session
                .credentials
                .get()
                .await
                .map_err(|e| HandoffError(e.to_string()))?;
            Ok(Handed {
                credentials,
                region: session.facts.region,
            })
        }
        Err(e) => Err(HandoffError(
            observer.failure.unwrap_or_else(|| e.to_string()),
        )),
    }
}

/// The session in `format`.
pub fn render(handed: &Handed, format: Format, profile_name: &str) -> String {
    let c = &handed.credentials;
    let token = c.session_token().unwrap_or_default();
    let expiration = c.expiry().map(crate::message::rfc3339);
    match format {
        Format::Json => {
            let mut doc = serde_json::json!({
                "Version": 1,
                "AccessKeyId": c.access_key_id(),
                "SecretAccessKey": c.secret_access_key(),
                "SessionToken": token,
            });
            if let Some(expiration) = expiration {
                doc["Expiration"] = expiration.into();
            }
            format!("{doc:#}\n")
        }
        Format::Env => environment(handed)
            .into_iter()
            .map(|(name, value)| format!("export {name}={}\n", shell_quote(&value)))
            .collect(),
        Format::Ini => format!(
            "[{profile_name}]\naws_access_key_id = {}\naws_secret_access_key = {}\n\
             aws_session_token = {token}\n",
            c.access_key_id(),
            c.secret_access_key()
        ),
    }
}

/// The variables that carry the session, as the SDKs and aws-cli read them.
fn environment(handed: &Handed) -> Vec<(&'static str, String)> {
    let c = &handed.credentials;
    let mut vars = vec![
        ("AWS_ACCESS_KEY_ID", c.access_key_id().to_string()),
        ("AWS_SECRET_ACCESS_KEY", c.secret_access_key().to_string()),
        (
            "AWS_SESSION_TOKEN",
            c.session_token().unwrap_or_default().to_string(),
        ),
    ];
    if let Some(expiry) = c.expiry() {
        vars.push(("AWS_CREDENTIAL_EXPIRATION", crate::message::rfc3339(expiry)));
    }
    // AWS_DEFAULT_REGION too: aws-cli v1 reads only that one.
    vars.push(("AWS_REGION", handed.region.clone()));
    vars.push(("AWS_DEFAULT_REGION", handed.region.clone()));
    vars
}

/// Single quotes, with `'` written as `'\''`: nothing inside is expanded by a shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A profile name fit for a `[section]` header.
pub fn check_profile_name(name: &str) -> Result<(), HandoffError> {
    if name.is_empty() || name.chars().any(|c| c == '[' || c == ']' || c.is_control()) {
        return Err(HandoffError(format!(
            "--profile-name {name:?} cannot be a credentials-file section name"
        )));
    }
    Ok(())
}

/// Writes `text` to `path` atomically with mode 0600 (see [`crate::file::replace_atomically`]).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    crate::file::replace_atomically(path, text.as_bytes(), 0o600, ".s3drop-credentials")
}

/// What a program fetching its sessions from the broker's endpoint must not see: anything
/// the SDKs' default chains would take before the container credentials (keys, a profile,
/// web identity, a relative container URI or a token file). The shared config and
/// credentials files are set to /dev/null for the same reason: a `[default]` profile with
/// keys would otherwise outrank the scoped session.
const REMOVED_FOR_ENDPOINT: [&str; 5] = [
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
];

/// Replaces this process with `command`, which fetches (and refreshes) its sessions from
/// the broker's `endpoint`. Returns only if the command could not be started.
pub fn exec_with_endpoint(endpoint: &Endpoint, command: &[OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(&command[0]);
    child.args(&command[1..]);
    for name in REMOVED_FOR_CHILD.iter().chain(&REMOVED_FOR_ENDPOINT) {
        child.env_remove(name);
    }
    child
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &endpoint.uri)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", &endpoint.token)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_REGION", &endpoint.region)
        .env("AWS_DEFAULT_REGION", &endpoint.region);
    child.exec()
}

/// Replaces this process with `command`, the session in its environment. Returns only if
/// the command could not be started.
pub fn exec(handed: &Handed, command: &[OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(&command[0]);
    child.args(&command[1..]);
    for name in REMOVED_FOR_CHILD {
        child.env_remove(name);
    }
    child.envs(environment(handed));
    // exec(2): stdin, stdout, stderr, signals and the exit status are the command's own.
    child.exec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn handed() -> Handed {
        Handed {
            credentials: Credentials::new(
                "ASIAEXAMPLE",
                "se'cret",
                Some("to$ken`x`".into()),
                Some(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
                "test",
            ),
            region: "eu-west-1".into(),
        }
    }

    #[test]
    fn json_is_the_credential_process_format() {
        let doc: serde_json::Value =
            serde_json::from_str(&render(&handed(), Format::Json, "x")).unwrap();
        assert_eq!(doc["Version"], 1);
        assert_eq!(doc["AccessKeyId"], "ASIAEXAMPLE");
        assert_eq!(doc["SecretAccessKey"], "se'cret");
        assert_eq!(doc["SessionToken"], "to$ken`x`");
        assert_eq!(doc["Expiration"], "2027-01-15T08:00:00Z");
    }

    #[test]
    fn env_lines_survive_a_shell_unexpanded() {
        let text = render(&handed(), Format::Env, "x");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{text}\nprintf '%s|%s|%s' \"$AWS_SECRET_ACCESS_KEY\" \"$AWS_SESSION_TOKEN\" \
                 \"$AWS_CREDENTIAL_EXPIRATION\""
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "se'cret|to$ken`x`|2027-01-15T08:00:00Z"
        );
        assert!(text.contains("export AWS_REGION='eu-west-1'"), "{text}");
    }

    #[test]
    fn ini_is_a_named_section() {
        let text = render(&handed(), Format::Ini, "upload");
        assert!(
            text.starts_with("[upload]\naws_access_key_id = ASIAEXAMPLE\n"),
            "{text}"
        );
        assert!(text.contains("aws_session_token = to$ken`x`\n"), "{text}");
        assert!(check_profile_name("a]b").is_err());
        assert!(check_profile_name("").is_err());
        check_profile_name("s3drop").unwrap();
    }

    #[test]
    fn output_file_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "old").unwrap();
        write_private(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no leftovers"
        );
    }
}
