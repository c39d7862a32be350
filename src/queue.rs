//! The work queue between intake (events, scans) and the upload workers. A path is in it at
//! most once; a path that is reported again while it is being uploaded is marked dirty and
//! goes round once more when the upload ends, so a change during an upload is never lost.
//!
//! **Fair share.** Files wait in one lane per top-level directory of `watch_dir` (the files
//! directly in it form one more lane), oldest first within a lane; workers take one file
//! from each lane with waiting files in turn. A producer flooding its own directory
//! therefore does not starve a file dropped in another: that file waits behind at most one
//! file of each busy lane. Within one directory the order of arrival is kept.
//!
//! **Memory.** A million waiting files must fit a small instance, so a file costs one
//! 40-byte slot (its name inline up to 22 bytes, its directory by number, its lane link,
//! when it was first queued) and a 4-byte index entry; each directory's path is stored
//! once. Emptied, the queue returns its memory.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::hash::{BuildHasher, Hash, RandomState};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use tokio::sync::Notify;

pub struct Queue {
    root: PathBuf,
    state: Mutex<State>,
    ready: Notify,
}

/// No slot, lane or directory.
const NONE: u32 = u32::MAX;

/// A file name: inline when short (most are), else on the heap.
enum Name {
    Short { len: u8, bytes: [u8; 22] },
    Long(Box<[u8]>),
}

impl Name {
    fn new(name: &[u8]) -> Self {
        if name.len() <= 22 {
            let mut bytes = [0; 22];
            bytes[..name.len()].copy_from_slice(name);
            Name::Short {
                len: name.len() as u8,
                bytes,
            }
        } else {
            Name::Long(name.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Short { len, bytes } => &bytes[..usize::from(*len)],
            Name::Long(bytes) => bytes,
        }
    }
}

/// Where a known file stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// In its lane, waiting for a worker.
    Queued,
    InFlight,
    /// In flight, and reported again meanwhile: it goes round once more.
    InFlightDirty,
    /// Neither: a retry is scheduled, or it is done and not yet settled.
    Waiting,
}

struct Slot {
    name: Name,
    dir: u32,
    /// The next queued file of the same lane.
    next: u32,
    /// When it was first queued, in seconds since the queue was made.
    since: u32,
    stage: Stage,
}

struct Dir {
    path: Box<Path>,
    lane: u32,
    /// Slots naming this directory; it is forgotten at zero.
    files: u32,
}

struct Lane {
    name: Box<[u8]>,
    head: u32,
    tail: u32,
    /// Directories in this lane; it is forgotten at zero.
    dirs: u32,
}

/// A vector whose freed places are reused (a free list through the vacant places), so
/// numbers stay valid while others come and go.
struct Slab<T> {
    items: Vec<Place<T>>,
    free: u32,
    used: usize,
}

enum Place<T> {
    Used(T),
    Vacant { next_free: u32 },
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            free: NONE,
            used: 0,
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, item: T) -> u32 {
        self.used += 1;
        if self.free == NONE {
            self.items.push(Place::Used(item));
            return (self.items.len() - 1) as u32;
        }
        let at = self.free;
        let Place::Vacant { next_free } = self.items[at as usize] else {
            unreachable!("the free list names a used place");
        };
        self.free = next_free;
        self.items[at as usize] = Place::Used(item);
        at
    }

    fn remove(&mut self, at: u32) -> T {
        let place = std::mem::replace(
            &mut self.items[at as usize],
            Place::Vacant {
                next_free: self.free,
            },
        );
        let Place::Used(item) = place else {
            unreachable!("removing a vacant place");
        };
        self.free = at;
        self.used -= 1;
        item
    }

    fn get(&self, at: u32) -> &T {
        match &self.items[at as usize] {
            Place::Used(item) => item,
            Place::Vacant { .. } => unreachable!("reading a vacant place"),
        }
    }

    fn get_mut(&mut self, at: u32) -> &mut T {
        match &mut self.items[at as usize] {
            Place::Used(item) => item,
            Place::Vacant { .. } => unreachable!("reading a vacant place"),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().filter_map(|place| match place {
            Place::Used(item) => Some(item),
            Place::Vacant { .. } => None,
        })
    }
}

/// What a [`Keyed`] table finds its entries by.
trait Keyed {
    type Key<'a>: Hash + Eq
    where
        Self: 'a;
    fn key(&self) -> Self::Key<'_>;
}

impl Keyed for Slot {
    type Key<'a> = (u32, &'a [u8]);
    fn key(&self) -> Self::Key<'_> {
        (self.dir, self.name.as_bytes())
    }
}

impl Keyed for Dir {
    type Key<'a> = &'a [u8];
    fn key(&self) -> Self::Key<'_> {
        self.path.as_os_str().as_bytes()
    }
}

impl Keyed for Lane {
    type Key<'a> = &'a [u8];
    fn key(&self) -> Self::Key<'_> {
        &self.name
    }
}

/// A slab whose entries are also found by their key: a `HashTable` of 4-byte slot numbers,
/// hashed from the entries themselves (so no key is stored twice), with std's randomly
/// keyed SipHash (names are producers' text). Files, directories and lanes each have one.
struct Table<T> {
    hasher: RandomState,
    items: Slab<T>,
    index: HashTable<u32>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            hasher: RandomState::new(),
            items: Slab::default(),
            index: HashTable::new(),
        }
    }
}

impl<T: Keyed> Table<T> {
    fn find<'a>(&'a self, key: T::Key<'a>) -> Option<u32> {
        let items = &self.items;
        self.index
            .find(self.hasher.hash_one(&key), |&at| items.get(at).key() == key)
            .copied()
    }

    /// Adds `item`, whose key is not in the table yet.
    fn insert(&mut self, item: T) -> u32 {
        let hash = self.hasher.hash_one(item.key());
        let at = self.items.insert(item);
        let (items, hasher) = (&self.items, &self.hasher);
        self.index
            .insert_unique(hash, at, |&at| hasher.hash_one(items.get(at).key()));
        at
    }

    fn remove(&mut self, at: u32) -> T {
        let hash = self.hasher.hash_one(self.items.get(at).key());
        if let Ok(entry) = self.index.find_entry(hash, |&x| x == at) {
            entry.remove();
        }
        self.items.remove(at)
    }

    fn get(&self, at: u32) -> &T {
        self.items.get(at)
    }

    fn get_mut(&mut self, at: u32) -> &mut T {
        self.items.get_mut(at)
    }
}

/// Known files, the directories they are in and the lanes those belong to.
struct State {
    epoch: Instant,
    slots: Table<Slot>,
    dirs: Table<Dir>,
    lanes: Table<Lane>,
    /// Lanes with queued files, in turn.
    turns: VecDeque<u32>,
    queued: usize,
    in_flight: usize,
}

impl Default for State {
    fn default() -> Self {
        State {
            epoch: Instant::now(),
            slots: Table::default(),
            dirs: Table::default(),
            lanes: Table::default(),
            turns: VecDeque::new(),
            queued: 0,
            in_flight: 0,
        }
    }
}

/// A path cut into what the queue stores: its directory, its name and its lane.
struct Parts<'a> {
    dir: &'a Path,
    name: &'a [u8],
    lane: &'a [u8],
}

impl<'a> Parts<'a> {
    fn of(root: &Path, path: &'a Path) -> Self {
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => (dir, name.as_bytes()),
            // Not a file's path (the queue is only given files); kept whole all the same.
            _ => (Path::new(""), path.as_os_str().as_bytes()),
        };
        let lane = match path.strip_prefix(root).ok().map(Path::components) {
            Some(mut components) => match (components.next(), components.next()) {
                (Some(Component::Normal(top)), Some(_)) => top.as_bytes(),
                _ => b"",
            },
            None => b"",
        };
        Parts { dir, name, lane }
    }
}

impl State {
    fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs().min(u64::from(u32::MAX)) as u32
    }

    fn find(&self, parts: &Parts) -> Option<u32> {
        let dir = self.dirs.find(parts.dir.as_os_str().as_bytes())?;
        self.slots.find((dir, parts.name))
    }

    /// A new slot for a file (its directory and lane made if new), not yet queued.
    fn insert(&mut self, parts: &Parts) -> u32 {
        let dir = match self.dirs.find(parts.dir.as_os_str().as_bytes()) {
            Some(dir) => dir,
            None => {
                let lane = match self.lanes.find(parts.lane) {
                    Some(lane) => lane,
                    None => self.lanes.insert(Lane {
                        name: parts.lane.into(),
                        head: NONE,
                        tail: NONE,
                        dirs: 0,
                    }),
                };
                self.lanes.get_mut(lane).dirs += 1;
                self.dirs.insert(Dir {
                    path: parts.dir.into(),
                    lane,
                    files: 0,
                })
            }
        };
        self.dirs.get_mut(dir).files += 1;
        let since = self.now();
        self.slots.insert(Slot {
            name: Name::new(parts.name),
            dir,
            next: NONE,
            since,
            stage: Stage::Waiting,
        })
    }

    /// Puts a slot at the end of its lane.
    fn enqueue(&mut self, s: u32) {
        let lane = self.dirs.get(self.slots.get(s).dir).lane;
        let slot = self.slots.get_mut(s);
        slot.stage = Stage::Queued;
        slot.next = NONE;
        let tail = self.lanes.get(lane).tail;
        if tail == NONE {
            self.lanes.get_mut(lane).head = s;
            self.turns.push_back(lane);
        } else {
            self.slots.get_mut(tail).next = s;
        }
        self.lanes.get_mut(lane).tail = s;
        self.queued += 1;
    }

    /// The next lane's first file, marked in flight.
    fn dequeue(&mut self) -> Option<u32> {
        let lane = self.turns.pop_front()?;
        let s = self.lanes.get(lane).head;
        let next = self.slots.get(s).next;
        let l = self.lanes.get_mut(lane);
        l.head = next;
        if next == NONE {
            l.tail = NONE;
        } else {
            self.turns.push_back(lane);
        }
        let slot = self.slots.get_mut(s);
        slot.next = NONE;
        slot.stage = Stage::InFlight;
        self.queued -= 1;
        self.in_flight += 1;
        Some(s)
    }

    /// Forgets a slot no lane holds, and its directory and lane once unused.
    fn remove(&mut self, s: u32) {
        let dir = self.slots.remove(s).dir;
        let d = self.dirs.get_mut(dir);
        d.files -= 1;
        if d.files > 0 {
            return;
        }
        let lane = self.dirs.remove(dir).lane;
        let l = self.lanes.get_mut(lane);
        l.dirs -= 1;
        if l.dirs > 0 {
            return;
        }
        self.lanes.remove(lane);
        if self.slots.items.used == 0 {
            // Emptied after a backlog: give the memory back.
            *self = State {
                epoch: self.epoch,
                ..State::default()
            };
        }
    }

    fn path(&self, slot: &Slot) -> PathBuf {
        self.dirs
            .get(slot.dir)
            .path
            .join(OsStr::from_bytes(slot.name.as_bytes()))
    }
}

impl Queue {
    /// A queue for files beneath `root` (`watch_dir`): its top-level directories are the
    /// lanes.
    pub fn new(root: &Path) -> Self {
        Queue {
            root: root.to_owned(),
            state: Mutex::default(),
            ready: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("queue lock")
    }

    /// Adds `path` unless it is already waiting; if it is being uploaded, it will be looked
    /// at again afterwards.
    pub fn push(&self, path: PathBuf) {
        let parts = Parts::of(&self.root, &path);
        let mut state = self.state();
        let s = match state.find(&parts) {
            Some(s) => s,
            None => state.insert(&parts),
        };
        let slot = state.slots.get_mut(s);
        match slot.stage {
            Stage::Queued | Stage::InFlightDirty => {}
            Stage::InFlight => slot.stage = Stage::InFlightDirty,
            Stage::Waiting => {
                state.enqueue(s);
                drop(state);
                self.ready.notify_one();
            }
        }
    }

    /// Waits for the next path and marks it in flight. Pair with [`Queue::finish`].
    pub async fn pop(&self) -> PathBuf {
        loop {
            // Register interest before checking, so a push between the check and the wait
            // is not missed.
            let notified = self.ready.notified();
            if let Some(path) = self.try_pop() {
                if self.state().queued > 0 {
                    // Pass the wake-up on: one notify_one may stand for many pushes.
                    self.ready.notify_one();
                }
                return path;
            }
            notified.await;
        }
    }

    /// The next path if one is waiting (marked in flight, like [`Queue::pop`]).
    pub fn try_pop(&self) -> Option<PathBuf> {
        let mut state = self.state();
        let s = state.dequeue()?;
        Some(state.path(state.slots.get(s)))
    }

    /// The upload of `path` is over; if it was reported again meanwhile, requeue it (and
    /// say so).
    pub fn finish(&self, path: &Path) -> bool {
        let parts = Parts::of(&self.root, path);
        let mut state = self.state();
        let Some(s) = state.find(&parts) else {
            return false;
        };
        match state.slots.get(s).stage {
            Stage::InFlight => {
                state.in_flight -= 1;
                state.slots.get_mut(s).stage = Stage::Waiting;
                false
            }
            Stage::InFlightDirty => {
                state.in_flight -= 1;
                state.enqueue(s);
                drop(state);
                self.ready.notify_one();
                true
            }
            Stage::Queued | Stage::Waiting => false,
        }
    }

    /// `path` is settled (uploaded, gone, dropped): it no longer counts as pending, unless
    /// it is queued or in flight again.
    pub fn settled(&self, path: &Path) {
        let parts = Parts::of(&self.root, path);
        let mut state = self.state();
        if let Some(s) = state.find(&parts)
            && state.slots.get(s).stage == Stage::Waiting
        {
            state.remove(s);
        }
    }

    /// The oldest file not yet settled, and how long it has been pending.
    pub fn oldest_pending(&self) -> Option<(PathBuf, Duration)> {
        let state = self.state();
        let oldest = state.slots.items.iter().min_by_key(|slot| slot.since)?;
        let age = state
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_secs(oldest.since.into()));
        Some((state.path(oldest), age))
    }

    /// Waiting plus in flight.
    pub fn depth(&self) -> usize {
        let state = self.state();
        state.queued + state.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn queue() -> Queue {
        Queue::new(Path::new("/w"))
    }

    #[tokio::test]
    async fn duplicates_collapse_and_order_is_kept() {
        let q = queue();
        q.push(p("/w/a"));
        q.push(p("/w/b"));
        q.push(p("/w/a"));
        assert_eq!(q.depth(), 2);
        assert_eq!(q.pop().await, p("/w/a"));
        assert_eq!(q.pop().await, p("/w/b"));
    }

    #[tokio::test]
    async fn a_push_during_upload_comes_back_after_finish() {
        let q = queue();
        q.push(p("/w/a"));
        let a = q.pop().await;
        q.push(p("/w/a"));
        assert_eq!(q.depth(), 1, "only the in-flight one");
        assert!(q.finish(&a));
        assert_eq!(q.pop().await, p("/w/a"));
        assert!(!q.finish(&a));
        assert_eq!(q.depth(), 0);
        assert!(q.oldest_pending().is_some(), "not settled yet");
        q.settled(&a);
        assert!(q.oldest_pending().is_none());
    }

    #[tokio::test]
    async fn waiting_workers_all_wake_for_a_burst() {
        let q = std::sync::Arc::new(queue());
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.pop().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for name in ["/w/x", "/w/y", "/w/z"] {
            q.push(p(name));
        }
        let mut got = Vec::new();
        for w in workers {
            got.push(
                tokio::time::timeout(Duration::from_secs(2), w)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        got.sort();
        assert_eq!(got, vec![p("/w/x"), p("/w/y"), p("/w/z")]);
    }

    #[test]
    fn a_flood_in_one_directory_does_not_starve_another() {
        let q = queue();
        for i in 0..10_000 {
            q.push(PathBuf::from(format!("/w/flood/deep/{i}")));
        }
        q.push(p("/w/a.log"));
        q.push(p("/w/other/canary"));
        let first: Vec<PathBuf> = (0..3).map(|_| q.try_pop().unwrap()).collect();
        assert!(first.contains(&p("/w/other/canary")), "{first:?}");
        assert!(first.contains(&p("/w/a.log")), "{first:?}");
        // Within the flood's lane the order of arrival holds.
        let mut flood: Vec<PathBuf> = first
            .into_iter()
            .filter(|f| f.starts_with("/w/flood"))
            .collect();
        flood.extend(std::iter::from_fn(|| q.try_pop()));
        let expected: Vec<PathBuf> = (0..10_000)
            .map(|i| PathBuf::from(format!("/w/flood/deep/{i}")))
            .collect();
        assert_eq!(flood, expected);
    }

    /// Generated operation sequences against a plain model of the contract: each path at
    /// most once, in flight reported again → back once, settled only when neither.
    #[test]
    fn matches_a_plain_model() {
        use proptest::prelude::*;
        use std::collections::{BTreeSet, HashSet};
        #[derive(Debug, Clone)]
        enum Op {
            Push(u8),
            Pop,
            Finish(u8),
            Settle(u8),
        }
        let path = |n: u8| PathBuf::from(format!("/w/d{}/s{}/f{}", n % 3, n % 2, n));
        let op = prop_oneof![
            (0u8..12).prop_map(Op::Push),
            Just(Op::Pop),
            (0u8..12).prop_map(Op::Finish),
            (0u8..12).prop_map(Op::Settle),
        ];
        proptest!(|(ops in proptest::collection::vec(op, 1..200))| {
            let q = queue();
            let (mut queued, mut in_flight, mut dirty, mut pending) =
                (BTreeSet::new(), HashSet::new(), HashSet::new(), HashSet::new());
            for op in ops {
                match op {
                    Op::Push(n) => {
                        q.push(path(n));
                        pending.insert(n);
                        if in_flight.contains(&n) { dirty.insert(n); } else { queued.insert(n); }
                    }
                    Op::Pop => match q.try_pop() {
                        Some(got) => {
                            let n = (0..12).find(|&n| path(n) == got).unwrap();
                            prop_assert!(queued.remove(&n), "{got:?} was not queued");
                            in_flight.insert(n);
                        }
                        None => prop_assert!(queued.is_empty()),
                    },
                    Op::Finish(n) => {
                        let back = q.finish(&path(n));
                        let expected = in_flight.remove(&n) && dirty.remove(&n);
                        prop_assert_eq!(back, expected);
                        if expected { queued.insert(n); }
                    }
                    Op::Settle(n) => {
                        q.settled(&path(n));
                        if !queued.contains(&n) && !in_flight.contains(&n) { pending.remove(&n); }
                    }
                }
                prop_assert_eq!(q.depth(), queued.len() + in_flight.len());
                prop_assert_eq!(q.oldest_pending().is_some(), !pending.is_empty());
            }
        });
    }

    /// The per-file memory bound, counted by the test allocator (this thread's bytes):
    /// 100,000 waiting files in 1,000 directories cost at most 100 bytes each, and a
    /// drained queue gives its memory back.
    #[test]
    fn a_waiting_file_costs_at_most_100_bytes() {
        use crate::test_alloc::allocated_here;
        let paths: Vec<PathBuf> = (0..100_000)
            .map(|i| {
                PathBuf::from(format!(
                    "/var/spool/s3drop/host-{:02}/d{:04}/file-{i:07}.log",
                    i % 10,
                    i % 1000
                ))
            })
            .collect();
        let before = allocated_here();
        let q = Queue::new(Path::new("/var/spool/s3drop"));
        for path in &paths {
            q.push(path.clone());
        }
        let per_file = (allocated_here() - before) as f64 / paths.len() as f64;
        eprintln!("{per_file:.1} bytes per waiting file");
        assert!(per_file <= 100.0, "{per_file:.1} bytes per waiting file");
        while let Some(path) = q.try_pop() {
            q.finish(&path);
            q.settled(&path);
        }
        let left = allocated_here() - before;
        assert!(left < 4096, "{left} bytes left after draining");
        drop(q);
    }
}
