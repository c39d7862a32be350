//! What happens to a file once S3 has confirmed it: kept, deleted, or moved.

use std::path::Path;

use crate::config::AfterUpload;
use crate::file::{OpenedFile, move_without_replacing};
use crate::ledger::Ledger;

/// What to do when deleting or moving `path` failed with `e`: the directory that must be
/// writable and how to make it so.
fn fix_for(path: &Path, e: &std::io::Error) -> String {
    let dir = path.parent().unwrap_or(path).display();
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => format!(
            "s3drop needs write access to the directory {dir} to delete or move files from it. \
             Producers' subdirectories must be writable by the s3drop group: the package puts a \
             default ACL on /var/spool/s3drop for new ones; for a directory made before, or \
             elsewhere, run `setfacl -R -m g:s3drop:rwx -d -m g:s3drop:rwx {dir}`"
        ),
        Some(libc::EROFS) => format!(
            "{dir} is read-only for s3drop; under systemd add a drop-in with \
             `ReadWritePaths=` naming watch_dir (and move_to) for delete or move mode"
        ),
        Some(libc::EXDEV) => "move_to must be on watch_dir's filesystem".into(),
        _ => "see the error".into(),
    }
}

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
                path = %path.display(), error = %e, fix = fix_for(path, &e),
                "uploaded, but the after-upload action failed; it is retried at the next scan"
            ),
        }
    }
}
