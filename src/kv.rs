//! `KvStore`: string keys to fixed-size value blocks in a preallocated set of files —
//! what a KV-cache storage tier (SGLang's HiCache, say) needs, without the descriptor
//! per key that leaked in the NIXL-based one.
//!
//! The files are registered once with the engine when the store is created, so every
//! `set`/`get` is an ordinary file transfer on the engine's I/O workers: no file is
//! opened or closed per key, and `EngineStats::open_files` stays at the number of
//! files. The index lives in memory, in tables sized at creation (a full store is
//! [`Error::KvFull`], never growth): an open-addressing hash table of keys, a key
//! arena, and a free list of value blocks. `set`, `get`, `exists` and `remove` do not
//! allocate.
//!
//! Consistency: `set` writes the value into a fresh block and only then points the key
//! at it, so a concurrent `get` reads either the old value or the new one, never a mix;
//! a block that a `get` is still reading is freed when that read ends.

use std::sync::Mutex;
use std::time::Duration;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::mem::FileOptions;
use crate::ring::Status;
use crate::types::Op;
use crate::types::{Desc, RegionId};

/// How a [`KvStore`] is laid out. Capacity = `files × blocks_per_file` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// Where the files are created (`kv-0.bin`, `kv-1.bin`, …; existing ones are reused
    /// and extended, their old contents ignored: the index starts empty).
    pub dir: std::path::PathBuf,
    /// How many files.
    pub files: usize,
    /// Value blocks per file.
    pub blocks_per_file: u64,
    /// The size of every value block, the largest value (bytes).
    pub block_size: u64,
    /// The longest key (bytes), 1–1024.
    pub max_key_len: usize,
    /// Make every `set` durable (`fdatasync`) before it returns.
    pub sync: bool,
    /// How long one value transfer may take before `set`/`get` give up.
    pub timeout: Duration,
}

const EMPTY: u8 = 0;
const FULL: u8 = 1;
const TOMBSTONE: u8 = 2;

#[derive(Clone, Copy, Default)]
struct Bucket {
    hash: u64,
    block: u32,
    state: u8,
}

struct Index {
    buckets: Box<[Bucket]>,
    /// Per block: its key (in `keys`), the value's length, readers in progress, and
    /// whether it was replaced or removed while being read.
    keys: Box<[u8]>,
    key_lens: Box<[u16]>,
    value_lens: Box<[u64]>,
    readers: Box<[u32]>,
    retired: Box<[bool]>,
    free: Vec<u32>,
    len: usize,
}

/// How a [`KvStore`] holds its engine: borrowed ([`KvStore::create`]) or shared
/// ([`KvStore::create_shared`], for bindings whose objects cannot borrow).
enum EngineRef<'e> {
    Borrowed(&'e Engine),
    Shared(std::sync::Arc<Engine>),
}

impl std::ops::Deref for EngineRef<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        match self {
            EngineRef::Borrowed(e) => e,
            EngineRef::Shared(e) => e,
        }
    }
}

/// String keys to value blocks in registered files (see the module docs).
pub struct KvStore<'e> {
    engine: EngineRef<'e>,
    files: Box<[RegionId]>,
    blocks_per_file: u64,
    block_size: u64,
    max_key_len: usize,
    timeout: Duration,
    index: Mutex<Index>,
}

/// FNV-1a: deterministic, allocation-free, good enough for an index of keys the
/// application chose.
fn hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Index {
    fn key(&self, block: u32, max_key_len: usize) -> &[u8] {
        let start = block as usize * max_key_len;
        &self.keys[start..start + self.key_lens[block as usize] as usize]
    }

    /// The bucket holding `key`, if any.
    fn find(&self, key: &[u8], h: u64, max_key_len: usize) -> Option<usize> {
        let mask = self.buckets.len() - 1;
        let mut i = h as usize & mask;
        // Bounded: removals leave tombstones, which may leave no empty bucket to stop at.
        for _ in 0..self.buckets.len() {
            let b = self.buckets[i];
            match b.state {
                EMPTY => return None,
                FULL if b.hash == h && self.key(b.block, max_key_len) == key => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
        None
    }

    /// Frees a block no key points to, unless a read of it is in progress.
    fn drop_block(&mut self, block: u32) {
        if self.readers[block as usize] > 0 {
            self.retired[block as usize] = true;
        } else {
            self.free.push(block);
        }
    }
}

impl<'e> KvStore<'e> {
    /// Creates (or reuses) the files, registers them with `engine` and builds an empty
    /// index. All memory is allocated here.
    pub fn create(engine: &'e Engine, config: KvConfig) -> Result<KvStore<'e>> {
        KvStore::build(EngineRef::Borrowed(engine), config)
    }

    fn build(engine: EngineRef<'e>, config: KvConfig) -> Result<KvStore<'e>> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        if config.files == 0 || config.blocks_per_file == 0 || config.block_size == 0 {
            return bad("kv", "files, blocks_per_file and block_size must be positive");
        }
        if engine.config().file_workers == 0 {
            return bad(
                "file_workers",
                "is 0: the key-value store needs the engine's I/O workers",
            );
        }
        if config.max_key_len == 0 || config.max_key_len > 1024 {
            return bad("kv.max_key_len", "must be 1 to 1024");
        }
        let capacity = (config.files as u64)
            .checked_mul(config.blocks_per_file)
            .filter(|&c| c <= 1 << 24);
        let Some(capacity) = capacity.map(|c| c as usize) else {
            return bad("kv", "files × blocks_per_file must be at most 2^24");
        };
        let file_len = config
            .blocks_per_file
            .checked_mul(config.block_size)
            .ok_or(Error::InvalidConfig {
                field: "kv.block_size",
                reason: "× blocks_per_file overflows",
            })?;
        std::fs::create_dir_all(&config.dir).map_err(|e| Error::io("creating the key-value directory", &e))?;
        let mut files = Vec::with_capacity(config.files);
        for i in 0..config.files {
            let options = FileOptions {
                writable: true,
                create: true,
                len: Some(file_len),
                sync: config.sync,
            };
            match engine.register_file(config.dir.join(format!("kv-{i}.bin")), options) {
                Ok(id) => files.push(id),
                Err(e) => {
                    files.into_iter().for_each(|f| drop(engine.deregister(f)));
                    return Err(e);
                }
            }
        }
        let buckets = (capacity * 2).next_power_of_two();
        Ok(KvStore {
            engine,
            files: files.into_boxed_slice(),
            blocks_per_file: config.blocks_per_file,
            block_size: config.block_size,
            max_key_len: config.max_key_len,
            timeout: config.timeout,
            index: Mutex::new(Index {
                buckets: vec![Bucket::default(); buckets].into_boxed_slice(),
                keys: vec![0; capacity * config.max_key_len].into_boxed_slice(),
                key_lens: vec![0; capacity].into_boxed_slice(),
                value_lens: vec![0; capacity].into_boxed_slice(),
                readers: vec![0; capacity].into_boxed_slice(),
                retired: vec![false; capacity].into_boxed_slice(),
                free: (0..capacity as u32).rev().collect(),
                len: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a block lives.
    fn place(&self, block: u32, len: u64) -> Desc {
        let file = self.files[(u64::from(block) / self.blocks_per_file) as usize];
        Desc::new(file, (u64::from(block) % self.blocks_per_file) * self.block_size, len)
    }

    /// One transfer to the engine itself, waited for.
    /// One transfer to the engine itself, waited for until it has ended: a value
    /// transfer is never left running behind the caller's back (it would write the
    /// caller's buffer, or a block, after the call returned).
    fn transfer(&self, op: Op, memory: Desc, block: Desc) -> Result<()> {
        let e = &*self.engine;
        let h = e.prepare(op, &[memory], e.local_peer(), &[block], None)?;
        if let Err(err) = e.post(h) {
            let _ = e.release(h);
            return Err(err);
        }
        let mut timed_out = false;
        let status = loop {
            match e.wait(h, self.timeout) {
                Ok(status) => break status,
                Err(Error::Timeout { .. }) if !timed_out => {
                    // Ask the worker to drop it if it has not started; either way wait
                    // for its end (a started pread/pwrite is bounded).
                    timed_out = true;
                    let _ = e.cancel(h);
                }
                Err(Error::Timeout { .. }) => {}
                Err(err) => {
                    let _ = e.release(h);
                    return Err(err);
                }
            }
        };
        e.release(h)?;
        match status {
            Status::Done if !timed_out => Ok(()),
            Status::Done | Status::Cancelled => Err(Error::Timeout { handle: h }),
            Status::Failed(code) => Err(Error::TransferFailed { handle: h, code }),
            Status::Reserved | Status::Posted => unreachable!("wait returns terminal states only"),
        }
    }

    /// Stores `value` (a range of registered memory, at most `block_size` bytes) under
    /// `key`, replacing any older value.
    pub fn set(&self, key: &str, value: Desc) -> Result<()> {
        let key = key.as_bytes();
        if key.is_empty() || key.len() > self.max_key_len {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max: self.max_key_len,
            });
        }
        if value.len > self.block_size {
            return Err(Error::ValueTooLarge {
                len: value.len,
                max: self.block_size,
            });
        }
        let block = {
            let mut index = self.lock();
            let capacity = index.key_lens.len();
            index.free.pop().ok_or(Error::KvFull { capacity })?
        };
        // `transfer` returns only once the write has ended, so the block is free to
        // reuse on any failure.
        if let Err(e) = self.transfer(Op::Write, value, self.place(block, value.len)) {
            self.lock().free.push(block);
            return Err(e);
        }
        let mut index = self.lock();
        let h = hash(key);
        let b = block as usize;
        index.keys[b * self.max_key_len..][..key.len()].copy_from_slice(key);
        index.key_lens[b] = key.len() as u16;
        index.value_lens[b] = value.len;
        index.retired[b] = false;
        if let Some(i) = index.find(key, h, self.max_key_len) {
            let old = std::mem::replace(&mut index.buckets[i].block, block);
            index.drop_block(old);
            return Ok(());
        }
        let mask = index.buckets.len() - 1;
        let mut i = h as usize & mask;
        while index.buckets[i].state == FULL {
            i = (i + 1) & mask;
        }
        index.buckets[i] = Bucket {
            hash: h,
            block,
            state: FULL,
        };
        index.len += 1;
        Ok(())
    }

    /// Reads the value of `key` into `out` (registered memory of at least the value's
    /// length); its length, or `None` if the key is absent.
    pub fn get(&self, key: &str, out: Desc) -> Result<Option<u64>> {
        let (block, len) = {
            let mut index = self.lock();
            let Some(i) = index.find(key.as_bytes(), hash(key.as_bytes()), self.max_key_len) else {
                return Ok(None);
            };
            let block = index.buckets[i].block;
            let len = index.value_lens[block as usize];
            if out.len < len {
                return Err(Error::ValueTooLarge { len, max: out.len });
            }
            index.readers[block as usize] += 1;
            (block, len)
        };
        let read = self.transfer(Op::Read, Desc::new(out.region, out.offset, len), self.place(block, len));
        let mut index = self.lock();
        index.readers[block as usize] -= 1;
        if index.retired[block as usize] && index.readers[block as usize] == 0 {
            index.retired[block as usize] = false;
            index.free.push(block);
        }
        read.map(|()| Some(len))
    }

    /// Whether `key` has a value.
    pub fn exists(&self, key: &str) -> bool {
        self.lock()
            .find(key.as_bytes(), hash(key.as_bytes()), self.max_key_len)
            .is_some()
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&self, key: &str) -> bool {
        let mut index = self.lock();
        let Some(i) = index.find(key.as_bytes(), hash(key.as_bytes()), self.max_key_len) else {
            return false;
        };
        let block = index.buckets[i].block;
        index.buckets[i].state = TOMBSTONE;
        // A run of tombstones that ends at an empty bucket can be empty itself: no
        // probe for a present key passes through it. Keeps lookups short under churn.
        let mask = index.buckets.len() - 1;
        if index.buckets[(i + 1) & mask].state == EMPTY {
            let mut j = i;
            while index.buckets[j].state == TOMBSTONE {
                index.buckets[j].state = EMPTY;
                j = j.wrapping_sub(1) & mask;
            }
        }
        index.len -= 1;
        index.drop_block(block);
        true
    }

    /// Stores several values; stops at the first failure and returns it (the values
    /// stored before it stay).
    pub fn batch_set(&self, items: &[(&str, Desc)]) -> Result<()> {
        items.iter().try_for_each(|(key, value)| self.set(key, *value))
    }

    /// Reads several values; each result as for [`get`](KvStore::get), in order,
    /// written into `lens` (which must be as long as `items`).
    pub fn batch_get(&self, items: &[(&str, Desc)], lens: &mut [Option<u64>]) -> Result<()> {
        if lens.len() != items.len() {
            return Err(Error::LengthMismatch {
                what: "batch_get results vs items",
                local: lens.len() as u64,
                remote: items.len() as u64,
            });
        }
        for ((key, out), len) in items.iter().zip(lens.iter_mut()) {
            *len = self.get(key, *out)?;
        }
        Ok(())
    }

    /// Keys stored now.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many values the store can hold.
    pub fn capacity(&self) -> usize {
        self.lock().key_lens.len()
    }
}

impl KvStore<'static> {
    /// As [`create`](KvStore::create), holding the engine by an `Arc` (the Python
    /// binding's store outlives any borrow). The engine shuts down only after the
    /// store, which deregisters its files, is dropped.
    pub fn create_shared(engine: std::sync::Arc<Engine>, config: KvConfig) -> Result<KvStore<'static>> {
        KvStore::build(EngineRef::Shared(engine), config)
    }
}

impl Drop for KvStore<'_> {
    fn drop(&mut self) {
        // Closes the files: every transfer of ours was waited for and released.
        for &f in self.files.iter() {
            let _ = self.engine.deregister(f);
        }
    }
}
