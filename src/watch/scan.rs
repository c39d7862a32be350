//! Directory walks for the intake: on a blocking thread, beneath the held `watch_dir`
//! ([`Tree::walk`]: never through a symlink), skipping excluded subtrees, handing over what
//! they find in chunks.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Exclude;
use crate::tree::{Entry, Tree};

/// Files a scan hands to the intake at a time.
const WALK_CHUNK: usize = 256;

/// One entry of a scan (never a directory).
pub struct Found {
    pub path: PathBuf,
    pub entry: Entry,
}

/// Starts walking `dir` (relative to the tree); chunks of entries arrive on the receiver,
/// and the task answers with the errors met on the way.
pub fn start(
    tree: Arc<Tree>,
    dir: PathBuf,
    exclude: Exclude,
) -> (mpsc::Receiver<Vec<Found>>, JoinHandle<Vec<String>>) {
    let (chunks, found) = mpsc::channel::<Vec<Found>>(4);
    let walker = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(WALK_CHUNK);
        let errors = tree.walk(
            &dir,
            |rel| !exclude.is_excluded(rel),
            |rel, entry| {
                if exclude.is_excluded(&rel) {
                    return true;
                }
                chunk.push(Found {
                    path: tree.path().join(rel),
                    entry,
                });
                // A closed channel: the intake stopped.
                chunk.len() < WALK_CHUNK || chunks.blocking_send(std::mem::take(&mut chunk)).is_ok()
            },
        );
        if !chunk.is_empty() {
            let _ = chunks.blocking_send(chunk);
        }
        errors
    });
    (found, walker)
}
