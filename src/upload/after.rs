//! What happens to a file once S3 has confirmed it: kept, deleted, or moved.

use std::path::Path;

use crate::config::AfterUpload;
use crate::file::{OpenedFile, move_without_replacing};
use crate::ledger::Ledger;

/// The configured action ([`AfterUpload`]), carried out.
pub struct AfterUploadAction(pub AfterUpload);

impl AfterUploadAction {
    /// Runs only for a file S3 has confirmed (now or, per the ledger, earlier), and only
    /// on the very version that was uploaded. Each step is safe to repeat: after a crash
    /// the ledger still says "uploaded" and the action runs again; once the file is gone,
    /// its record is forgotten.
    pub async fn run(&self, path: &Path, relative: &Path, file: &OpenedFile, ledger: &Ledger) {
        if self.0 == AfterUpload::Keep || !file.unchanged(path) {
            return;
        }
        let done = match &self.0 {
            AfterUpload::Keep => return,
            AfterUpload::Delete => tokio::fs::remove_file(path).await.map(|()| None),
            AfterUpload::Move(dir) => {
                let (from, to) = (path.to_owned(), dir.join(relative));
                tokio::task::spawn_blocking(move || move_without_replacing(&from, &to).map(Some))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
        };
        match done {
            Ok(moved_to) => {
                tracing::debug!(path = %path.display(), moved_to = ?moved_to.as_deref(), "after-upload action done");
                if let Err(e) = ledger.remove_later(relative).await {
                    tracing::warn!(error = %e, "could not forget a moved or deleted file in the ledger");
                }
            }
            Err(e) => tracing::warn!(
                path = %path.display(), error = %e,
                "uploaded, but the after-upload action failed; it is retried at the next scan"
            ),
        }
    }
}
