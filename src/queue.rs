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
use std::hash::{BuildHasher, RandomState};
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

/// Interned values (directories, lanes) and known files, each found by a keyed hash (file
/// names come from producers, so the hasher is std's randomly keyed SipHash).
struct State {
    epoch: Instant,
    hasher: RandomState,
    slots: Slab<Slot>,
    slot_index: HashTable<u32>,
    dirs: Slab<Dir>,
    dir_index: HashTable<u32>,
    lanes: Slab<Lane>,
    lane_index: HashTable<u32>,
    /// Lanes with queued files, in turn.
    turns: VecDeque<u32>,
    queued: usize,
    in_flight: usize,
}

impl Default for State {
    fn default() -> Self {
        State {
            epoch: Instant::now(),
            hasher: RandomState::new(),
            slots: Slab::default(),
            slot_index: HashTable::new(),
            dirs: Slab::default(),
            dir_index: HashTable::new(),
            lanes: Slab::default(),
            lane_index: HashTable::new(),
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

    fn slot_hash(hasher: &RandomState, dir: u32, name: &[u8]) -> u64 {
        hasher.hash_one((dir, name))
    }

    fn find_dir(&self, dir: &Path) -> Option<u32> {
        let hash = self.hasher.hash_one(dir.as_os_str().as_bytes());
        let dirs = &self.dirs;
        self.dir_index
            .find(hash, |&d| &*dirs.get(d).path == dir)
            .copied()
    }

    fn find(&self, parts: &Parts) -> Option<u32> {
        let dir = self.find_dir(parts.dir)?;
        let hash = Self::slot_hash(&self.hasher, dir, parts.name);
        let slots = &self.slots;
        self.slot_index
            .find(hash, |&s| {
                let slot = slots.get(s);
                slot.dir == dir && slot.name.as_bytes() == parts.name
            })
            .copied()
    }

    fn lane_for(&mut self, name: &[u8]) -> u32 {
        let hash = self.hasher.hash_one(name);
        let lanes = &self.lanes;
        if let Some(&lane) = self.lane_index.find(hash, |&l| &*lanes.get(l).name == name) {
            return lane;
        }
        let lane = self.lanes.insert(Lane {
            name: name.into(),
            head: NONE,
            tail: NONE,
            dirs: 0,
        });
        let (lanes, hasher) = (&self.lanes, &self.hasher);
        self.lane_index
            .insert_unique(hash, lane, |&l| hasher.hash_one(&*lanes.get(l).name));
        lane
    }

    fn dir_for(&mut self, dir: &Path, lane: &[u8]) -> u32 {
        if let Some(d) = self.find_dir(dir) {
            return d;
        }
        let lane = self.lane_for(lane);
        self.lanes.get_mut(lane).dirs += 1;
        let d = self.dirs.insert(Dir {
            path: dir.into(),
            lane,
            files: 0,
        });
        let (dirs, hasher) = (&self.dirs, &self.hasher);
        self.dir_index
            .insert_unique(hasher.hash_one(dir.as_os_str().as_bytes()), d, |&d| {
                hasher.hash_one(dirs.get(d).path.as_os_str().as_bytes())
            });
        d
    }

    /// A new slot for a file, queued.
    fn insert(&mut self, parts: &Parts) -> u32 {
        let dir = self.dir_for(parts.dir, parts.lane);
        self.dirs.get_mut(dir).files += 1;
        let since = self.now();
        let s = self.slots.insert(Slot {
            name: Name::new(parts.name),
            dir,
            next: NONE,
            since,
            stage: Stage::Waiting,
        });
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.slot_index
            .insert_unique(Self::slot_hash(hasher, dir, parts.name), s, |&s| {
                let slot = slots.get(s);
                Self::slot_hash(hasher, slot.dir, slot.name.as_bytes())
            });
        s
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
        let (dir, name_hash) = {
            let slot = self.slots.get(s);
            (
                slot.dir,
                Self::slot_hash(&self.hasher, slot.dir, slot.name.as_bytes()),
            )
        };
        if let Ok(entry) = self.slot_index.find_entry(name_hash, |&x| x == s) {
            entry.remove();
        }
        self.slots.remove(s);
        let d = self.dirs.get_mut(dir);
        d.files -= 1;
        if d.files > 0 {
            return;
        }
        let dir_hash = self.hasher.hash_one(d.path.as_os_str().as_bytes());
        if let Ok(entry) = self.dir_index.find_entry(dir_hash, |&x| x == dir) {
            entry.remove();
        }
        let lane = self.dirs.remove(dir).lane;
        let l = self.lanes.get_mut(lane);
        l.dirs -= 1;
        if l.dirs > 0 {
            return;
        }
        let lane_hash = self.hasher.hash_one(&*l.name);
        if let Ok(entry) = self.lane_index.find_entry(lane_hash, |&x| x == lane) {
            entry.remove();
        }
        self.lanes.remove(lane);
        if self.slots.used == 0 {
            // Emptied after a backlog: give the memory back.
            *self = State {
                epoch: self.epoch,
                hasher: self.hasher.clone(),
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
        let oldest = state.slots.iter().min_by_key(|slot| slot.since)?;
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
