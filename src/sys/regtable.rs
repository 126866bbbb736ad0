//! The registration table peers in other processes read: whether each region is still
//! registered, and which peers' copies are using it right now.
//!
//! A shared-memory segment the owning engine creates, holding the words of a
//! [`PinTable`] (see `ring::pins` for the protocol): one word per registration entry,
//! one per lane (a peer process pinning through it; lane `i` belongs to whoever holds
//! lane `i` of the owner's inbox), and one count per (entry, lane).
//!
//! - The owner opens an entry when it registers a region, and closes it when it
//!   deregisters one — only if no live peer holds a pin, else `Busy`. Pins of a peer
//!   process that died count for nothing: a killed initiator leaves the owner nothing
//!   held.
//! - A peer copying into memory the owner registered itself (`process_vm_writev`), or
//!   into its GPU memory (a CUDA IPC mapping), pins the entry for the copy: the owner
//!   cannot deregister (and then free) the memory in between. A peer copying into a
//!   shared segment only checks the entry is open, so a write to a deregistered region
//!   fails instead of landing unseen.
//! - At engine drop the owner closes every entry, waiting a bounded time for pins to
//!   drain, then closes it for good.

// Unsafe code: the registration table in a shared-memory segment (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ring::{PinLane, PinTable, PinWord};
use crate::sys::shm::Segment;

/// The most words a table may hold: counts are `entries × lanes` (the segment is
/// sparse: only pages of entries that were pinned are ever touched).
pub(crate) const MAX_WORDS: usize = 1 << 27;

pub(crate) struct RegTable {
    segment: Segment,
    entries: usize,
    lanes: usize,
}

// SAFETY: the segment is only accessed through the atomics `table` hands out.
unsafe impl Send for RegTable {}
// SAFETY: as above.
unsafe impl Sync for RegTable {}

/// The segment's size for `entries` entries and `lanes` lanes, if within bounds.
fn words(entries: usize, lanes: usize) -> Option<usize> {
    let words = entries.checked_mul(lanes)?.checked_add(entries)?.checked_add(lanes)?;
    (words <= MAX_WORDS).then_some(words)
}

impl RegTable {
    /// The owner's table: `entries` closed entries, `lanes` free lanes.
    pub(crate) fn create(dir: &Path, name: &str, entries: usize, lanes: usize) -> Result<RegTable> {
        let words = words(entries, lanes).ok_or(Error::InvalidConfig {
            field: "max_registrations",
            reason: "max_registrations × max_peers must be at most 2^27",
        })?;
        Ok(RegTable {
            segment: Segment::create(dir, name, words.max(1) * 8)?,
            entries,
            lanes,
        })
    }

    /// A peer's view of an owner's table.
    pub(crate) fn open(path: &Path, entries: usize, lanes: usize) -> Result<RegTable> {
        let words = words(entries, lanes).ok_or(Error::InvalidDescriptor {
            reason: "a peer's registration table is larger than any engine makes",
        })?;
        Ok(RegTable {
            segment: Segment::open(path, words.max(1) * 8)?,
            entries,
            lanes,
        })
    }

    fn table(&self) -> PinTable<'_> {
        let base = self.segment.as_ptr().cast::<PinWord>().cast_const();
        // SAFETY: the segment holds `entries + lanes + entries × lanes` u64s from its
        // page-aligned start (checked at create/open), every bit pattern is a valid
        // AtomicU64 (`PinWord` outside loom models, which never build a table), and the mapping lives as long as `self`.
        unsafe {
            PinTable::new(
                std::slice::from_raw_parts(base, self.entries),
                std::slice::from_raw_parts(base.add(self.entries), self.lanes),
                std::slice::from_raw_parts(base.add(self.entries + self.lanes), self.entries * self.lanes),
            )
        }
    }

    /// Owner: the region at `index` is registered at `generation`.
    pub(crate) fn open_entry(&self, index: usize, generation: u64) {
        self.table().open(index, generation);
    }

    /// Owner: closes the entry unless a live peer pins it; `Err(pins)` then.
    pub(crate) fn close_entry(&self, index: usize, generation: u64) -> std::result::Result<(), u32> {
        self.table().close(index, generation, process_alive)
    }

    /// Owner, at engine drop: closes the entry, waiting up to `patience` for pins.
    pub(crate) fn close_waiting(&self, index: usize, generation: u64, patience: Duration) {
        let start = Instant::now();
        while self.close_entry(index, generation).is_err() && start.elapsed() < patience {
            std::thread::sleep(Duration::from_micros(100));
        }
        // Whatever remains, the entry is closed for good.
        self.table().force_close(index, generation);
    }

    /// Peer: whether the region is registered at `generation`.
    pub(crate) fn is_open(&self, index: usize, generation: u64) -> bool {
        self.table().is_open(index, generation)
    }

    /// Peer: takes lane `lane` (the caller holds the owner's inbox lane of that index)
    /// for this process.
    pub(crate) fn take_lane(&self, lane: usize) -> Option<PinLane> {
        self.table().take_lane(lane, std::process::id())
    }

    /// Peer: pins the region for a copy; false if it is not registered at `generation`.
    pub(crate) fn pin(&self, lane: PinLane, index: usize, generation: u64) -> bool {
        self.table().pin(lane, index, generation)
    }

    /// Peer: drops a pin taken by [`pin`](RegTable::pin).
    pub(crate) fn unpin(&self, lane: PinLane, index: usize) {
        self.table().unpin(lane, index);
    }
}

/// Whether the process `pid` still runs (signal 0 checks without sending).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: usize, lanes: usize) -> RegTable {
        let name = format!("ringxfer-regtable-test-{}-{entries}-{lanes}", std::process::id());
        RegTable::create(&std::env::temp_dir(), &name, entries, lanes).unwrap()
    }

    #[test]
    fn pins_block_closing_and_closing_blocks_pins() {
        let t = table(4, 2);
        let lane = t.take_lane(1).unwrap();
        assert!(!t.is_open(1, 7) && !t.pin(lane, 1, 7), "entries start closed");
        t.open_entry(1, 7);
        assert!(t.is_open(1, 7) && !t.is_open(1, 8), "the generation must match");
        assert!(t.pin(lane, 1, 7));
        assert!(t.pin(lane, 1, 7));
        assert_eq!(t.close_entry(1, 7), Err(2), "a live peer's copies hold it");
        assert!(t.is_open(1, 7), "a refused close leaves it open");
        t.unpin(lane, 1);
        t.unpin(lane, 1);
        assert_eq!(t.close_entry(1, 7), Ok(()));
        assert!(!t.pin(lane, 1, 7), "closed: no new copies");
        assert!(!t.pin(lane, 9, 1), "out of range");
        assert!(t.take_lane(2).is_none(), "no such lane");
    }

    #[test]
    fn a_dead_or_replaced_lane_holds_nothing() {
        let t = table(2, 2);
        t.open_entry(0, 3);
        // A pin under a lane whose holder's pid cannot exist.
        let dead = t.table().take_lane(0, u32::MAX).unwrap();
        assert!(t.pin(dead, 0, 3));
        assert_eq!(t.close_entry(0, 3), Ok(()), "a dead process's pin holds nothing");
        // A live lane's pin, then the lane taken over (a new epoch): the old pin is void.
        t.open_entry(0, 4);
        let old = t.take_lane(1).unwrap();
        assert!(t.pin(old, 0, 4));
        assert_eq!(t.close_entry(0, 4), Err(1));
        let new = t.take_lane(1).unwrap();
        assert_ne!(old.epoch, new.epoch);
        assert_eq!(t.close_entry(0, 4), Ok(()));
        // Pins of the new epoch start from zero.
        t.open_entry(0, 5);
        assert!(t.pin(new, 0, 5));
        assert_eq!(t.close_entry(0, 5), Err(1));
        t.unpin(new, 0);
        assert_eq!(t.close_entry(0, 5), Ok(()));
    }

    #[test]
    fn tables_beyond_the_bound_are_refused() {
        let name = format!("ringxfer-regtable-test-big-{}", std::process::id());
        assert!(RegTable::create(&std::env::temp_dir(), &name, 1 << 20, 4096).is_err());
    }
}
