//! A bound on the connections a listener keeps open: a new one closes the oldest, so idle
//! or slow local clients cannot take every descriptor or shut out the others (the metrics
//! listener, the credential broker).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The open connections, oldest first, each with the token that closes it.
#[derive(Clone)]
pub struct Connections {
    max: usize,
    open: Arc<Mutex<(u64, BTreeMap<u64, CancellationToken>)>>,
}

impl Connections {
    pub fn new(max: usize) -> Connections {
        Connections {
            max,
            open: Arc::default(),
        }
    }

    /// Registers a new connection, closing the oldest if there are too many.
    pub fn admit(&self) -> (u64, CancellationToken) {
        let mut guard = self.open.lock().expect("connections lock");
        let (next, open) = &mut *guard;
        while open.len() >= self.max {
            if let Some((_, oldest)) = open.pop_first() {
                oldest.cancel();
            }
        }
        *next += 1;
        let token = CancellationToken::new();
        open.insert(*next, token.clone());
        (*next, token)
    }

    pub fn close_oldest(&self) {
        if let Some((_, oldest)) = self.open.lock().expect("connections lock").1.pop_first() {
            oldest.cancel();
        }
    }

    pub fn forget(&self, id: u64) {
        self.open.lock().expect("connections lock").1.remove(&id);
    }
}
