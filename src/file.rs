//! Filesystem facts that watch, upload and ledger all rely on: what identifies one version
//! of a file, what kind of file an entry is, a file opened for upload (by
//! [`crate::tree::Tree::open_file`], the one place names are resolved), and replacing a
//! file of s3drop's own atomically. It imports none of s3drop's own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

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

    pub fn of_stat(stat: &rustix::fs::Stat) -> FileIdentity {
        FileIdentity {
            dev: stat.st_dev,
            inode: stat.st_ino,
            size: stat.st_size as u64,
            mtime_ns: i128::from(stat.st_mtime) * 1_000_000_000 + i128::from(stat.st_mtime_nsec),
        }
    }
}

/// What kind of file an entry is, from its mode (never following it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    Device,
    Unknown,
}

impl Kind {
    pub fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::Regular,
            libc::S_IFDIR => Kind::Directory,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFBLK | libc::S_IFCHR => Kind::Device,
            _ => Kind::Unknown,
        }
    }

    /// A word for it, for log lines about files s3drop will not upload.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Regular => "regular file",
            Kind::Directory => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "FIFO",
            Kind::Socket => "socket",
            Kind::Device => "device",
            Kind::Unknown => "unknown file type",
        }
    }
}

/// A name below a tree could not be reached without following a link (or leaving the
/// tree); see [`crate::tree`].
#[derive(Debug, thiserror::Error)]
#[error(
    "it, or a directory on its path, is a symbolic link (or was swapped for one); s3drop never \
     follows links in the drop tree"
)]
pub struct Linked;

/// Why a file could not be opened for upload.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the file disappeared before it could be uploaded")]
    Vanished,
    #[error("{}, so the file is not read", Linked)]
    Linked,
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
    /// The file behind `fd` (opened by [`crate::tree::Tree::open_file`]), if it is a
    /// regular file: the type is checked on the descriptor itself.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Result<OpenedFile, OpenError> {
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(OpenError::NotRegular {
                kind: Kind::of_mode(std::os::unix::fs::MetadataExt::mode(&meta)).name(),
            });
        }
        Ok(OpenedFile {
            identity: FileIdentity::of(&meta),
            file,
        })
    }

    /// The whole file as opened, in one buffer. A file that ends early was truncated
    /// since it was opened (`UnexpectedEof`).
    /// The same open file (a duplicated descriptor), for a blocking task.
    pub fn try_clone(&self) -> io::Result<OpenedFile> {
        Ok(OpenedFile {
            file: self.file.try_clone()?,
            identity: self.identity,
        })
    }

    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.identity.size as usize];
        self.file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// Reads at `offset` from the very inode that was opened.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    /// The identity its descriptor has now.
    pub fn identity_now(&self) -> io::Result<FileIdentity> {
        Ok(FileIdentity::of(&self.file.metadata()?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Tree;

    #[test]
    fn fifos_and_dirs_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let tree = Tree::open(dir.path()).unwrap();

        let kind = |p: &str| match tree.open_file(Path::new(p)) {
            Err(OpenError::NotRegular { kind }) => kind,
            other => panic!("{p:?}: {other:?}"),
        };
        assert_eq!(kind("fifo"), "FIFO");
        assert_eq!(kind("sub"), "directory");
        assert!(matches!(
            tree.open_file(Path::new("gone")),
            Err(OpenError::Vanished)
        ));
    }

    #[test]
    fn changes_after_open_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let rel = Path::new("f");
        std::fs::write(dir.path().join(rel), b"first").unwrap();
        let file = tree.open_file(rel).unwrap();
        assert!(tree.unchanged(rel, &file));
        std::fs::write(dir.path().join(rel), b"second, longer").unwrap();
        assert!(!tree.unchanged(rel, &file));
    }
}
