//! Filesystem facts that watch, upload and ledger all rely on: what identifies one version
//! of a file, what kind of file an entry is, opening a file without following links or
//! blocking on FIFOs, and renaming without replacing. A leaf module: it imports none of
//! s3drop's own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What identifies one version of a file on disk: if any of these change, it is new data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// A word for an entry's type, for log lines about files s3drop will not upload.
pub fn kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device"
    } else {
        "unknown file type"
    }
}

/// Why a file could not be opened for upload.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the file disappeared before it could be uploaded")]
    Vanished,
    #[error("not a regular file ({kind}); s3drop never opens or uploads these")]
    NotRegular { kind: &'static str },
    #[error("no permission to read the file: {0}")]
    Permission(io::Error),
    #[error("cannot read the file: {0}")]
    Io(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => OpenError::Vanished,
            io::ErrorKind::PermissionDenied => OpenError::Permission(e),
            _ if e.raw_os_error() == Some(libc::ELOOP) => OpenError::NotRegular { kind: "symlink" },
            _ => OpenError::Io(e),
        }
    }
}

/// A regular file opened for reading, with the identity it had when opened.
#[derive(Debug)]
pub struct OpenedFile {
    file: File,
    pub identity: FileIdentity,
}

impl OpenedFile {
    /// `O_NOFOLLOW` refuses a symlink even if one is swapped in after the scan, and
    /// `O_NONBLOCK` keeps a FIFO from blocking the open; the type is then checked on the
    /// descriptor itself.
    pub fn open(path: &Path) -> Result<OpenedFile, OpenError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(OpenError::NotRegular {
                kind: kind(&meta.file_type()),
            });
        }
        Ok(OpenedFile {
            identity: FileIdentity::of(&meta),
            file,
        })
    }

    /// The whole file as opened, in one buffer. A file that ends early was truncated
    /// since it was opened (`UnexpectedEof`).
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.identity.size as usize];
        self.file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// Reads at `offset` from the very inode that was opened.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    /// Has the file changed (on its descriptor, or the path now names another file) since
    /// it was opened?
    pub fn changed_since_open(&self, path: &Path) -> io::Result<bool> {
        let now_fd = FileIdentity::of(&self.file.metadata()?);
        let now_path = match std::fs::symlink_metadata(path) {
            Ok(meta) => Some(FileIdentity::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(now_fd != self.identity || now_path.is_some_and(|p| p != self.identity))
    }

    /// Like [`OpenedFile::changed_since_open`], with an error counting as a change: the
    /// safe answer before acting on "this very version".
    pub fn unchanged(&self, path: &Path) -> bool {
        matches!(self.changed_since_open(path), Ok(false))
    }

    /// A path that reopens this very inode (not whatever the name points to now), so a
    /// body can be re-read when a request is retried.
    pub fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }
}

/// Writes `bytes` to `path` whole or not at all: a temporary file (named `prefix…`) in the
/// same directory, with `mode`, synced, then renamed over `path`. A reader sees the old
/// file or the new one, never half of one, and never a readable secret in between.
pub fn replace_atomically(path: &Path, bytes: &[u8], mode: u32, prefix: &str) -> io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Renames `from` to `to`, or to `to.1`, `to.2`, … if taken: an earlier file of the same
/// name in the destination is never overwritten (`renameat2(RENAME_NOREPLACE)`).
pub fn move_without_replacing(from: &Path, to: &Path) -> io::Result<PathBuf> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::other(e.to_string()))
    };
    let from_c = c(from)?;
    for n in 0u32.. {
        let candidate = if n == 0 {
            to.to_owned()
        } else {
            let mut name = to.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let to_c = c(&candidate)?;
        // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them as given.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from_c.as_ptr(),
                libc::AT_FDCWD,
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(candidate);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
    }
    unreachable!("u32 suffixes exhausted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_fifos_and_dirs_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

        let kind = |p: &Path| match OpenedFile::open(p) {
            Err(OpenError::NotRegular { kind }) => kind,
            other => panic!("{p:?}: {other:?}"),
        };
        assert_eq!(kind(&link), "symlink");
        assert_eq!(kind(&fifo), "FIFO");
        assert_eq!(kind(dir.path()), "directory");
        assert!(matches!(
            OpenedFile::open(&dir.path().join("gone")),
            Err(OpenError::Vanished)
        ));
    }

    #[test]
    fn changes_after_open_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"first").unwrap();
        let file = OpenedFile::open(&path).unwrap();
        assert!(file.unchanged(&path));
        std::fs::write(&path, b"second, longer").unwrap();
        assert!(file.changed_since_open(&path).unwrap());
        assert!(!file.unchanged(&path));
    }

    #[test]
    fn moving_never_overwrites_an_earlier_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("done/sub/report.csv");
        for (i, body) in ["first", "second", "third"].iter().enumerate() {
            let src = dir.path().join(format!("in{i}"));
            std::fs::write(&src, body).unwrap();
            move_without_replacing(&src, &target).unwrap();
            assert!(!src.exists());
        }
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("done/sub/report.csv"), "first");
        assert_eq!(read("done/sub/report.csv.1"), "second");
        assert_eq!(read("done/sub/report.csv.2"), "third");
    }
}
