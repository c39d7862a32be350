//! Wiring for `s3drop run`: check the directories, open the ledger, establish the session,
//! start the watch, the intake and the upload workers, and stop them on one path when a
//! signal arrives.

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::ledger::Ledger;
use crate::queue::Queue;
use crate::session::Session;
use crate::watch::{self, DirWatcher, Intake};
use crate::worker::Worker;

pub async fn run(config: Config) -> anyhow::Result<()> {
    watch::check_root(&config.watch_dir)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    let ledger = Arc::new(Ledger::open(&config.state_dir)?);
    let session = Session::establish(&config)
        .await
        .context("cannot establish the upload session")?;
    tracing::info!(
        instance_id = session.facts.instance_id,
        region = session.facts.region,
        bucket = config.bucket,
        prefix = session.scope.prefix,
        role_arn = %config.role_arn,
        watch_dir = %config.watch_dir.display(),
        "s3drop started"
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let queue = Arc::new(Queue::new());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Watch before the backlog scan, so nothing that lands during the scan is missed.
    let watcher = DirWatcher::start(&config.watch_dir)?;
    let intake = Intake::new(
        config.watch_dir.clone(),
        config.exclude.clone(),
        config.settle,
        queue.clone(),
    );
    tracker.spawn(intake.run(watcher, cancel.clone()));

    let worker = Arc::new(Worker::new(
        config.watch_dir.clone(),
        session.scope.prefix.clone(),
        config.after_upload,
        ledger,
        session.uploader.clone(),
        queue.clone(),
    ));
    for _ in 0..config.concurrency {
        tracker.spawn(worker.clone().run(tracker.clone(), cancel.clone()));
    }

    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(
        signal = signal_name,
        in_flight_or_waiting = queue.depth(),
        deadline_s = config.shutdown_timeout.as_secs(),
        "stopping: no new uploads; waiting for those in flight"
    );
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
