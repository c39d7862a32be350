//! What happens to a file once S3 has confirmed it: kept, deleted, or moved.

use std::path::Path;
use std::sync::Arc;

use crate::config::AfterUpload;
use crate::file::OpenedFile;
use crate::ledger::Ledger;
use crate::tree::{Acted, Tree};

/// What to do when deleting or moving `path` failed with `e`: the directory that must be
/// writable and how to make it so.
fn fix_for(path: &Path, e: &std::io::Error) -> String {
    let dir = path.parent().unwrap_or(path).display();
    if crate::tree::is_linked(e) {
        return "nothing to do: s3drop leaves a file reached through a symlink alone".into();
    }
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

/// The configured action ([`AfterUpload`]), with `move_to` held open.
pub enum AfterUploadAction {
    Keep,
    Delete,
    Move(Arc<Tree>),
}

impl AfterUploadAction {
    /// The action `after_upload` names; `move_to` is held from now on (refused if it is a
    /// symlink).
    pub fn new(after_upload: &AfterUpload) -> std::io::Result<AfterUploadAction> {
        Ok(match after_upload {
            AfterUpload::Keep => AfterUploadAction::Keep,
            AfterUpload::Delete => AfterUploadAction::Delete,
            AfterUpload::Move(dir) => AfterUploadAction::Move(Arc::new(Tree::open(dir)?)),
        })
    }

    /// Runs only for a file S3 has confirmed (now or, per the ledger, earlier), and only
    /// on the very version that was uploaded, found beneath `tree` without following a
    /// link. Each step is safe to repeat: after a crash the ledger still says "uploaded" and
    /// the action runs again; once the file is gone, its record is forgotten.
    pub async fn run(&self, tree: &Tree, relative: &Path, file: &OpenedFile, ledger: &Ledger) {
        if matches!(self, AfterUploadAction::Keep) || !tree.unchanged(relative, file) {
            return;
        }
        let path = tree.path().join(relative);
        // A few syscalls on local directories: not worth a blocking thread.
        let done = match self {
            AfterUploadAction::Keep => Ok(Acted::NotThatVersion),
            AfterUploadAction::Delete => tree.remove(relative, &file.identity),
            AfterUploadAction::Move(to) => tree.move_to(relative, &file.identity, to),
        };
        match done {
            Ok(Acted::Done(moved_to)) => {
                tracing::debug!(path = %path.display(), moved_to = ?moved_to.as_deref(), "after-upload action done");
                if let Err(e) = ledger.remove_later(relative).await {
                    tracing::warn!(error = %e, "could not forget a moved or deleted file in the ledger");
                }
            }
            Ok(Acted::NotThatVersion) => {
                tracing::debug!(path = %path.display(), "changed since its upload; the after-upload action is left to its next version")
            }
            Err(e) => tracing::warn!(
                path = %path.display(), error = %e, fix = fix_for(&path, &e),
                "uploaded, but the after-upload action failed; it is retried at the next scan"
            ),
        }
    }
}
