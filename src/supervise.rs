//! The daemon's long-lived tasks and the one way they fail it. Each task returns
//! `Result<(), Fatal>`; a task that returns an error, panics, or ends while it should still
//! be running is a [`Fatal`] error that stops the daemon on its one shutdown path and makes
//! it exit non-zero with the cause, so systemd's `Restart=on-failure` can act. Short helper
//! tasks (a retry timer, an upload's recording tail) report fatal errors through a
//! [`FatalReporter`].

use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("the {task} task panicked: {message}")]
    Panicked { task: &'static str, message: String },
    #[error("the {task} task ended while the daemon was running")]
    Ended { task: &'static str },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The upload session was refused: an operator must act. The refusal with its fix,
    /// as [`AuthError::explain`] words it.
    #[error("cannot establish the upload session: {0}")]
    Session(String),
}

/// Lets a helper task end the daemon.
#[derive(Clone)]
pub struct FatalReporter(mpsc::UnboundedSender<Fatal>);

impl FatalReporter {
    pub fn report(&self, fatal: Fatal) {
        // The daemon is already stopping if nobody listens.
        let _ = self.0.send(fatal);
    }
}

type Ended = Pin<Box<dyn Future<Output = Fatal> + Send>>;

/// Spawns the long-lived tasks on the daemon's tracker (so shutdown waits for them) and
/// hands out the first failure.
pub struct Supervisor {
    tracker: TaskTracker,
    ended: FuturesUnordered<Ended>,
    reports: mpsc::UnboundedReceiver<Fatal>,
    reporter: FatalReporter,
}

impl Supervisor {
    pub fn new(tracker: TaskTracker) -> Supervisor {
        let (tx, reports) = mpsc::unbounded_channel();
        Supervisor {
            tracker,
            ended: FuturesUnordered::new(),
            reports,
            reporter: FatalReporter(tx),
        }
    }

    pub fn reporter(&self) -> FatalReporter {
        self.reporter.clone()
    }

    pub fn spawn<F>(&mut self, task: &'static str, future: F)
    where
        F: Future<Output = Result<(), Fatal>> + Send + 'static,
    {
        let handle = self.tracker.spawn(future);
        self.ended.push(Box::pin(async move {
            match handle.await {
                Ok(Ok(())) => Fatal::Ended { task },
                Ok(Err(fatal)) => fatal,
                Err(e) => Fatal::Panicked {
                    task,
                    message: panic_message(e),
                },
            }
        }));
    }

    /// The first fatal error: a supervised task ended or failed, or one was reported.
    /// Pending for as long as everything runs. Only meaningful before shutdown begins
    /// (after it, tasks end by design).
    pub async fn failure(&mut self) -> Fatal {
        tokio::select! {
            Some(fatal) = self.ended.next() => fatal,
            Some(fatal) = self.reports.recv() => fatal,
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn supervisor() -> Supervisor {
        Supervisor::new(TaskTracker::new())
    }

    async fn forever() -> Result<(), Fatal> {
        std::future::pending().await
    }

    #[tokio::test]
    async fn a_task_that_fails_ends_the_daemon_with_its_cause() {
        let mut s = supervisor();
        s.spawn("intake", forever());
        s.spawn("worker", async {
            Err(Fatal::Ledger(LedgerError::WriterStopped))
        });
        let fatal = tokio::time::timeout(Duration::from_secs(5), s.failure())
            .await
            .unwrap();
        assert!(
            matches!(fatal, Fatal::Ledger(LedgerError::WriterStopped)),
            "{fatal}"
        );
    }

    #[tokio::test]
    async fn a_panic_or_an_early_end_is_fatal_too() {
        let mut s = supervisor();
        s.spawn("intake", async { panic!("lost the watch") });
        let fatal = s.failure().await;
        assert_eq!(
            fatal.to_string(),
            "the intake task panicked: lost the watch"
        );

        let mut s = supervisor();
        s.spawn("intake", async { Ok(()) });
        assert!(matches!(s.failure().await, Fatal::Ended { task: "intake" }));
    }

    #[tokio::test]
    async fn a_helper_can_report_and_healthy_tasks_stay_quiet() {
        let mut s = supervisor();
        s.spawn("intake", forever());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), s.failure())
                .await
                .is_err(),
            "nothing failed"
        );
        s.reporter()
            .report(Fatal::Ledger(LedgerError::WriterStopped));
        assert!(matches!(s.failure().await, Fatal::Ledger(_)));
    }
}
