//! Directory walks for the intake: on a blocking thread, never following symlinks,
//! skipping excluded subtrees, handing over what they find in chunks.

use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Exclude;

/// Files a scan hands to the intake at a time.
const WALK_CHUNK: usize = 256;

/// One entry of a scan.
pub struct Found {
    pub path: PathBuf,
    /// Absent for a tree moved in as a whole (its files need no age check).
    pub meta: Option<std::fs::Metadata>,
    pub file_type: std::fs::FileType,
}

/// Starts walking `dir` (inside `root`); chunks of entries arrive on the receiver, and the
/// task answers with the errors met on the way.
pub fn start(
    dir: PathBuf,
    root: PathBuf,
    exclude: Exclude,
    moved_in: bool,
) -> (mpsc::Receiver<Vec<Found>>, JoinHandle<Vec<String>>) {
    let (chunks, found) = mpsc::channel::<Vec<Found>>(4);
    let walker = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        let mut chunk = Vec::with_capacity(WALK_CHUNK);
        let entries = walkdir::WalkDir::new(&dir)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| {
                e.path()
                    .strip_prefix(&root)
                    .map(|r| r.as_os_str().is_empty() || !exclude.is_excluded(r))
                    .unwrap_or(false)
            });
        for entry in entries {
            match entry {
                Ok(entry) if entry.file_type().is_dir() => {}
                Ok(entry) => {
                    chunk.push(Found {
                        meta: if moved_in {
                            None
                        } else {
                            entry.metadata().ok()
                        },
                        file_type: entry.file_type(),
                        path: entry.into_path(),
                    });
                    if chunk.len() == WALK_CHUNK
                        && chunks.blocking_send(std::mem::take(&mut chunk)).is_err()
                    {
                        return errors; // the intake stopped
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !chunk.is_empty() {
            let _ = chunks.blocking_send(chunk);
        }
        errors
    });
    (found, walker)
}
