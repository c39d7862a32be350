//! `s3drop check`: walks the chain the daemon depends on, one line per link, and stops at
//! the first broken one with what to fix.

use std::io::Write;
use std::path::Path;

use crate::config::Config;
use crate::credentials;
use crate::session;
use crate::upload::UploadError;

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
    check: String,
    ok: bool,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

struct Report<W: Write> {
    out: W,
    format: Format,
    entries: Vec<Entry>,
    failed: bool,
}

impl<W: Write> Report<W> {
    fn ok(&mut self, what: &str, detail: impl std::fmt::Display) {
        if self.format == Format::Text {
            let _ = writeln!(self.out, "✔ {what}: {detail}");
        }
        self.entries.push(Entry {
            check: what.to_string(),
            ok: true,
            detail: detail.to_string(),
            fix: None,
        });
    }

    fn fail(&mut self, what: &str, problem: impl std::fmt::Display, fix: &str) {
        self.failed = true;
        if self.format == Format::Text {
            let _ = writeln!(self.out, "✗ {what}: {problem}");
            let _ = writeln!(self.out, "  fix: {fix}");
        }
        self.entries.push(Entry {
            check: what.to_string(),
            ok: false,
            detail: problem.to_string(),
            fix: Some(fix.to_string()),
        });
    }

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

/// Prints the checks to `out`; returns whether every one passed. The chain stops at its
/// first broken link, since every later link depends on it.
pub async fn run(config_path: &Path, format: Format, out: impl Write) -> bool {
    let mut r = Report {
        out,
        format,
        entries: Vec::new(),
        failed: false,
    };
    let config = match Config::load(config_path) {
        Ok(c) => {
            r.ok("config", format!("{} is valid", config_path.display()));
            c
        }
        Err(e) => {
            r.fail(
                "config",
                e,
                "correct the config file (see `s3drop run --help`)",
            );
            return r.finish();
        }
    };
    check_dirs(&config, &mut r);
    check_chain(&config, &mut r).await;
    r.finish()
}

fn check_dirs<W: Write>(config: &Config, r: &mut Report<W>) {
    match crate::watch::check_root(&config.watch_dir) {
        Ok(()) => r.ok(
            "watch_dir",
            format!("{} is readable", config.watch_dir.display()),
        ),
        Err(e) => r.fail(
            "watch_dir",
            e,
            "create the directory and make it readable by the s3drop user",
        ),
    }
    let probe = config.state_dir.join(".s3drop-check-write-probe");
    let writable = std::fs::create_dir_all(&config.state_dir)
        .and_then(|()| std::fs::write(&probe, b"probe"))
        .and_then(|()| std::fs::remove_file(&probe));
    match writable {
        Ok(()) => r.ok(
            "state_dir",
            format!("{} is writable", config.state_dir.display()),
        ),
        Err(e) => r.fail(
            "state_dir",
            format!("{} is not writable: {e}", config.state_dir.display()),
            "give the s3drop user write access (systemd: StateDirectory=s3drop)",
        ),
    }
}

async fn check_chain<W: Write>(config: &Config, r: &mut Report<W>) {
    let (imds, facts) = match session::instance_facts(config).await {
        Ok(v) => v,
        Err(e) => {
            r.fail(
                "instance metadata (IMDSv2)",
                e,
                "run on EC2 with IMDSv2 enabled; in containers set the metadata hop limit to 2",
            );
            return;
        }
    };
    r.ok(
        "instance metadata (IMDSv2)",
        format!("answered; instance {}", facts.instance_id),
    );
    let region_source = if config.region.is_some() {
        "from the config"
    } else if std::env::var_os("AWS_REGION").is_some()
        || std::env::var_os("AWS_DEFAULT_REGION").is_some()
    {
        "from AWS_REGION"
    } else {
        "from IMDS"
    };
    r.ok("region", format!("{} ({region_source})", facts.region));
    let scope = match session::scope(config, &facts) {
        Ok(s) => s,
        Err(e) => {
            r.fail("key prefix", e, "correct `key_prefix`");
            return;
        }
    };
    r.ok(
        "session policy",
        format!(
            "{} on {} only ({} characters)",
            crate::policy::ACTIONS.join(", "),
            scope.resource,
            scope.policy.len()
        ),
    );
    let instance_role = credentials::instance_role_provider(imds);
    if let Err(e) = credentials::check_instance_role(&instance_role).await {
        r.fail(
            "instance role",
            e,
            "attach an instance profile whose role may call sts:AssumeRole on the upload role",
        );
        return;
    }
    r.ok("instance role", "temporary credentials received from IMDS");
    let (base, creds) = session::upload_credentials(config, &facts, &scope, instance_role).await;
    if let Err(e) = creds.get().await {
        r.fail(
            "assume upload role",
            e,
            &format!(
                "let the instance role assume {}: its trust policy must name the instance role \
                 and the instance role's policy must allow sts:AssumeRole on it",
                config.role_arn
            ),
        );
        return;
    }
    r.ok(
        "assume upload role",
        format!("{} with the session policy", config.role_arn),
    );
    let uploader = session::uploader(config, &base, &creds);

    let inside = format!("{}{PROBE_NAME}", scope.prefix);
    match uploader.put_bytes(&inside, PROBE_BODY).await {
        Ok(()) => r.ok(
            "write under prefix",
            format!("s3://{}/{inside} written", config.bucket),
        ),
        Err(e) => {
            r.fail(
                "write under prefix",
                format!("PutObject s3://{}/{inside} failed: {e}", config.bucket),
                &format!(
                    "the upload role {} must allow s3:PutObject and s3:AbortMultipartUpload on {} (and no bucket policy may \
                     deny it)",
                    config.role_arn, scope.resource
                ),
            );
            return;
        }
    }

    let outside = outside_key(&scope.prefix);
    match uploader.put_bytes(&outside, PROBE_BODY).await {
        Err(UploadError::Denied { .. }) => r.ok(
            "scope holds",
            format!("a write to s3://{}/{outside} was denied", config.bucket),
        ),
        Ok(()) => r.fail(
            "scope holds",
            format!(
                "a write outside the prefix succeeded (s3://{}/{outside}); the session policy \
                 did not confine the session",
                config.bucket
            ),
            "delete that probe object and report this: the upload session must not write \
             outside its prefix",
        ),
        Err(e) => r.fail(
            "scope holds",
            format!("the probe outside the prefix failed in an unexpected way: {e}"),
            "check the S3 endpoint and bucket",
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
}
