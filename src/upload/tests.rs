//! Every fate the worker decides, against the in-memory store ([`crate::s3::memory`]) with
//! the real tree, ledger, queue and sender, on tokio's paused clock: a retry's backoff
//! passes at once, and a request the store delays lets a test act while it is in flight.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AfterUploadAction, Context, Progress, Sender, Worker};
use crate::auth::SessionCredentials;
use crate::chain::Link;
use crate::config::{Config, PrefixFacts};
use crate::keys::KeyRule;
use crate::ledger::{FileState, Ledger};
use crate::metrics::FailureKind;
use crate::queue::Queue;
use crate::s3::memory::{Fault, Memory};
use crate::s3::{Store, WriteOptions};
use crate::supervise::Supervisor;
use crate::tree::Tree;

const MIB: usize = 1024 * 1024;

/// Sessions `AKID0`, `AKID1`, … an hour long, counting how many were minted.
#[derive(Debug, Clone, Default)]
struct Sessions(Arc<AtomicUsize>);

impl ProvideCredentials for Sessions {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        provider::future::ProvideCredentials::ready(Ok(Credentials::new(
            format!("AKID{n}"),
            "secret",
            Some("token".into()),
            Some(SystemTime::now() + Duration::from_secs(3600)),
            "test",
        )))
    }
}

/// A daemon's upload half: watch_dir and state_dir in a temporary directory, the real
/// ledger, queue and workers, the in-memory bucket. Intake is the test: it pushes paths.
pub(crate) struct Rig {
    pub dir: tempfile::TempDir,
    pub watch: PathBuf,
    pub config: Config,
    pub ledger: Arc<Ledger>,
    pub queue: Arc<Queue>,
    pub progress: Arc<Progress>,
    pub store: Memory,
    sessions: Sessions,
    pub cx: Context,
    tracker: TaskTracker,
}

impl Rig {
    pub fn new(extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let watch = dir.path().join("watch");
        std::fs::create_dir(&watch).unwrap();
        let config = Config::parse(&format!(
            "watch_dir = {watch:?}\nstate_dir = {:?}\nbucket = \"b-1\"\n\
             role_arn = \"arn:aws:iam::123456789012:role/u\"\n{extra}",
            dir.path().join("state")
        ))
        .unwrap();
        std::fs::create_dir(&config.state_dir).unwrap();
        let ledger = Arc::new(Ledger::open(&config.state_dir).unwrap());
        let sessions = Sessions::default();
        let credentials = SessionCredentials::new(
            SharedCredentialsProvider::new(sessions.clone()),
            "test".into(),
            Link::UploadRole,
        );
        let store = Memory::new("b-1", !config.overwrite, credentials);
        let tracker = TaskTracker::new();
        let supervisor = Supervisor::new(tracker.clone());
        let cx = Context {
            tracker: tracker.clone(),
            retry_now: Arc::new(Notify::new()),
            hangups: Arc::default(),
            cancel: CancellationToken::new(),
            fatal: supervisor.reporter(),
        };
        Rig {
            dir,
            watch,
            ledger,
            queue: Arc::new(Queue::new(&config.watch_dir)),
            progress: Arc::new(Progress::default()),
            store,
            sessions,
            cx,
            tracker,
            config,
        }
    }

    /// Starts `n` workers (a restart: a new worker over the same ledger and bucket).
    pub fn start(&mut self, n: usize) {
        self.cx.cancel = CancellationToken::new();
        let facts = PrefixFacts {
            instance_id: Some("i-1"),
            region: "eu-west-1",
            hostname: "h",
        };
        let keys = KeyRule::new(
            "p/".into(),
            self.config.key_template.with_facts(&facts).unwrap(),
        );
        WriteOptions::resolve(&self.config.object, self.config.overwrite, &facts).unwrap();
        let worker = Arc::new(Worker::new(
            Arc::new(Tree::open(&self.watch).unwrap()),
            keys,
            AfterUploadAction::new(&self.config.after_upload).unwrap(),
            self.ledger.clone(),
            Sender::new(
                &self.config,
                Store::Memory(self.store.clone()),
                self.ledger.clone(),
            ),
            self.queue.clone(),
            self.progress.clone(),
        ));
        for _ in 0..n {
            let cx = self.cx.clone();
            tokio::spawn(worker.clone().run(cx));
        }
    }

    /// Stops the workers (a crash between attempts: nothing in flight is waited for).
    pub fn stop(&self) {
        self.cx.cancel.cancel();
    }

    /// Every session minted so far lapses: the store answers its requests `ExpiredToken`.
    pub fn lapse_sessions(&self) {
        for n in 0..self.sessions.0.load(Ordering::SeqCst) {
            self.store.expire(&format!("AKID{n}"));
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.watch.join(relative)
    }

    /// Writes `relative` and hands it to the workers, as intake would once it is complete.
    fn drop_file(&self, relative: &str, body: &[u8]) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        self.queue.push(path);
    }

    fn push(&self, relative: &str) {
        self.queue.push(self.path(relative));
    }

    fn state(&self, relative: &str) -> Option<FileState> {
        self.ledger
            .get(Path::new(relative))
            .unwrap()
            .map(|r| r.state)
    }

    /// Waits until `done` holds, for at most 30 s of real time. The paused clock moves on
    /// only while every task waits (a retry's backoff passes at once), so each poll also
    /// lets real time pass on a blocking thread, which holds the clock: the ledger's writer
    /// thread and the file reads get to finish before virtual time runs ahead of them.
    pub async fn until(&self, what: &str, mut done: impl FnMut(&Rig) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets every queued and retried attempt run: the queue drains, 100 s pass on the
    /// paused clock (retries fire), and it drains again.
    async fn idle(&self) {
        self.until("the queue drained", |r| r.queue.depth() == 0)
            .await;
        tokio::time::sleep(Duration::from_secs(100)).await;
        self.until("the queue drained", |r| r.queue.depth() == 0)
            .await;
    }

    fn uploaded(&self, relative: &str) -> bool {
        matches!(self.state(relative), Some(FileState::Uploaded { .. }))
    }

    fn failed_kind(&self, relative: &str) -> Option<FailureKind> {
        match self.state(relative) {
            Some(FileState::Failed { kind, .. }) => Some(kind),
            Some(FileState::Conflict { .. }) => Some(FailureKind::Conflict),
            _ => None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_file_is_stored_once_recorded_and_not_sent_again() {
    let mut rig = Rig::new("");
    rig.start(2);
    rig.drop_file("a/b.csv", b"hello");
    rig.until("recorded", |r| r.uploaded("a/b.csv")).await;
    assert_eq!(rig.store.versions("p/a/b.csv"), vec![b"hello".to_vec()]);
    assert!(rig.progress.summary().starts_with("1 uploaded"));
    // Handed over again (a rescan, an event): the ledger says it is done.
    rig.push("a/b.csv");
    rig.idle().await;
    assert_eq!(rig.store.requests("PutObject"), 1);
    rig.stop();
    rig.tracker.close();
}

#[tokio::test(start_paused = true)]
async fn a_touched_file_with_the_same_bytes_is_not_sent_again_and_a_changed_one_is() {
    let mut rig = Rig::new("");
    rig.start(1);
    rig.drop_file("t.txt", b"same bytes");
    rig.until("recorded", |r| r.uploaded("t.txt")).await;
    let file = std::fs::File::options()
        .write(true)
        .open(rig.path("t.txt"))
        .unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    rig.push("t.txt");
    rig.idle().await;
    assert_eq!(rig.store.requests("PutObject"), 1, "only touched: not sent");
    let recorded = rig.ledger.get(Path::new("t.txt")).unwrap().unwrap();
    let now = crate::file::FileIdentity::of(&std::fs::metadata(rig.path("t.txt")).unwrap());
    assert_eq!(recorded.identity, now, "the record follows the touch");
    // Other bytes of the same size: sent.
    std::fs::write(rig.path("t.txt"), b"other byte").unwrap();
    rig.push("t.txt");
    rig.until("the new version", |r| {
        r.store.versions("p/t.txt").len() == 2
    })
    .await;
    assert_eq!(rig.store.versions("p/t.txt")[1], b"other byte");
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn a_file_changed_during_its_upload_is_sent_again_with_its_final_bytes() {
    let mut rig = Rig::new("");
    rig.store.set_delay(Duration::from_secs(1));
    rig.start(1);
    rig.drop_file("log.txt", b"first version");
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(rig.path("log.txt"), b"the final version").unwrap();
    rig.until("recorded", |r| r.uploaded("log.txt")).await;
    let versions = rig.store.versions("p/log.txt");
    assert_eq!(versions.last().unwrap(), b"the final version");
    assert_eq!(versions.len(), 2, "the stale one, then the final one");
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn with_overwrite_false_a_conflict_is_held_until_sighup() {
    let mut rig = Rig::new("overwrite = false");
    rig.start(1);
    rig.drop_file("first.txt", b"one");
    rig.until("first stored", |r| r.uploaded("first.txt")).await;
    // Another file with the key already taken: a new file of the same name.
    std::fs::remove_file(rig.path("first.txt")).unwrap();
    rig.drop_file("first.txt", b"two");
    rig.until("the conflict", |r| {
        r.failed_kind("first.txt") == Some(FailureKind::Conflict)
    })
    .await;
    assert_eq!(rig.store.versions("p/first.txt"), vec![b"one".to_vec()]);
    assert_eq!(rig.progress.failed_count(), 1);
    let before = rig.store.requests("PutObject");
    rig.push("first.txt");
    rig.idle().await;
    assert_eq!(
        rig.store.requests("PutObject"),
        before,
        "held: not tried again"
    );
    // SIGHUP: tried once more (and refused again).
    rig.cx.hangups.fetch_add(1, Ordering::Relaxed);
    rig.cx.retry_now.notify_waiters();
    rig.push("first.txt");
    rig.until("the retry", |r| r.store.requests("PutObject") == before + 1)
        .await;
    rig.idle().await;
    assert_eq!(rig.store.requests("PutObject"), before + 1);
    assert_eq!(rig.store.versions("p/first.txt"), vec![b"one".to_vec()]);
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn a_key_another_file_has_is_refused_and_recorded() {
    let mut rig = Rig::new("key_template = \"{name}\"");
    rig.start(1);
    rig.drop_file("a/x.txt", b"a");
    rig.until("a stored", |r| r.uploaded("a/x.txt")).await;
    rig.drop_file("b/x.txt", b"b");
    rig.until("b refused", |r| {
        r.failed_kind("b/x.txt") == Some(FailureKind::KeyClaimed)
    })
    .await;
    assert_eq!(rig.store.versions("p/x.txt"), vec![b"a".to_vec()]);
    assert_eq!(rig.progress.failed_count(), 1);
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn an_expired_session_is_replaced_once_and_the_upload_goes_on() {
    let mut rig = Rig::new("");
    rig.store.expire("AKID0");
    rig.start(1);
    rig.drop_file("e.txt", b"x");
    rig.until("recorded", |r| r.uploaded("e.txt")).await;
    assert_eq!(
        rig.store.requests("PutObject"),
        2,
        "refused once, then sent"
    );
    assert_eq!(rig.sessions.0.load(Ordering::SeqCst), 2, "one new session");
    assert_eq!(rig.store.versions("p/e.txt").len(), 1);
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn throttling_backs_off_and_the_file_arrives() {
    let mut rig = Rig::new("");
    for _ in 0..3 {
        rig.store.fail_next("PutObject", Fault::SLOW_DOWN);
    }
    rig.start(1);
    let started = tokio::time::Instant::now();
    rig.drop_file("s.txt", b"x");
    rig.until("recorded", |r| r.uploaded("s.txt")).await;
    assert_eq!(rig.store.requests("PutObject"), 4);
    assert!(
        started.elapsed() > Duration::ZERO,
        "it waited between tries"
    );
    assert_eq!(
        rig.progress.failed_count(),
        0,
        "throttling is not an operator's"
    );
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn a_denied_file_is_kept_recorded_and_sent_once_allowed() {
    let mut rig = Rig::new("after_upload = \"delete\"");
    rig.store.fail_next("PutObject", Fault::ACCESS_DENIED);
    rig.start(1);
    rig.drop_file("d.txt", b"x");
    rig.until("denied", |r| {
        r.failed_kind("d.txt") == Some(FailureKind::Denied)
    })
    .await;
    assert!(rig.path("d.txt").exists(), "kept");
    assert_eq!(rig.progress.failed_count(), 1);
    // SIGHUP after the fix: it wakes waiting retries and rescans (which hands the file
    // over again): sent, then deleted.
    rig.cx.retry_now.notify_waiters();
    rig.push("d.txt");
    rig.until("deleted after its upload", |r| !r.path("d.txt").exists())
        .await;
    assert_eq!(rig.store.versions("p/d.txt").len(), 1);
    assert_eq!(rig.progress.failed_count(), 0);
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_never_deletes_the_file_before_a_confirmed_upload() {
    let mut rig = Rig::new("after_upload = \"delete\"");
    rig.store.fail_next("PutObject", Fault::LostAnswer);
    rig.store.set_delay(Duration::from_millis(100));
    rig.start(1);
    rig.drop_file("l.txt", b"x");
    rig.until("the first (stored, unanswered) request", |r| {
        r.store.versions("p/l.txt").len() == 1
    })
    .await;
    assert!(rig.path("l.txt").exists(), "no confirmation: not deleted");
    rig.until("deleted once confirmed", |r| !r.path("l.txt").exists())
        .await;
    assert_eq!(rig.store.requests("PutObject"), 2);
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn a_multipart_upload_resumes_after_a_restart_without_resending_parts() {
    let mut rig =
        Rig::new("multipart_threshold = \"5MiB\"\npart_size = \"5MiB\"\npart_concurrency = 1");
    let body: Vec<u8> = (0..11 * MIB).map(|i| (i % 251) as u8).collect();
    // Parts 1 and 2 go up, part 3 fails; the daemon dies before its retry.
    rig.store
        .fail_request("UploadPart", 3, Fault::INTERNAL_ERROR);
    rig.start(1);
    rig.drop_file("big.bin", &body);
    rig.until("part 3 refused", |r| r.store.requests("UploadPart") == 3)
        .await;
    rig.stop();
    rig.until("two parts recorded", |r| {
        matches!(r.state("big.bin"), Some(FileState::Uploading { parts, .. }) if parts.len() == 2)
    })
    .await;
    // Restarted: only part 3 is sent, on the same upload.
    rig.start(1);
    rig.push("big.bin");
    rig.until("recorded", |r| r.uploaded("big.bin")).await;
    assert_eq!(rig.store.requests("UploadPart"), 4);
    assert_eq!(rig.store.requests("CreateMultipartUpload"), 1);
    assert_eq!(rig.store.versions("p/big.bin"), vec![body]);
    assert_eq!(rig.store.open_uploads(), 0);
    assert!(matches!(
        rig.state("big.bin"),
        Some(FileState::Uploaded {
            multipart: true,
            ..
        })
    ));
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn a_multipart_upload_whose_file_changed_is_aborted_and_sent_anew() {
    let mut rig =
        Rig::new("multipart_threshold = \"5MiB\"\npart_size = \"5MiB\"\npart_concurrency = 1");
    rig.store.set_delay(Duration::from_secs(1));
    rig.start(1);
    let first: Vec<u8> = vec![1; 11 * MIB];
    rig.drop_file("big.bin", &first);
    rig.until("the first part", |r| r.store.requests("UploadPart") == 1)
        .await;
    let second: Vec<u8> = vec![2; 12 * MIB];
    std::fs::write(rig.path("big.bin"), &second).unwrap();
    rig.until("recorded", |r| r.uploaded("big.bin")).await;
    assert_eq!(rig.store.versions("p/big.bin"), vec![second]);
    assert!(rig.store.requests("AbortMultipartUpload") >= 1);
    assert_eq!(
        rig.store.open_uploads(),
        0,
        "nothing left for a lifecycle rule"
    );
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn a_record_the_ledger_cannot_write_keeps_the_file_until_it_can() {
    let mut rig = Rig::new("after_upload = \"delete\"");
    rig.ledger.fail_commits(1);
    rig.start(1);
    rig.drop_file("u.txt", b"x");
    rig.until("stored", |r| r.store.versions("p/u.txt").len() == 1)
        .await;
    rig.idle().await;
    assert!(rig.path("u.txt").exists(), "not recorded: not deleted");
    assert_eq!(rig.state("u.txt"), None);
    assert_eq!(
        rig.store.requests("PutObject"),
        1,
        "waits, not a retry loop"
    );
    // SIGHUP (the disk has room again): sent once more, recorded, then deleted.
    rig.cx.retry_now.notify_waiters();
    rig.push("u.txt");
    rig.until("deleted once recorded", |r| !r.path("u.txt").exists())
        .await;
    assert!(rig.uploaded("u.txt"));
    assert_eq!(rig.store.versions("p/u.txt"), vec![b"x".to_vec(); 2]);
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn a_file_is_moved_only_after_its_upload_is_confirmed() {
    let moved = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(&format!(
        "after_upload = \"move\"\nmove_to = {:?}",
        moved.path()
    ));
    rig.store.fail_next("PutObject", Fault::LostAnswer);
    rig.store.fail_next("PutObject", Fault::INTERNAL_ERROR);
    rig.store.set_delay(Duration::from_millis(100));
    rig.start(1);
    rig.drop_file("m/v.txt", b"x");
    rig.until("the first (stored, unanswered) request", |r| {
        r.store.versions("p/m/v.txt").len() == 1
    })
    .await;
    rig.until("the second (refused) request", |r| {
        r.store.requests("PutObject") == 2
    })
    .await;
    assert!(rig.path("m/v.txt").exists(), "no confirmation: not moved");
    assert!(!moved.path().join("m/v.txt").exists());
    rig.until("moved once confirmed", |r| !r.path("m/v.txt").exists())
        .await;
    assert_eq!(std::fs::read(moved.path().join("m/v.txt")).unwrap(), b"x");
    assert_eq!(rig.store.requests("PutObject"), 3);
    rig.stop();
}

#[tokio::test(start_paused = true)]
async fn a_multipart_upload_s3_no_longer_knows_is_started_anew() {
    let mut rig =
        Rig::new("multipart_threshold = \"5MiB\"\npart_size = \"5MiB\"\npart_concurrency = 1");
    let body: Vec<u8> = (0..11 * MIB).map(|i| (i % 253) as u8).collect();
    rig.store
        .fail_request("UploadPart", 2, Fault::INTERNAL_ERROR);
    rig.start(1);
    rig.drop_file("big.bin", &body);
    rig.until("part 2 refused", |r| r.store.requests("UploadPart") == 2)
        .await;
    rig.stop();
    rig.until("one part recorded", |r| {
        matches!(r.state("big.bin"), Some(FileState::Uploading { parts, .. }) if parts.len() == 1)
    })
    .await;
    // While the daemon was down a lifecycle rule aborted the upload: its parts are gone.
    rig.store.forget_uploads();
    rig.start(1);
    rig.push("big.bin");
    rig.until("recorded", |r| r.uploaded("big.bin")).await;
    assert_eq!(
        rig.store.requests("CreateMultipartUpload"),
        2,
        "a new upload"
    );
    assert_eq!(rig.store.versions("p/big.bin"), vec![body]);
    assert_eq!(rig.store.open_uploads(), 0);
    rig.stop();
}
