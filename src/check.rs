//! `s3drop check`: walks the chain the daemon depends on (the very one `run` walks,
//! [`crate::chain`] and [`crate::auth::establish`]), one line per link, then proves the
//! session's scope with two probe writes. It stops at the first broken link, since every
//! later link depends on it, and says what to fix.

use std::fmt::Display;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;

use crate::auth::{self, Session};
use crate::chain::{self, Link, Observer};
use crate::config::Config;
use crate::s3::{ErrorClass, S3};

/// Small and clearly named; the session may not delete, so the probe overwrites one key.
const PROBE_NAME: &str = "s3drop-check-probe";
const PROBE_BODY: &[u8] = b"written by `s3drop check` to prove the upload session can write here\n";

/// How `check` prints: a line per check as it goes, or one JSON document at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(serde::Serialize)]
struct Entry {
    check: &'static str,
    ok: bool,
    /// Not needed with this config (and so not walked): not a failure, not a pass.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    skipped: bool,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

struct Report<W: Write> {
    out: W,
    format: Format,
    entries: Vec<Entry>,
    failed: bool,
    /// Known once the config is valid; names the role in fixes.
    config: Option<Config>,
}

impl<W: Write> Observer for Report<W> {
    fn passed(&mut self, link: Link, detail: &dyn Display) {
        self.record(link, Outcome::Passed, detail, None);
    }

    fn skipped(&mut self, link: Link, why: &dyn Display) {
        self.record(link, Outcome::Skipped, why, None);
    }

    fn failed(&mut self, link: Link, error: &dyn Display) {
        let fix = link.fix(self.config.as_ref());
        self.failed_with(link, error, fix);
    }
}

impl<W: Write> Report<W> {
    /// A broken link whose fix is known better here than by the link alone.
    fn failed_with(&mut self, link: Link, error: &dyn Display, fix: String) {
        self.failed = true;
        self.record(link, Outcome::Failed, error, Some(fix));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Skipped,
    Failed,
}

impl<W: Write> Report<W> {
    /// One line for people (with the fix under a failure), one entry for `--json`.
    fn record(&mut self, link: Link, outcome: Outcome, detail: &dyn Display, fix: Option<String>) {
        let name = link.name();
        // One readable line each: a long cause loses its middle, the fix (its own line)
        // stays whole.
        let detail = crate::message::fit(
            &detail.to_string(),
            crate::message::MAX_CHARS - name.chars().count() - 4,
        );
        if self.format == Format::Text {
            let _ = match outcome {
                Outcome::Passed => writeln!(self.out, "✔ {name}: {detail}"),
                Outcome::Skipped => writeln!(self.out, "- {name}: skipped, {detail}"),
                Outcome::Failed => writeln!(self.out, "✗ {name}: {detail}"),
            };
            if let Some(fix) = &fix {
                let _ = writeln!(self.out, "  fix: {fix}");
            }
        }
        self.entries.push(Entry {
            check: link.name(),
            ok: outcome != Outcome::Failed,
            skipped: outcome == Outcome::Skipped,
            detail,
            fix,
        });
    }
}

impl<W: Write> Report<W> {
    fn finish(mut self) -> bool {
        let ok = !self.failed;
        match self.format {
            Format::Text if ok => {
                let _ = writeln!(self.out, "all checks passed");
            }
            Format::Text => {}
            Format::Json => {
                let doc = serde_json::json!({ "ok": ok, "checks": self.entries });
                let _ = writeln!(self.out, "{doc:#}");
            }
        }
        ok
    }
}

/// Prints the checks to `out`; returns whether every one passed.
pub async fn run(config_path: &Path, format: Format, out: impl Write) -> bool {
    let mut r = Report {
        out,
        format,
        entries: Vec::new(),
        failed: false,
        config: None,
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            r.failed(Link::Config, &e);
            return r.finish();
        }
    };
    r.passed(Link::Config, &format!("{} is valid", config_path.display()));
    r.config = Some(config.clone());
    if chain::local(&config, &mut r).is_err() {
        return r.finish();
    }
    if let Ok(session) = auth::establish(&config, &mut r).await {
        probe(&config, &session, &mut r).await;
    }
    r.finish()
}

/// Writes one probe under the prefix (must succeed) and one outside it (must be denied).
async fn probe<W: Write>(config: &Config, session: &Session, r: &mut Report<W>) {
    let plan = match crate::upload::Plan::for_session(config, session) {
        Ok(plan) => plan,
        Err(e) => return r.failed(Link::Config, &e),
    };
    let s3 = S3::new(
        &session.sdk,
        &config.bucket,
        config.force_path_style,
        session.credentials.clone(),
        // The probe overwrites its one key each time, whatever `overwrite` says.
        plan.write.allowing_overwrite(),
    );
    let bucket = &config.bucket;
    let inside = format!("{}{PROBE_NAME}", session.scope.prefix);
    if let Err(e) = s3.put_bytes(&inside, Bytes::from_static(PROBE_BODY)).await {
        let problem = format!("PutObject s3://{bucket}/{inside} failed: {e}");
        let fix = session.scope.write_fix(config);
        return r.failed_with(Link::WriteUnderPrefix, &problem, fix);
    }
    r.passed(
        Link::WriteUnderPrefix,
        &format!("s3://{bucket}/{inside} written"),
    );

    let outside = outside_key(&session.scope.prefix);
    match s3.put_bytes(&outside, Bytes::from_static(PROBE_BODY)).await {
        Err(e) if e.class() == ErrorClass::Denied => r.passed(
            Link::ScopeHolds,
            &format!("a write to s3://{bucket}/{outside} was denied"),
        ),
        Ok(_) => r.failed(
            Link::ScopeHolds,
            &format!(
                "a write outside the prefix succeeded (s3://{bucket}/{outside}); the session \
                 policy did not confine the session"
            ),
        ),
        Err(e) => r.failed(
            Link::ScopeHolds,
            &format!("the probe outside the prefix failed in an unexpected way: {e}"),
        ),
    }
}

/// A key that cannot be under `prefix`.
fn outside_key(prefix: &str) -> String {
    let mut key = format!("{PROBE_NAME}-outside-prefix");
    while key.starts_with(prefix) {
        key.insert(0, '_');
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_key_is_never_under_the_prefix() {
        for prefix in ["i-1/", "s3", "s3drop-check-probe-outside-prefix", "_s3"] {
            assert!(!outside_key(prefix).starts_with(prefix), "{prefix}");
        }
    }

    #[tokio::test]
    async fn a_broken_local_link_stops_the_walk_before_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3drop.toml");
        let missing = dir.path().join("missing");
        let state = dir.path().join("state");
        std::fs::write(
            &config,
            format!(
                "watch_dir = {missing:?}\nstate_dir = {state:?}\nbucket = \"b-1\"\n\
                 role_arn = \"arn:aws:iam::123456789012:role/u\"\n"
            ),
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(!run(&config, Format::Text, &mut out).await);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("✔ config"), "{text}");
        assert!(text.contains("✗ watch_dir"), "{text}");
        assert!(
            !text.contains("state_dir"),
            "stops at the first broken link: {text}"
        );
        assert!(!text.contains("instance metadata"), "{text}");
    }
}
