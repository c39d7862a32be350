//! Wiring for `s3drop run`: check the local prerequisites, open the ledger, start the
//! watch and the intake, mint the upload session, start the upload workers once it is
//! there, all under one [`Supervisor`], and stop them on one path: a signal (exit 0) or a
//! fatal error (exit non-zero with the cause).
//!
//! READY means "files dropped now are safe": the watch is up and the backlog is queued. It
//! does not wait for credentials: while IMDS or STS cannot be reached, files wait in the
//! queue, STATUS and the journal say why, and they go up once the session is there. A
//! permanent refusal (AssumeRole denied, a policy STS rejects) is fatal, so the unit fails
//! with the cause.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::schedule::Schedule;
use crate::auth::{self, AuthError, Session, SessionCredentials};
use crate::chain::{self, Quiet};
use crate::config::{AfterUpload, Config};
use crate::events::{
    Event, FatalError, Hangup, Ready, SessionWaiting, ShutdownDeadline, Started, StartupJitter,
    Stopped, Stopping,
};
use crate::ledger::Ledger;
use crate::queue::Queue;
use crate::s3::S3;
use crate::supervise::{Fatal, Supervisor};
use crate::tree::Tree;
use crate::upload::progress::Progress;
use crate::upload::{AfterUploadAction, Context, Sender, Worker};
use crate::watch::{DirWatcher, Intake, IntakeConfig};

/// How often STATUS is compared with what systemd was last told.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// The name of the stop signal that arrived.
async fn stop_signal(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// What the main loop watches over.
struct Running {
    config: Config,
    ledger: Arc<Ledger>,
    queue: Arc<Queue>,
    supervisor: Supervisor,
    rescan_now: Arc<Notify>,
    /// SIGHUP: a lapsed session is asked for now (the refresher listens).
    session_now: Arc<Notify>,
    cx: Context,
    ready: Option<oneshot::Receiver<()>>,
    /// Minting the session, until it is there.
    session: Option<JoinHandle<Result<Session, AuthError>>>,
    /// Why there is no session yet (for STATUS).
    waiting_for: Arc<std::sync::Mutex<String>>,
    /// The workers, once the session is there.
    worker: Option<Arc<Worker>>,
    /// What the workers did and what is stuck (STATUS, metrics, `s3drop status`).
    progress: Arc<Progress>,
    /// `watch_dir`, held for the daemon's life: every name is resolved beneath it.
    tree: Arc<Tree>,
    /// The after-upload action, with `move_to` held.
    after_upload: Option<AfterUploadAction>,
    /// The credential broker, set once the session is there (`broker = true`).
    broker: Arc<std::sync::OnceLock<crate::broker::Broker>>,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    raise_descriptor_limit();
    chain::local(&config, &mut Quiet)?;
    let ledger = Arc::new(Ledger::open(&config.state_dir)?);
    let mut signals = Signals::new()?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    start_monitoring(&config, &cancel, &tracker).await?;
    let mut running = start(config, ledger, &cancel, &tracker)?;
    let ended = watch_over(&mut running, &mut signals).await;
    let (signal_name, fatal) = match ended {
        Ok(name) => (name, None),
        Err(fatal) => {
            FatalError(&fatal).emit();
            ("a fatal error", Some(fatal))
        }
    };
    let config = &running.config;
    let waiting = running.queue.depth();
    Stopping {
        why: signal_name,
        waiting,
        deadline: config.shutdown_timeout,
    }
    .emit();
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(minting) = running.session.take() {
        minting.abort(); // nothing to finish: no session, so no upload in flight
    }
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        ShutdownDeadline(config.shutdown_timeout).emit();
    }
    crate::events::flush_summaries(true);
    Stopped.emit();
    match fatal {
        None => Ok(()),
        Some(fatal) => Err(fatal).context("s3drop stopped on a fatal error"),
    }
}

/// The metrics listener (bound now, so a taken port fails the start) and the textfile
/// writer, if configured. Neither is vital: a failure later is logged, not fatal.
async fn start_monitoring(
    config: &Config,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_listen {
        let listener = crate::metrics::bind(addr)
            .await
            .with_context(|| format!("cannot listen on metrics_listen {addr}"))?;
        tracing::info!(%addr, "serving /metrics and /health on http://{addr}");
        let cancel = cancel.clone();
        tracker.spawn(crate::metrics::serve(listener, cancel));
    }
    if let Some(path) = config.metrics_textfile.clone() {
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(TEXTFILE_INTERVAL);
            loop {
                let stopping = tokio::select! {
                    _ = cancel.cancelled() => true,
                    _ = tick.tick() => false,
                };
                let written = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || crate::metrics::write_textfile(&path)
                })
                .await;
                if let Ok(Err(e)) = written {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write metrics_textfile {}: {e}", path.display());
                }
                if stopping {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// How often `metrics_textfile` is rewritten.
const TEXTFILE_INTERVAL: Duration = Duration::from_secs(15);

/// Raises the soft limit on open descriptors to the hard one (systemd's default soft limit
/// is 1,024, kept low only for programs that use select(2)). Refused under a seccomp filter
/// that denies setrlimit: the unit's `LimitNOFILE=` has set it already.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, soft = ?limit.current, "cannot raise the open-files limit");
        }
    }
}

/// Starts the watch, the intake and the minting of the session.
fn start(
    config: Config,
    ledger: Arc<Ledger>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Running> {
    let mut supervisor = Supervisor::new(tracker.clone());
    let (rescan_now, retry_now) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let tree = Arc::new(
        Tree::open(&config.watch_dir)
            .with_context(|| format!("cannot open watch_dir {}", config.watch_dir.display()))?,
    );
    let queue = Arc::new(Queue::new(tree.path()));
    let after_upload =
        AfterUploadAction::new(&config.after_upload).context("cannot open move_to")?;
    // Watch before the backlog scan, so nothing that lands during the scan is missed.
    let watcher = DirWatcher::start(tree.clone())?;
    let intake = Intake::new(
        IntakeConfig {
            tree: tree.clone(),
            exclude: config.exclude.clone(),
            settle: config.settle,
            quiet_period: config.quiet_period,
            rescan_interval: config.rescan_interval,
            skip_recorded: config.after_upload == AfterUpload::Keep,
        },
        watcher,
        queue.clone(),
        ledger.clone(),
    );
    let (ready_tx, ready) = oneshot::channel();
    supervisor.spawn(
        "intake",
        intake.run(rescan_now.clone(), ready_tx, cancel.clone()),
    );
    let waiting_for = Arc::new(std::sync::Mutex::new("asking IMDS and STS".to_string()));
    let session = tracker.spawn(establish(config.clone(), waiting_for.clone()));
    let cx = Context {
        tracker: tracker.clone(),
        retry_now,
        hangups: Arc::default(),
        cancel: cancel.clone(),
        fatal: supervisor.reporter(),
    };
    let progress = Arc::new(Progress::default());
    let children = Arc::new(crate::broker::children::Children::default());
    crate::status::serve(
        &config.state_dir,
        queue.clone(),
        progress.clone(),
        children.clone(),
        cancel,
        tracker,
    )?;
    let broker = Arc::new(std::sync::OnceLock::new());
    if let Some(socket) = &config.broker {
        let endpoint = crate::broker::endpoint::bind()
            .context("cannot listen on 127.0.0.1 for the credential broker's endpoint")?;
        let shared = crate::broker::Shared {
            broker: broker.clone(),
            waiting_for: waiting_for.clone(),
            children: children.clone(),
            endpoint: endpoint.local_addr()?,
            cancel: cancel.clone(),
        };
        crate::broker::bind(socket)
            .map_err(anyhow::Error::msg)?
            .serve(shared, tracker);
        crate::broker::endpoint::serve(endpoint, broker.clone(), children, cancel, tracker);
    }
    Ok(Running {
        progress,
        config,
        ledger,
        queue,
        supervisor,
        rescan_now,
        session_now: Arc::new(Notify::new()),
        cx,
        ready: Some(ready),
        session: Some(session),
        waiting_for,
        worker: None,
        tree,
        after_upload: Some(after_upload),
        broker,
    })
}

/// The session is there: start the workers (a config that does not hold with this host's
/// facts, such as a tag value too long once filled in, is fatal).
fn start_workers(r: &mut Running, session: Session) -> Result<(), Fatal> {
    let config = &r.config;
    let plan = crate::upload::Plan::for_session(config, &session)
        .map_err(|e| Fatal::Session(AuthError::from(e).explain(config)))?;
    Started {
        watch_dir: &config.watch_dir,
        bucket: &config.bucket,
        prefix: &session.scope.prefix,
        role_arn: config.session.role_arn().map(|arn| arn.as_str()),
        source: &config.source.describe(),
        facts: &session.facts,
    }
    .emit();
    let s3 = S3::new(
        &session.sdk,
        &config.bucket,
        config.force_path_style,
        session.credentials.clone(),
        plan.write,
    );
    let worker = Arc::new(Worker::new(
        r.tree.clone(),
        plan.keys,
        r.after_upload.take().expect("workers start once"),
        r.ledger.clone(),
        Sender::new(config, crate::s3::Store::S3(s3), r.ledger.clone()),
        r.queue.clone(),
        r.progress.clone(),
    ));
    for _ in 0..config.concurrency {
        r.supervisor
            .spawn("upload worker", worker.clone().run(r.cx.clone()));
    }
    r.worker = Some(worker);
    if config.broker.is_some() {
        let _ = r.broker.set(crate::broker::Broker::new(config, &session));
    }
    r.supervisor.spawn(
        "session refresher",
        refresh(
            session.credentials.clone(),
            r.cx.retry_now.clone(),
            r.session_now.clone(),
            r.cx.cancel.clone(),
        ),
    );
    Ok(())
}

/// The metrics that describe a state, as of now.
fn set_gauges(r: &Running) {
    let m = crate::metrics::get();
    m.queue_files.set(r.queue.depth() as i64);
    m.oldest_pending.set(
        r.queue
            .oldest_pending()
            .map_or(0.0, |(_, age)| age.as_secs_f64()),
    );
    m.failed_files.set(r.progress.failed_count() as i64);
}

/// The longest STATUS: `systemctl status` shows it on one line.
pub const MAX_STATUS_CHARS: usize = 200;

/// The line systemd shows (`systemctl status`), at most [`MAX_STATUS_CHARS`].
fn status_line(r: &Running) -> String {
    let depth = r.queue.depth();
    let line = match &r.worker {
        Some(_) => format!("queue {depth}; {}", r.progress.summary()),
        None => format!(
            "queue {depth}; waiting for credentials: {}",
            r.waiting_for.lock().expect("status lock")
        ),
    };
    crate::message::fit(&line, MAX_STATUS_CHARS)
}

/// The main loop: READY, the session, the watchdog and STATUS for systemd, SIGHUP; until a
/// stop signal (its name) or a fatal error.
async fn watch_over(r: &mut Running, signals: &mut Signals) -> Result<&'static str, Fatal> {
    // Ping the service manager's watchdog twice per period, from this loop: a wedged
    // daemon gets restarted, and a dead task ends the daemon (and so the pings).
    let watchdog_period =
        sd_notify::watchdog_enabled().map_or(Duration::from_secs(10), |period| period / 2);
    let mut heartbeat = tokio::time::interval(watchdog_period);
    // STATUS follows changes, at most once a second.
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    let mut last_status = String::new();
    let Signals { term, int, hup } = signals;
    loop {
        tokio::select! {
            name = stop_signal(term, int) => return Ok(name),
            fatal = r.supervisor.failure() => return Err(fatal),
            Ok(()) = async { r.ready.as_mut().expect("guarded").await }, if r.ready.is_some() => {
                r.ready = None;
                Ready { watch_dir: &r.config.watch_dir, queued: r.queue.depth() }.emit();
                notify(&[sd_notify::NotifyState::Ready]);
            }
            minted = async { r.session.as_mut().expect("guarded").await }, if r.session.is_some() => {
                r.session = None;
                match minted {
                    Ok(Ok(session)) => start_workers(r, session)?,
                    Ok(Err(refused)) => return Err(Fatal::Session(refused.explain(&r.config))),
                    Err(e) => return Err(Fatal::Panicked { task: "session", message: e.to_string() }),
                }
            }
            _ = heartbeat.tick() => notify(&[sd_notify::NotifyState::Watchdog]),
            _ = status_tick.tick() => {
                crate::events::flush_summaries(false);
                set_gauges(r);
                let status = status_line(r);
                if status != last_status {
                    notify(&[sd_notify::NotifyState::Status(&status)]);
                    last_status = status;
                }
            }
            _ = hup.recv() => {
                Hangup.emit();
                r.cx.hangups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                r.rescan_now.notify_one();
                r.session_now.notify_one();
                r.cx.retry_now.notify_waiters();
            }
        }
    }
}

/// Tells systemd (when run as a `Type=notify` unit; a no-op otherwise).
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager: {e}");
    }
}

/// Mints the session, retrying while IMDS or STS are unreachable or throttle (at boot the
/// network or the instance profile may not be ready), saying why in `waiting_for`. The
/// first try waits a random part of `startup_jitter_seconds` and retries back off as
/// [`Schedule`] says, so a fleet booted together does not storm STS. A refusal is final.
async fn establish(
    config: Config,
    waiting_for: Arc<std::sync::Mutex<String>>,
) -> Result<Session, AuthError> {
    let mut schedule =
        Schedule::starting(SystemTime::now(), config.startup_jitter, fastrand::f64());
    if let Some(wait) = until(schedule.next_call())
        && !wait.is_zero()
    {
        *waiting_for.lock().expect("status lock") =
            format!("start-up jitter: {} s", wait.as_secs());
        StartupJitter(wait).emit();
    }
    loop {
        if let Some(wait) = until(schedule.next_call()) {
            tokio::time::sleep(wait).await;
        }
        match auth::establish(&config, &mut Quiet).await {
            Ok(session) => return Ok(session),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                let delay = schedule.failed(SystemTime::now(), fastrand::f64());
                SessionWaiting {
                    explained: &e.explain(&config),
                    retry_in: delay,
                }
                .emit();
                // STATUS has room for the cause only; the journal has the fix.
                *waiting_for.lock().expect("status lock") = e.to_string();
            }
        }
    }
}

/// How long from now until `at` (zero if past).
fn until(at: Option<SystemTime>) -> Option<Duration> {
    at.map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Refreshes the session when its schedule says, whether files arrive or not: the session
/// held stays fresh, and STS sees the fleet's calls spread as the schedule draws them. A
/// failure is logged, counted and backed off by the cache (uploads report a refusal).
/// Files that waited for a lapsed session are retried as soon as a new one is minted. A
/// SIGHUP (`session_now`) while no session holds asks STS at once instead of after the
/// backoff: the operator fixed something and wants to see it work.
async fn refresh(
    credentials: SessionCredentials,
    retry_now: Arc<Notify>,
    session_now: Arc<Notify>,
    cancel: CancellationToken,
) -> Result<(), Fatal> {
    loop {
        // At least a second apart, should a session ever come back already due.
        let wait = match until(credentials.next_call().await) {
            Some(wait) => wait.max(Duration::from_secs(1)),
            None => Duration::MAX,
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
            _ = session_now.notified() => {
                if !credentials.hurry().await {
                    continue;
                }
            }
        }
        let lapsed = !credentials.usable().await;
        if credentials.get().await.is_ok() && lapsed {
            retry_now.notify_waiters();
        }
    }
}
