//! What happens to a file once S3 has confirmed it: kept, deleted, or moved.

use std::path::Path;
use std::sync::Arc;

use crate::config::AfterUpload;
use crate::events::{AfterUploadFailed, Event};
use crate::file::OpenedFile;
use crate::ledger::Ledger;
use crate::tree::{Acted, Tree};

/// What to do when deleting or moving `path` failed with `e`: the directory that must be
/// writable and how to make it so.
fn fix_for(path: &Path, e: &std::io::Error) -> Option<String> {
    let dir = path.parent().unwrap_or(path).display();
    if crate::tree::is_linked(e) {
        return Some("none: s3drop leaves a file reached through a symlink alone".into());
    }
    match e.raw_os_error() {
        // The package's default ACL on /var/spool/s3drop covers directories made after it.
        Some(libc::EACCES | libc::EPERM) => Some(format!(
            "let the s3drop group write the directory: `setfacl -R -m g:s3drop:rwx -d -m \
             g:s3drop:rwx {dir}`"
        )),
        Some(libc::EROFS) => Some(
            "under systemd, add a drop-in with `ReadWritePaths=` naming watch_dir (and \
             move_to)"
                .into(),
        ),
        Some(libc::EXDEV) => Some("move_to must be on watch_dir's filesystem".into()),
        _ => None,
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
    /// True if the file was deleted or moved (by this call).
    pub async fn run(
        &self,
        tree: &Tree,
        relative: &Path,
        file: &OpenedFile,
        ledger: &Ledger,
    ) -> bool {
        if matches!(self, AfterUploadAction::Keep) || !tree.unchanged(relative, file) {
            return false;
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
                kill_point!("upload::acted"); // deleted or moved; the ledger still has it
                tracing::debug!(path = %path.display(), moved_to = ?moved_to.as_deref(), "after-upload action done");
                if let Err(e) = ledger.remove_later(relative).await {
                    tracing::warn!(error = %e, "could not forget a moved or deleted file in the ledger: {e}");
                }
                true
            }
            Ok(Acted::NotThatVersion) => {
                tracing::debug!(path = %path.display(), "changed since its upload; the after-upload action is left to its next version");
                false
            }
            Err(e) => {
                AfterUploadFailed {
                    path: &path,
                    action: match self {
                        AfterUploadAction::Move(_) => "moved",
                        _ => "deleted",
                    },
                    error: &e.to_string(),
                    fix: fix_for(&path, &e).as_deref(),
                }
                .emit();
                false
            }
        }
    }
}
