//! Where every path inside a directory other users write is resolved: `watch_dir` and
//! `move_to`. A [`Tree`] holds a descriptor of its directory for the daemon's life, and
//! every open, stat, walk, unlink, rename and mkdir below it starts from that descriptor and
//! never follows a symlink, whatever a producer does to the tree meanwhile: a directory
//! swapped for a link to `/etc` between two calls makes the second call fail, not read
//! `/etc`. Path strings elsewhere in s3drop are for messages and as the queue's names;
//! access goes through here.
//!
//! Resolution is `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS` (Linux ≥ 5.6); where the kernel or a seccomp filter refuses it, one
//! component at a time with `openat(O_NOFOLLOW)`, each step holding the directory it found.
//! Acting on a name (unlink, rename) happens relative to a descriptor of its parent, after
//! `fstatat(AT_SYMLINK_NOFOLLOW)` there confirmed it is the very version that was uploaded.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};

use crate::file::{FileIdentity, Kind, Linked, OpenError, OpenedFile};

fn linked() -> io::Error {
    io::Error::other(Linked)
}

/// Is this error [`Linked`]?
pub fn is_linked(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Linked>())
}

/// What one name is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub identity: FileIdentity,
}

impl Entry {
    fn of(stat: &rustix::fs::Stat) -> Entry {
        Entry {
            kind: Kind::of_mode(stat.st_mode),
            identity: FileIdentity::of_stat(stat),
        }
    }
}

/// `openat2` refused by the kernel (older than 5.6) or by a seccomp filter: resolve one
/// component at a time from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

#[cfg(test)]
thread_local! {
    /// Tests of the fallback resolver, without changing what other tests use.
    static COMPONENTS_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn openat2_usable() -> bool {
    #[cfg(test)]
    if COMPONENTS_ONLY.get() {
        return false;
    }
    !NO_OPENAT2.load(Ordering::Relaxed)
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// What became of a file opened for upload ([`Tree::now`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Now {
    Same,
    Changed,
    Gone,
}

/// How a name was acted on.
#[derive(Debug, PartialEq, Eq)]
pub enum Acted {
    /// Deleted, or moved to this path.
    Done(Option<PathBuf>),
    /// The name is no longer the version that was uploaded (or is gone): left alone.
    NotThatVersion,
}

/// A directory held open; see the module's text.
#[derive(Debug)]
pub struct Tree {
    path: PathBuf,
    /// Replaced only when the directory itself is recreated (`reopen`).
    root: RwLock<Arc<OwnedFd>>,
}

/// Opens `path` as a directory; its last component must not be a symlink (its ancestors
/// are the administrator's, and followed).
fn open_root(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => is_a_link(path),
        rustix::io::Errno::NOTDIR if is_symlink(path) => is_a_link(path),
        rustix::io::Errno::NOTDIR => io::Error::other("it is not a directory"),
        e => e.into(),
    })
}

fn is_a_link(path: &Path) -> io::Error {
    let target = std::fs::read_link(path).map_or_else(|_| "?".into(), |t| t.display().to_string());
    io::Error::other(format!(
        "it is a symbolic link (to {target}); name the directory itself, since s3drop never \
         follows links in the drop tree"
    ))
}

fn is_symlink(path: &Path) -> bool {
    rustix::fs::lstat(path).is_ok_and(|s| Kind::of_mode(s.st_mode) == Kind::Symlink)
}

/// Splits a relative path into its names, refusing anything but plain names (`..`, a root).
fn names(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(linked()),
        })
        .collect()
}

impl Tree {
    pub fn open(path: &Path) -> io::Result<Tree> {
        Ok(Tree {
            root: RwLock::new(Arc::new(open_root(path)?)),
            path: path.to_owned(),
        })
    }

    /// The directory's path, for messages and to name what is below it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path` relative to the tree (empty for the tree itself); `None` if not below it.
    pub fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        path.strip_prefix(&self.path).ok()
    }

    fn root(&self) -> Arc<OwnedFd> {
        self.root.read().expect("tree lock").clone()
    }

    /// (dev, inode) of the directory held.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        let stat = rustix::fs::fstat(&*self.root())?;
        Ok((stat.st_dev, stat.st_ino))
    }

    /// What the tree's path names now, without following it: `Ok(None)` if nothing.
    pub fn path_now(&self) -> io::Result<Option<Entry>> {
        match rustix::fs::lstat(&self.path) {
            Ok(stat) => Ok(Some(Entry::of(&stat))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Holds the directory now at the tree's path instead (it was recreated). Refused if
    /// that is a symlink.
    pub fn reopen(&self) -> io::Result<()> {
        let fd = open_root(&self.path)?;
        *self.root.write().expect("tree lock") = Arc::new(fd);
        Ok(())
    }

    /// Opens `rel` beneath the tree with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`), following
    /// no link on the way.
    fn resolve(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let root = self.root();
        resolve_beneath(root.as_fd(), rel, flags)
    }

    /// What `rel` is, without following it (an `lstat` beneath the tree).
    pub fn stat(&self, rel: &Path) -> io::Result<Entry> {
        let fd = self.resolve(rel, OFlags::PATH)?;
        Ok(Entry::of(&rustix::fs::fstat(&fd)?))
    }

    /// Opens the regular file `rel` for reading (a FIFO does not block the open; the type is
    /// checked on the descriptor).
    pub fn open_file(&self, rel: &Path) -> Result<OpenedFile, OpenError> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let opened = match self.resolve(rel, flags) {
            // ELOOP: a link in the last place, or on the path; `stat` tells which.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => match self.stat(rel) {
                Ok(entry) => {
                    return Err(OpenError::NotRegular {
                        kind: entry.kind.name(),
                    });
                }
                Err(e) => Err(e),
            },
            opened => opened,
        };
        match opened {
            Ok(fd) => OpenedFile::from_fd(fd),
            Err(e) if is_linked(&e) => Err(OpenError::Linked),
            Err(e) => Err(e.into()),
        }
    }

    /// What became of the file at `rel` since `file` was opened: the same version (on its
    /// descriptor, and the name naming that inode), gone (the name deleted), or changed.
    /// Any doubt counts as a change.
    pub fn now(&self, rel: &Path, file: &OpenedFile) -> Now {
        if file.identity_now().ok() != Some(file.identity) {
            return Now::Changed;
        }
        match self.stat(rel) {
            Ok(entry) if entry.identity == file.identity => Now::Same,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Now::Gone,
            _ => Now::Changed,
        }
    }

    /// Not changed: the same version, or its name deleted (what was read is still that
    /// version).
    pub fn unchanged(&self, rel: &Path, file: &OpenedFile) -> bool {
        self.now(rel, file) != Now::Changed
    }

    /// The parent of `rel` (held) and `rel`'s last name.
    fn parent<'a>(&self, rel: &'a Path) -> io::Result<(OwnedFd, &'a OsStr)> {
        let name = rel.file_name().ok_or_else(linked)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((
            self.resolve(parent, OFlags::PATH | OFlags::DIRECTORY)?,
            name,
        ))
    }

    /// Deletes `rel` if it is still the version `uploaded`.
    pub fn remove(&self, rel: &Path, uploaded: &FileIdentity) -> io::Result<Acted> {
        let (parent, name) = self.parent(rel)?;
        if !same_version(&parent, name, uploaded)? {
            return Ok(Acted::NotThatVersion);
        }
        rustix::fs::unlinkat(&parent, name, AtFlags::empty())?;
        Ok(Acted::Done(None))
    }

    /// Moves `rel`, if it is still the version `uploaded`, to the same relative path in
    /// `to` (directories made there as needed, none followed), or to `name.1`, `name.2`, …
    /// if taken: an earlier file of the same name is never overwritten.
    pub fn move_to(&self, rel: &Path, uploaded: &FileIdentity, to: &Tree) -> io::Result<Acted> {
        let (from_parent, name) = self.parent(rel)?;
        if !same_version(&from_parent, name, uploaded)? {
            return Ok(Acted::NotThatVersion);
        }
        let to_parent = to.make_dirs(rel.parent().unwrap_or(Path::new("")))?;
        for n in 0u32.. {
            let candidate: OsString = if n == 0 {
                name.to_owned()
            } else {
                let mut with_suffix = name.to_owned();
                with_suffix.push(format!(".{n}"));
                with_suffix
            };
            match rustix::fs::renameat_with(
                &from_parent,
                name,
                &to_parent,
                &candidate,
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    let moved = rel.with_file_name(&candidate);
                    return Ok(Acted::Done(Some(to.path.join(moved))));
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("u32 suffixes exhausted")
    }

    /// Makes the directories of `rel` beneath the tree (as `mkdir -p`, but refusing any
    /// link on the way) and returns the last one, held.
    pub fn make_dirs(&self, rel: &Path) -> io::Result<OwnedFd> {
        let root = self.root();
        let mut dir = open_at(
            root.as_fd(),
            OsStr::new("."),
            OFlags::PATH | OFlags::DIRECTORY,
        )?;
        for name in names(rel)? {
            match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            dir = open_at(dir.as_fd(), name, OFlags::PATH | OFlags::DIRECTORY)?;
        }
        Ok(dir)
    }

    /// Opens the directory `rel` beneath the tree as an `O_PATH` descriptor (to name it,
    /// e.g. to inotify as `/proc/self/fd/N`, without following anything).
    pub fn dir_handle(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.resolve(rel, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// Every directory below `rel` (not `rel` itself), never entering a link: the directory
    /// entries' types (`d_type`) are enough, so files cost no `stat`.
    pub fn subdirectories(&self, rel: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![rel.to_owned()];
        while let Some(dir_rel) = pending.pop() {
            let Ok(dir) = self.resolve(&dir_rel, OFlags::RDONLY | OFlags::DIRECTORY) else {
                continue; // gone, or a link now: its watch is not wanted either
            };
            let Ok(mut entries) = rustix::fs::Dir::read_from(&dir) else {
                continue;
            };
            while let Some(Ok(entry)) = entries.read() {
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                let is_dir = match entry.file_type() {
                    rustix::fs::FileType::Directory => true,
                    rustix::fs::FileType::Unknown => {
                        rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|s| Kind::of_mode(s.st_mode) == Kind::Directory)
                    }
                    _ => false,
                };
                if is_dir {
                    let child = dir_rel.join(name);
                    found.push(child.clone());
                    pending.push(child);
                }
            }
        }
        found
    }

    /// Walks the directory `rel` depth first, never entering a link: `enter` says whether a
    /// directory (relative path) is walked, `visit` gets every other entry (relative path,
    /// what it is) and returns false to stop. Answers the errors met on the way, one
    /// sentence each.
    pub fn walk(
        &self,
        rel: &Path,
        mut enter: impl FnMut(&Path) -> bool,
        mut visit: impl FnMut(PathBuf, Entry) -> bool,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let mut pending = vec![rel.to_owned()];
        while let Some(dir_rel) = pending.pop() {
            // Each directory is opened beneath the root anew, so one descriptor is open at
            // a time however deep the tree, and a directory swapped for a link is refused.
            let dir = match self.resolve(&dir_rel, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        errors.push(format!("{}: {}", self.path.join(&dir_rel).display(), e));
                    }
                    continue;
                }
            };
            let mut entries = match rustix::fs::Dir::read_from(&dir) {
                Ok(entries) => entries,
                Err(e) => {
                    errors.push(format!("{}: {}", self.path.join(&dir_rel).display(), e));
                    continue;
                }
            };
            while let Some(entry) = entries.read() {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        errors.push(format!("{}: {}", self.path.join(&dir_rel).display(), e));
                        break;
                    }
                };
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                let child = dir_rel.join(name);
                let stat = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => Entry::of(&stat),
                    Err(rustix::io::Errno::NOENT) => continue, // gone since it was listed
                    Err(e) => {
                        errors.push(format!("{}: {}", self.path.join(&child).display(), e));
                        continue;
                    }
                };
                if stat.kind == Kind::Directory {
                    if enter(&child) {
                        pending.push(child);
                    }
                } else if !visit(child, stat) {
                    return errors;
                }
            }
        }
        errors
    }
}

/// Is `name` in `parent` (not followed) the version `uploaded`? Gone counts as not.
fn same_version(parent: &OwnedFd, name: &OsStr, uploaded: &FileIdentity) -> io::Result<bool> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Entry::of(&stat).identity == *uploaded),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn is_symlink_fd(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|s| Kind::of_mode(s.st_mode) == Kind::Symlink)
}

/// Opens the single name `name` in `dir` without following it. A directory wanted
/// (`O_DIRECTORY`) but a link found is [`Linked`].
fn open_at(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::LOOP) if flags.contains(OFlags::DIRECTORY) => Err(linked()),
        Err(rustix::io::Errno::NOTDIR) if flags.contains(OFlags::DIRECTORY) => {
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if Kind::of_mode(stat.st_mode) == Kind::Symlink => Err(linked()),
                _ => Err(rustix::io::Errno::NOTDIR.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens `rel` beneath `root` with `flags`, following no link (see the module's text).
fn resolve_beneath(root: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let names = names(rel)?;
    if openat2_usable() {
        let path: &Path = if names.is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // EAGAIN: a rename raced the resolution (the kernel cannot vouch for it); ask again.
        for _ in 0..8 {
            match rustix::fs::openat2(root, path, flags, Mode::empty(), RESOLVE) {
                Ok(fd) => return Ok(fd),
                Err(rustix::io::Errno::AGAIN) => continue,
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                // EXDEV: the path would leave the tree.
                Err(rustix::io::Errno::XDEV) => return Err(linked()),
                // ELOOP with O_PATH, or with O_DIRECTORY: a link on the way. Otherwise the
                // caller tells a link in the last place apart (see `open_file`).
                Err(rustix::io::Errno::LOOP)
                    if flags.intersects(OFlags::PATH | OFlags::DIRECTORY) =>
                {
                    return Err(linked());
                }
                // A directory wanted, a link found in the last place.
                Err(rustix::io::Errno::NOTDIR) if flags.contains(OFlags::DIRECTORY) => {
                    return Err(match resolve_beneath(root, rel, OFlags::PATH) {
                        Ok(fd) if is_symlink_fd(&fd) => linked(),
                        Err(e) if is_linked(&e) => e,
                        _ => rustix::io::Errno::NOTDIR.into(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            return Err(rustix::io::Errno::AGAIN.into());
        }
    }
    resolve_by_components(root, &names, flags)
}

/// The fallback: one name at a time, each directory held while the next is opened.
fn resolve_by_components(
    root: BorrowedFd<'_>,
    names: &[&OsStr],
    flags: OFlags,
) -> io::Result<OwnedFd> {
    let Some((last, parents)) = names.split_last() else {
        return open_at(root, OsStr::new("."), flags);
    };
    let mut dir: Option<OwnedFd> = None;
    for name in parents {
        let at = dir.as_ref().map_or(root, |d| d.as_fd());
        dir = Some(open_at(at, name, OFlags::PATH | OFlags::DIRECTORY)?);
    }
    open_at(dir.as_ref().map_or(root, |d| d.as_fd()), last, flags)
}

/// Is `inner` the directory `outer` or below it, judged by (dev, inode) ancestry on the
/// filesystem (`..` upward from `inner`), not by the paths' text? Both must exist.
pub fn is_within(inner: &Path, outer: &Path) -> io::Result<bool> {
    let target = rustix::fs::stat(outer)?;
    let target = (target.st_dev, target.st_ino);
    let mut dir = rustix::fs::open(
        inner,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    loop {
        let here = rustix::fs::fstat(&dir)?;
        if (here.st_dev, here.st_ino) == target {
            return Ok(true);
        }
        let up = rustix::fs::openat(
            &dir,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let above = rustix::fs::fstat(&up)?;
        if (above.st_dev, above.st_ino) == (here.st_dev, here.st_ino) {
            return Ok(false); // the filesystem's root
        }
        dir = up;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A tree `drop/` with `a/b/f` and a secret outside it, `outside/secret`.
    struct Fixture {
        dir: tempfile::TempDir,
        tree: Tree,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("drop/a/b")).unwrap();
            std::fs::write(dir.path().join("drop/a/b/f"), b"inside").unwrap();
            std::fs::create_dir_all(dir.path().join("outside/b")).unwrap();
            std::fs::write(dir.path().join("outside/secret"), b"secret").unwrap();
            std::fs::write(dir.path().join("outside/b/f"), b"secret").unwrap();
            let tree = Tree::open(&dir.path().join("drop")).unwrap();
            Fixture { dir, tree }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
    }

    /// Every operation on `rel`, each of which must refuse it as [`Linked`].
    fn assert_all_refused(f: &Fixture, rel: &str) {
        let rel = Path::new(rel);
        let identity = FileIdentity::of(&std::fs::metadata(f.p("outside/secret")).unwrap());
        assert!(is_linked(&f.tree.stat(rel).unwrap_err()), "stat {rel:?}");
        match f.tree.open_file(rel) {
            Err(OpenError::Linked) => {}
            other => panic!("open {rel:?}: {other:?}"),
        }
        assert!(
            is_linked(&f.tree.remove(rel, &identity).unwrap_err()),
            "rm {rel:?}"
        );
        let errors = f.tree.walk(rel, |_| true, |p, _| panic!("walked to {p:?}"));
        assert_eq!(errors.len(), 1, "walk {rel:?}: {errors:?}");
        assert!(f.p("outside/secret").exists() && f.p("outside/b/f").exists());
    }

    /// Runs `test` with `openat2`, then with the component-wise fallback.
    fn both_resolvers(test: impl Fn()) {
        test();
        COMPONENTS_ONLY.set(true);
        test();
        COMPONENTS_ONLY.set(false);
    }

    #[test]
    fn a_link_at_any_position_is_refused_by_every_operation() {
        both_resolvers(|| {
            let f = Fixture::new();
            let outside = f.p("outside");
            // Absolute and relative links, at the first, a middle and the last directory.
            symlink(&outside, f.p("drop/abs")).unwrap();
            symlink("../outside", f.p("drop/rel")).unwrap();
            symlink(&outside, f.p("drop/a/mid")).unwrap();
            symlink("/proc/self/root/", f.p("drop/magic")).unwrap();
            for rel in [
                "abs/secret",
                "rel/secret",
                "a/mid/secret",
                "abs/b/f",
                "magic/etc",
            ] {
                assert_all_refused(&f, rel);
            }
            // `..` and absolute paths never leave the tree either.
            assert!(is_linked(
                &f.tree.stat(Path::new("../outside/secret")).unwrap_err()
            ));
            assert!(is_linked(
                &f.tree.stat(Path::new("a/../../outside")).unwrap_err()
            ));
            assert!(is_linked(&f.tree.stat(&f.p("outside/secret")).unwrap_err()));
        });
    }

    #[test]
    fn a_directory_swapped_for_a_link_between_two_calls_is_refused() {
        both_resolvers(|| {
            let f = Fixture::new();
            let rel = Path::new("a/b/f");
            let file = f.tree.open_file(rel).unwrap();
            assert!(f.tree.unchanged(rel, &file));
            // The producer renames `a` away and puts a link to a look-alike tree there.
            std::fs::rename(f.p("drop/a"), f.p("drop/a.old")).unwrap();
            symlink(f.p("outside"), f.p("drop/a")).unwrap();
            std::fs::create_dir(f.p("outside/b2")).unwrap();
            assert!(!f.tree.unchanged(rel, &file), "doubt counts as a change");
            assert_all_refused(&f, "a/b/f");
            let moved_to = Tree::open(&f.p("outside/b2")).unwrap();
            assert!(is_linked(
                &f.tree.move_to(rel, &file.identity, &moved_to).unwrap_err()
            ));
            assert_eq!(std::fs::read(f.p("outside/b/f")).unwrap(), b"secret");
            // The file itself was read from where it was opened: inside.
            assert_eq!(file.read_all().unwrap(), b"inside");
        });
    }

    #[test]
    fn a_link_in_the_last_place_is_a_symlink_not_followed() {
        let f = Fixture::new();
        symlink(f.p("outside/secret"), f.p("drop/a/link")).unwrap();
        assert!(matches!(
            f.tree.open_file(Path::new("a/link")),
            Err(OpenError::NotRegular { kind: "symlink" })
        ));
        assert_eq!(
            f.tree.stat(Path::new("a/link")).unwrap().kind,
            Kind::Symlink
        );
        let mut seen = Vec::new();
        let errors = f.tree.walk(
            Path::new(""),
            |_| true,
            |p, e| {
                seen.push((p, e.kind));
                true
            },
        );
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            seen,
            vec![
                (PathBuf::from("a/b/f"), Kind::Regular),
                (PathBuf::from("a/link"), Kind::Symlink)
            ]
        );
    }

    #[test]
    fn remove_and_move_act_only_on_the_uploaded_version_and_never_overwrite() {
        both_resolvers(|| {
            let f = Fixture::new();
            std::fs::create_dir(f.p("done")).unwrap();
            let done = Tree::open(&f.p("done")).unwrap();
            for body in ["first", "second", "third"] {
                std::fs::write(f.p("drop/a/b/r.csv"), body).unwrap();
                let rel = Path::new("a/b/r.csv");
                let id = f.tree.stat(rel).unwrap().identity;
                let mut other = id;
                other.mtime_ns += 1;
                assert_eq!(
                    f.tree.move_to(rel, &other, &done).unwrap(),
                    Acted::NotThatVersion
                );
                assert!(matches!(
                    f.tree.move_to(rel, &id, &done).unwrap(),
                    Acted::Done(Some(_))
                ));
            }
            let read = |p: &str| std::fs::read_to_string(f.p(p)).unwrap();
            assert_eq!(read("done/a/b/r.csv"), "first");
            assert_eq!(read("done/a/b/r.csv.1"), "second");
            assert_eq!(read("done/a/b/r.csv.2"), "third");

            let rel = Path::new("a/b/f");
            let id = f.tree.stat(rel).unwrap().identity;
            let mut other = id;
            other.size += 1;
            assert_eq!(f.tree.remove(rel, &other).unwrap(), Acted::NotThatVersion);
            assert_eq!(f.tree.remove(rel, &id).unwrap(), Acted::Done(None));
            assert_eq!(f.tree.remove(rel, &id).unwrap(), Acted::NotThatVersion);
        });
    }

    #[test]
    fn make_dirs_refuses_a_link_in_move_to() {
        both_resolvers(|| {
            let f = Fixture::new();
            std::fs::create_dir(f.p("done")).unwrap();
            symlink(f.p("outside"), f.p("done/a")).unwrap();
            let done = Tree::open(&f.p("done")).unwrap();
            assert!(is_linked(&done.make_dirs(Path::new("a/b")).unwrap_err()));
            let id = f.tree.stat(Path::new("a/b/f")).unwrap().identity;
            assert!(is_linked(
                &f.tree.move_to(Path::new("a/b/f"), &id, &done).unwrap_err()
            ));
            assert!(f.p("drop/a/b/f").exists(), "not moved");
            assert!(!f.p("outside/b/b").exists() && !f.p("outside/a").exists());
        });
    }

    #[test]
    fn the_root_must_be_a_directory_not_a_link_and_is_reopened_when_recreated() {
        let f = Fixture::new();
        symlink(f.p("drop"), f.p("link")).unwrap();
        let e = Tree::open(&f.p("link")).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link (to "), "{e}");
        let before = f.tree.identity().unwrap();
        std::fs::rename(f.p("drop"), f.p("drop.old")).unwrap();
        assert_eq!(f.tree.path_now().unwrap(), None);
        std::fs::create_dir(f.p("drop")).unwrap();
        f.tree.reopen().unwrap();
        assert_ne!(f.tree.identity().unwrap(), before);
        std::fs::remove_dir(f.p("drop")).unwrap();
        symlink(f.p("outside"), f.p("drop")).unwrap();
        assert_eq!(f.tree.path_now().unwrap().unwrap().kind, Kind::Symlink);
        assert!(f.tree.reopen().is_err());
    }

    #[test]
    fn containment_is_judged_by_the_filesystem_not_the_text() {
        let f = Fixture::new();
        std::fs::create_dir(f.p("drop/done")).unwrap();
        symlink(f.p("drop"), f.p("alias")).unwrap();
        let drop = f.p("drop");
        assert!(is_within(&f.p("outside/../drop/done"), &drop).unwrap());
        assert!(is_within(&f.p("alias/done"), &drop).unwrap());
        assert!(is_within(&drop, &drop).unwrap());
        assert!(!is_within(&f.p("outside"), &drop).unwrap());
        assert!(!is_within(&drop, &f.p("drop/done")).unwrap());
    }
}
