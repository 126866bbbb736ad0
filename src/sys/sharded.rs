//! A reader-writer lock for tables read on the hot path by many threads and written
//! rarely (the registry, the peer table, the prepared lists): a reader locks one of
//! eight shards, chosen by its thread's number (`ring::sync::home`), each shard an
//! `RwLock<()>` on its own cache line; a writer locks all eight, in order. Threads
//! that read at once write different lines; a read costs one uncontended
//! read-modify-write. (`crossbeam_utils::sync::ShardedLock` is the same idea; this
//! one picks the shard with the ring's constant thread-local instead of a registry
//! of thread ids, which halves the instructions of a read.)
//!
//! Poisoning is `RwLock`'s: a panic while a write guard is held poisons every shard,
//! so later reads and writes see it; a panic while reading poisons nothing.

// Unsafe code: handing out the value under the shards' locks (the crate root denies
// it elsewhere).
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::{LockResult, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crossbeam_utils::CachePadded;

use crate::ring::home;

const SHARDS: usize = 8;

/// See the module docs.
pub(crate) struct Sharded<T> {
    shards: [CachePadded<RwLock<()>>; SHARDS],
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through guards: shared references while a shard
// is read-locked, a unique one while every shard is write-locked (as `RwLock<T>`).
unsafe impl<T: Send> Send for Sharded<T> {}
// SAFETY: as above; readers on several threads share `&T` (`T: Sync`), a writer on
// any thread gets `&mut T` (`T: Send`).
unsafe impl<T: Send + Sync> Sync for Sharded<T> {}

/// Shared access: one shard read-locked.
pub(crate) struct ReadGuard<'a, T> {
    _shard: RwLockReadGuard<'a, ()>,
    value: &'a T,
}

/// Unique access: every shard write-locked.
pub(crate) struct WriteGuard<'a, T> {
    _shards: [RwLockWriteGuard<'a, ()>; SHARDS],
    value: &'a mut T,
}

impl<T> Sharded<T> {
    pub(crate) fn new(value: T) -> Sharded<T> {
        Sharded {
            shards: std::array::from_fn(|_| CachePadded::new(RwLock::new(()))),
            value: UnsafeCell::new(value),
        }
    }

    /// Locks the calling thread's shard for reading.
    #[inline]
    pub(crate) fn read(&self) -> LockResult<ReadGuard<'_, T>> {
        let (shard, poisoned) = match self.shards[home() % SHARDS].read() {
            Ok(guard) => (guard, false),
            Err(e) => (e.into_inner(), true),
        };
        let guard = ReadGuard {
            _shard: shard,
            // SAFETY: this thread holds a shard's read lock, and a `&mut T` exists
            // only while every shard is write-locked: none exists now, and none can
            // until the guard is dropped.
            value: unsafe { &*self.value.get() },
        };
        if poisoned {
            Err(PoisonError::new(guard))
        } else {
            Ok(guard)
        }
    }

    /// Locks every shard for writing (in order, so writers never deadlock).
    // `LockResult` as `RwLock::write` returns it; the guard is eight shard guards,
    // and writes are control-path calls.
    #[allow(clippy::result_large_err)]
    pub(crate) fn write(&self) -> LockResult<WriteGuard<'_, T>> {
        let mut poisoned = false;
        let shards = std::array::from_fn(|i| match self.shards[i].write() {
            Ok(guard) => guard,
            Err(e) => {
                poisoned = true;
                e.into_inner()
            }
        });
        let guard = WriteGuard {
            _shards: shards,
            // SAFETY: every shard is write-locked by this thread: no reader holds a
            // `&T` and no other writer a `&mut T` until the guard is dropped.
            value: unsafe { &mut *self.value.get() },
        };
        if poisoned {
            Err(PoisonError::new(guard))
        } else {
            Ok(guard)
        }
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn readers_on_many_threads_see_what_the_writer_wrote() {
        let lock = Arc::new(Sharded::new(0u64));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        *lock.write().unwrap() += 1;
                        let seen = *lock.read().unwrap();
                        assert!(seen >= 1);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*lock.read().unwrap(), 12_000);
    }

    #[test]
    fn a_panic_while_writing_poisons_every_reader() {
        let lock = Arc::new(Sharded::new(1u32));
        let writer = Arc::clone(&lock);
        let _ = std::thread::spawn(move || {
            let _guard = writer.write().unwrap();
            panic!("while writing");
        })
        .join();
        // Readers on other threads (other shards) see the poison too.
        let threads: Vec<_> = (0..9)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || lock.read().is_err())
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
        assert_eq!(*lock.read().unwrap_or_else(PoisonError::into_inner), 1);
    }

    #[test]
    fn a_panic_while_reading_poisons_nothing() {
        let lock = Arc::new(Sharded::new(1u32));
        let reader = Arc::clone(&lock);
        let _ = std::thread::spawn(move || {
            let _guard = reader.read().unwrap();
            panic!("while reading");
        })
        .join();
        assert!(lock.write().is_ok());
    }
}
