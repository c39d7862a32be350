//! The work queue between intake (events, scans) and the upload workers. A path is in it at
//! most once; a path that is reported again while it is being uploaded is marked dirty and
//! goes round once more when the upload ends, so a change during an upload is never lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    order: VecDeque<PathBuf>,
    queued: HashSet<PathBuf>,
    in_flight: HashSet<PathBuf>,
    dirty: HashSet<PathBuf>,
    /// When each file not yet settled (uploaded, dropped) was first queued: waiting for a
    /// retry keeps it here. For the "oldest pending file" metric.
    since: HashMap<PathBuf, Instant>,
}

impl Queue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` unless it is already waiting; if it is being uploaded, it will be looked
    /// at again afterwards.
    pub fn push(&self, path: PathBuf) {
        let mut state = self.state.lock().expect("queue lock");
        state.since.entry(path.clone()).or_insert_with(Instant::now);
        if state.in_flight.contains(&path) {
            state.dirty.insert(path);
            return;
        }
        if state.queued.insert(path.clone()) {
            state.order.push_back(path);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Waits for the next path and marks it in flight. Pair with [`Queue::finish`].
    pub async fn pop(&self) -> PathBuf {
        loop {
            // Register interest before checking, so a push between the check and the wait
            // is not missed.
            let notified = self.ready.notified();
            if let Some(path) = self.try_pop() {
                if !self.state.lock().expect("queue lock").order.is_empty() {
                    // Pass the wake-up on: one notify_one may stand for many pushes.
                    self.ready.notify_one();
                }
                return path;
            }
            notified.await;
        }
    }

    /// The next path if one is waiting (marked in flight, like [`Queue::pop`]).
    pub fn try_pop(&self) -> Option<PathBuf> {
        let mut state = self.state.lock().expect("queue lock");
        let path = state.order.pop_front()?;
        state.queued.remove(&path);
        state.in_flight.insert(path.clone());
        Some(path)
    }

    /// The upload of `path` is over; if it was reported again meanwhile, requeue it (and
    /// say so).
    pub fn finish(&self, path: &Path) -> bool {
        let mut state = self.state.lock().expect("queue lock");
        state.in_flight.remove(path);
        if state.dirty.remove(path) {
            drop(state);
            self.push(path.to_owned());
            return true;
        }
        false
    }

    /// `path` is settled (uploaded, gone, dropped): it no longer counts as pending, unless
    /// it is queued or in flight again.
    pub fn settled(&self, path: &Path) {
        let mut state = self.state.lock().expect("queue lock");
        if !state.queued.contains(path) && !state.in_flight.contains(path) {
            state.since.remove(path);
        }
    }

    /// The oldest file not yet settled, and how long it has been pending.
    pub fn oldest_pending(&self) -> Option<(PathBuf, Duration)> {
        let state = self.state.lock().expect("queue lock");
        state
            .since
            .iter()
            .min_by_key(|(_, since)| **since)
            .map(|(path, since)| (path.clone(), since.elapsed()))
    }

    /// Waiting plus in flight.
    pub fn depth(&self) -> usize {
        let state = self.state.lock().expect("queue lock");
        state.order.len() + state.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[tokio::test]
    async fn duplicates_collapse_and_order_is_kept() {
        let q = Queue::new();
        q.push(p("a"));
        q.push(p("b"));
        q.push(p("a"));
        assert_eq!(q.depth(), 2);
        assert_eq!(q.pop().await, p("a"));
        assert_eq!(q.pop().await, p("b"));
    }

    #[tokio::test]
    async fn a_push_during_upload_comes_back_after_finish() {
        let q = Queue::new();
        q.push(p("a"));
        let a = q.pop().await;
        q.push(p("a"));
        assert_eq!(q.depth(), 1, "only the in-flight one");
        q.finish(&a);
        assert_eq!(q.pop().await, p("a"));
        q.finish(&a);
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn waiting_workers_all_wake_for_a_burst() {
        let q = std::sync::Arc::new(Queue::new());
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.pop().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for name in ["x", "y", "z"] {
            q.push(p(name));
        }
        let mut got = Vec::new();
        for w in workers {
            got.push(
                tokio::time::timeout(Duration::from_secs(2), w)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        got.sort();
        assert_eq!(got, vec![p("x"), p("y"), p("z")]);
    }
}
