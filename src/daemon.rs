//! Wiring for `s3drop run`: check the directories, open the ledger, establish the session,
//! start the watch, the intake and the upload workers, and stop them on one path when a
//! signal arrives.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AfterUpload, Config};
use crate::ledger::Ledger;
use crate::queue::Queue;
use crate::session::Session;
use crate::transfer::Transfer;
use crate::watch::{self, DirWatcher, Intake, IntakeConfig};
use crate::worker::Worker;

const STARTUP_RETRY_CAP: Duration = Duration::from_secs(60);

pub async fn run(config: Config) -> anyhow::Result<()> {
    watch::check_root(&config.watch_dir)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    if let AfterUpload::Move(dir) = &config.after_upload {
        check_move_target(&config, dir)?;
    }
    let ledger = Arc::new(Ledger::open(&config.state_dir)?);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let session = tokio::select! {
        session = establish(&config) => session?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    tracing::info!(
        instance_id = session.facts.instance_id,
        region = session.facts.region,
        bucket = config.bucket,
        prefix = session.scope.prefix,
        role_arn = %config.role_arn,
        watch_dir = %config.watch_dir.display(),
        "s3drop started"
    );

    let queue = Arc::new(Queue::new());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let rescan_now = Arc::new(Notify::new());
    let retry_now = Arc::new(Notify::new());

    // Watch before the backlog scan, so nothing that lands during the scan is missed.
    let watcher = DirWatcher::start(&config.watch_dir)?;
    let intake = Intake::new(
        IntakeConfig {
            root: config.watch_dir.clone(),
            exclude: config.exclude.clone(),
            settle: config.settle,
            rescan_interval: config.rescan_interval,
            skip_recorded: config.after_upload == AfterUpload::Keep,
        },
        watcher,
        queue.clone(),
        ledger.clone(),
    );
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let intake_task = tracker.spawn(intake.run(rescan_now.clone(), ready_tx, cancel.clone()));

    let worker = Arc::new(Worker::new(
        config.watch_dir.clone(),
        session.scope.prefix.clone(),
        config.after_upload.clone(),
        ledger.clone(),
        Transfer::new(&config, session.uploader.clone(), ledger),
        queue.clone(),
    ));
    for _ in 0..config.concurrency {
        tracker.spawn(
            worker
                .clone()
                .run(tracker.clone(), retry_now.clone(), cancel.clone()),
        );
    }

    let mut ready = Some(ready_rx);
    // Ping the service manager's watchdog twice per period, from this loop, and only while
    // the intake is alive: a wedged or dead daemon gets restarted.
    let watchdog_period =
        sd_notify::watchdog_enabled().map_or(Duration::from_secs(10), |period| period / 2);
    let mut heartbeat = tokio::time::interval(watchdog_period);
    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            Ok(()) = async { ready.as_mut().expect("guarded").await }, if ready.is_some() => {
                ready = None;
                tracing::info!(queued = queue.depth(), "ready: backlog queued, watching");
                notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = heartbeat.tick() => {
                if intake_task.is_finished() {
                    tracing::error!("the watch task ended; no longer reporting healthy");
                    continue;
                }
                let status = format!("queue {}; {}", queue.depth(), worker.progress.summary());
                notify(&[
                    sd_notify::NotifyState::Watchdog,
                    sd_notify::NotifyState::Status(&status),
                ]);
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: rescanning watch_dir and retrying failed files now");
                rescan_now.notify_one();
                retry_now.notify_waiters();
            }
        }
    };
    tracing::info!(
        signal = signal_name,
        in_flight_or_waiting = queue.depth(),
        deadline_s = config.shutdown_timeout.as_secs(),
        "stopping: no new uploads; waiting for those in flight"
    );
    notify(&[sd_notify::NotifyState::Stopping]);
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed; unfinished uploads will be redone at next start");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd (when run as a `Type=notify` unit; a no-op otherwise).
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Establishes the session, retrying with backoff while IMDS or STS are unreachable (at
/// boot the network or the instance profile may not be ready). A refusal is final.
async fn establish(config: &Config) -> anyhow::Result<Session> {
    let mut delay = Duration::from_secs(1);
    loop {
        match Session::establish(config).await {
            Ok(session) => return Ok(session),
            Err(e) if e.is_permanent() => {
                return Err(e).context("cannot establish the upload session");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "cannot establish the upload session yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(STARTUP_RETRY_CAP);
            }
        }
    }
}

/// Moving is a rename: the target must exist and be on the same filesystem.
fn check_move_target(config: &Config, dir: &std::path::Path) -> anyhow::Result<()> {
    let target = std::fs::metadata(dir)
        .with_context(|| format!("move_to {} is not usable", dir.display()))?;
    let source = std::fs::metadata(&config.watch_dir)?;
    if !target.is_dir() {
        bail!("move_to {} is not a directory", dir.display());
    }
    if target.dev() != source.dev() {
        bail!(
            "move_to {} is on another filesystem than watch_dir; files are moved by rename, \
             so it must be on the same one",
            dir.display()
        );
    }
    Ok(())
}
