//! The chain s3drop depends on, link by link, walked the same way by `run` and `check`:
//! the local prerequisites here ([`local`]: watch_dir, state_dir, move_to), then the
//! credential chain ([`crate::auth::establish`]). Each link reports to an [`Observer`]:
//! `check` prints every step, `run` only takes the result.

use std::fmt::Display;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::{AfterUpload, Config, SessionType};

/// One link of the chain, in the order they are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Config,
    WatchDir,
    StateDir,
    MoveTo,
    InstanceMetadata,
    Region,
    SessionPolicy,
    InstanceRole,
    EnvironmentKeys,
    SourceProfile,
    UploadRole,
    FederationToken,
    WriteUnderPrefix,
    ScopeHolds,
}

impl Link {
    pub const ALL: [Link; 14] = [
        Link::Config,
        Link::WatchDir,
        Link::StateDir,
        Link::MoveTo,
        Link::InstanceMetadata,
        Link::Region,
        Link::SessionPolicy,
        Link::InstanceRole,
        Link::EnvironmentKeys,
        Link::SourceProfile,
        Link::UploadRole,
        Link::FederationToken,
        Link::WriteUnderPrefix,
        Link::ScopeHolds,
    ];

    /// The name `check` prints (and `check --json` reports as `check`).
    pub fn name(self) -> &'static str {
        match self {
            Link::Config => "config",
            Link::WatchDir => "watch_dir",
            Link::StateDir => "state_dir",
            Link::MoveTo => "move_to",
            Link::InstanceMetadata => "instance metadata (IMDSv2)",
            Link::Region => "region",
            Link::SessionPolicy => "session policy",
            Link::InstanceRole => "instance role",
            Link::EnvironmentKeys => "environment credentials",
            Link::SourceProfile => "source profile",
            Link::UploadRole => "assume upload role",
            Link::FederationToken => "federation token",
            Link::WriteUnderPrefix => "write under prefix",
            Link::ScopeHolds => "scope holds",
        }
    }

    /// What an operator does when this link is broken: the one place each fix is worded
    /// (errors name their link; `check`, the journal, STATUS and `credentials` show this).
    /// At most [`MAX_FIX_CHARS`], so the error before it keeps room in a 300-character line.
    pub fn fix(self, config: Option<&Config>) -> String {
        let role = config
            .and_then(|c| c.session.role_arn())
            .map_or("the upload role".to_string(), ToString::to_string);
        match self {
            Link::Config => "correct the config file (see `s3drop run --help`)".into(),
            Link::WatchDir => "create the directory and make it readable by the s3drop user".into(),
            Link::StateDir => {
                "give the s3drop user write access (systemd: StateDirectory=s3drop)".into()
            }
            Link::MoveTo => "create move_to on watch_dir's filesystem, writable by the s3drop \
                             user (systemd: ReadWritePaths=)"
                .into(),
            Link::InstanceMetadata => "run on EC2 with IMDSv2 enabled (in a container, set \
                                       HttpPutResponseHopLimit to 2); if IMDS is closed to \
                                       all but the s3drop user (docs/IMDS.md), let the \
                                       daemon answer: broker = true"
                .into(),
            Link::Region => "set `region` in the config or AWS_REGION".into(),
            Link::SessionPolicy => "correct `key_prefix`".into(),
            Link::InstanceRole => "attach an instance profile whose role may call \
                                   sts:AssumeRole on the upload role"
                .into(),
            Link::EnvironmentKeys => "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
                                      AWS_SESSION_TOKEN) in s3drop's environment (systemd: \
                                      EnvironmentFile=)"
                .into(),
            Link::SourceProfile => "create the profile (`aws configure --profile NAME`) for \
                                    the user s3drop runs as, or set AWS_CONFIG_FILE / \
                                    AWS_SHARED_CREDENTIALS_FILE"
                .into(),
            Link::UploadRole => "the upload role must trust the base credentials' principal \
                                 (the instance role), which needs sts:AssumeRole on it"
                .into(),
            Link::FederationToken => "use an IAM user's long-term keys as the source, allowed \
                                      sts:GetFederationToken and s3:PutObject on the prefix \
                                      (see docs/IAM.md)"
                .into(),
            Link::WriteUnderPrefix => format!(
                "{} must allow the session policy's actions on the prefix, and no bucket \
                 policy may deny them",
                match config.map(|c| &c.session) {
                    Some(SessionType::FederationToken) => "the IAM user".to_string(),
                    _ => role,
                }
            ),
            Link::ScopeHolds => "delete that probe object and report this: the upload session \
                                 must not write outside its prefix"
                .into(),
        }
    }
}

/// The longest fix (naming a role ARN of 85 characters): what a 300-character line
/// keeps for the fix, leaving the rest to the error.
pub const MAX_FIX_CHARS: usize = 200;

/// Hears about each link as it is walked.
pub trait Observer {
    fn passed(&mut self, link: Link, detail: &dyn Display);
    fn failed(&mut self, link: Link, error: &dyn Display);
    /// The link is not needed with this config (IMDS off EC2).
    fn skipped(&mut self, link: Link, why: &dyn Display) {
        let _ = (link, why);
    }
}

/// For `run`: the result is all it needs.
pub struct Quiet;

impl Observer for Quiet {
    fn passed(&mut self, _: Link, _: &dyn Display) {}
    fn failed(&mut self, _: Link, _: &dyn Display) {}
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("watch_dir {path} is not a readable directory: {message}")]
    WatchDir { path: PathBuf, message: String },
    #[error("state_dir {path} is not writable: {message} (the ledger lives there)")]
    StateDir { path: PathBuf, message: String },
    #[error("move_to {path} is not usable: {message}")]
    MoveTo { path: PathBuf, message: String },
}

impl LocalError {
    pub fn link(&self) -> Link {
        match self {
            LocalError::WatchDir { .. } => Link::WatchDir,
            LocalError::StateDir { .. } => Link::StateDir,
            LocalError::MoveTo { .. } => Link::MoveTo,
        }
    }
}

/// The local prerequisites, in order, stopping at the first broken one: watch_dir is a
/// readable directory, state_dir exists (created 0700 if missing) and is writable, and
/// with `after_upload = "move"`, move_to is a directory on watch_dir's filesystem.
pub fn local(config: &Config, observer: &mut impl Observer) -> Result<(), LocalError> {
    let watch_dir = check_watch_dir(&config.watch_dir)
        .map(|()| format!("{} is readable", config.watch_dir.display()));
    report(observer, Link::WatchDir, watch_dir)?;
    report(observer, Link::StateDir, check_state_dir(config))?;
    if matches!(config.after_upload, AfterUpload::Move(_)) {
        report(observer, Link::MoveTo, check_move_to(config))?;
    }
    Ok(())
}

fn report(
    observer: &mut impl Observer,
    link: Link,
    result: Result<String, LocalError>,
) -> Result<(), LocalError> {
    match result {
        Ok(detail) => {
            observer.passed(link, &detail);
            Ok(())
        }
        Err(e) => {
            observer.failed(link, &e);
            Err(e)
        }
    }
}

/// The metadata of `path` if it is a directory; else why not.
fn directory(path: &Path) -> Result<std::fs::Metadata, String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(meta),
        Ok(_) => Err("it is not a directory".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `root` is a directory s3drop can list, not a symlink (see [`crate::tree`]).
pub fn check_watch_dir(root: &Path) -> Result<(), LocalError> {
    crate::tree::Tree::open(root)
        .map_err(|e| e.to_string())
        .and_then(|_| std::fs::read_dir(root).map_err(|e| e.to_string()))
        .map(drop)
        .map_err(|message| LocalError::WatchDir {
            path: root.to_owned(),
            message,
        })
}

/// Is `inner` inside `outer` (or the same directory) on the filesystem, whatever the paths'
/// text says (links, `..`, bind mounts of a parent)? Then `why` is the error.
fn refuse_within(inner: &Path, outer: &Path, why: &str) -> Result<(), String> {
    match crate::tree::is_within(inner, outer) {
        Ok(true) => Err(format!(
            "it is inside {} on the filesystem: {why}",
            outer.display()
        )),
        Ok(false) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn check_state_dir(config: &Config) -> Result<String, LocalError> {
    let dir = &config.state_dir;
    let probe = dir.join(".s3drop-write-probe");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::write(&probe, b"probe"))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let why = "the ledger would upload itself";
            refuse_within(dir, &config.watch_dir, why)?;
            refuse_within(&config.watch_dir, dir, why)
        })
        .map_err(|message| LocalError::StateDir {
            path: dir.clone(),
            message,
        })?;
    Ok(format!("{} is writable", dir.display()))
}

/// Moving is a rename: the target must exist and be on the same filesystem.
fn check_move_to(config: &Config) -> Result<String, LocalError> {
    let AfterUpload::Move(dir) = &config.after_upload else {
        return Ok(String::new());
    };
    let fail = |message: String| LocalError::MoveTo {
        path: dir.clone(),
        message,
    };
    let target = directory(dir).map_err(fail)?;
    crate::tree::Tree::open(dir).map_err(|e| fail(e.to_string()))?;
    refuse_within(
        dir,
        &config.watch_dir,
        "moved files would be uploaded again",
    )
    .and_then(|()| refuse_within(dir, &config.state_dir, "it would fill s3drop's state"))
    .map_err(fail)?;
    let source = std::fs::metadata(&config.watch_dir).map_err(|e| fail(e.to_string()))?;
    if target.dev() != source.dev() {
        return Err(fail(
            "it is on another filesystem than watch_dir; files are moved by rename, so it \
             must be on the same one"
                .into(),
        ));
    }
    Ok(format!("{} is on watch_dir's filesystem", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Record(Vec<(Link, bool)>);

    impl Observer for Record {
        fn passed(&mut self, link: Link, _: &dyn Display) {
            self.0.push((link, true));
        }
        fn failed(&mut self, link: Link, _: &dyn Display) {
            self.0.push((link, false));
        }
    }

    fn config(watch: &Path, state: &Path, extra: &str) -> Config {
        Config::parse(&format!(
            "watch_dir = {watch:?}\nstate_dir = {state:?}\nbucket = \"b-1\"\n\
             role_arn = \"arn:aws:iam::123456789012:role/u\"\n{extra}"
        ))
        .unwrap()
    }

    /// Walks the local links for a config of `watch`, `dir/state` and `extra`.
    fn walk(dir: &Path, watch: &Path, extra: &str) -> (Result<(), LocalError>, Vec<(Link, bool)>) {
        let mut seen = Record::default();
        let result = local(&config(watch, &dir.join("state"), extra), &mut seen);
        (result, seen.0)
    }

    fn dirs() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let watch = dir.path().join("watch");
        std::fs::create_dir(&watch).unwrap();
        (dir, watch)
    }

    #[test]
    fn local_links_stop_at_the_first_broken_one() {
        let (dir, watch) = dirs();
        let (result, seen) = walk(dir.path(), &watch, "");
        result.unwrap();
        assert_eq!(seen, [(Link::WatchDir, true), (Link::StateDir, true)]);
        assert!(dir.path().join("state").is_dir(), "state_dir is created");

        let (result, seen) = walk(dir.path(), &dir.path().join("missing"), "");
        assert_eq!(result.unwrap_err().link(), Link::WatchDir);
        assert_eq!(seen, [(Link::WatchDir, false)], "nothing after it");
    }

    #[test]
    fn move_to_is_checked_by_run_and_check_alike() {
        let (dir, watch) = dirs();
        let done = dir.path().join("done");
        let extra = format!("after_upload = \"move\"\nmove_to = {done:?}");
        let (result, _) = walk(dir.path(), &watch, &extra);
        assert_eq!(result.unwrap_err().link(), Link::MoveTo);
        std::fs::create_dir(&done).unwrap();
        let (result, seen) = walk(dir.path(), &watch, &extra);
        result.unwrap();
        assert_eq!(seen.last(), Some(&(Link::MoveTo, true)));
    }

    #[test]
    fn containment_is_judged_on_the_filesystem_not_the_text() {
        let (dir, watch) = dirs();
        std::fs::create_dir(watch.join("done")).unwrap();
        std::os::unix::fs::symlink(&watch, dir.path().join("alias")).unwrap();
        // move_to reached through a link into watch_dir.
        let extra = format!(
            "after_upload = \"move\"\nmove_to = {:?}",
            dir.path().join("alias/done")
        );
        let (result, _) = walk(dir.path(), &watch, &extra);
        let e = result.unwrap_err();
        assert_eq!(e.link(), Link::MoveTo);
        assert!(e.to_string().contains("inside"), "{e}");
        // state_dir the same way.
        let mut seen = Record::default();
        let c = config(&watch, &dir.path().join("alias/.state"), "");
        let e = local(&c, &mut seen).unwrap_err();
        assert_eq!(e.link(), Link::StateDir, "{e}");
        // watch_dir itself a link.
        let (result, _) = walk(dir.path(), &dir.path().join("alias"), "");
        let e = result.unwrap_err();
        assert_eq!(e.link(), Link::WatchDir);
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn every_fix_leaves_room_for_its_error() {
        let dir = tempfile::tempdir().unwrap();
        // A role name of 32 characters on a path: longer than most.
        let arn = format!(
            "arn:aws-us-gov:iam::123456789012:role/s3drop/{}",
            "r".repeat(32)
        );
        let c = Config::parse(&format!(
            "watch_dir = {:?}\nstate_dir = {:?}\nbucket = \"b-1\"\nrole_arn = \"{arn}\"\n",
            dir.path().join("watch"),
            dir.path().join("state"),
        ))
        .unwrap();
        for link in Link::ALL {
            let fix = link.fix(Some(&c));
            let len = fix.chars().count();
            assert!(len <= MAX_FIX_CHARS, "{}: {len}: {fix}", link.name());
            assert!(
                link.fix(None).chars().count() <= MAX_FIX_CHARS,
                "{}",
                link.name()
            );
        }
    }
}
