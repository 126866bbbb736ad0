//! The registration table peers in other processes read: whether each region is still
//! registered, and how many remote copies are using it right now.
//!
//! One `AtomicU64` per registration entry, in a shared-memory segment the owning engine
//! creates: `generation (low 32 bits) << 32 | OPEN << 31 | remote pins (31 bits)`.
//!
//! - The owner opens an entry when it registers a region, and closes it when it
//!   deregisters one — only if no remote copy holds a pin, else `Busy`.
//! - A peer copying into memory the owner registered itself (`process_vm_writev`) pins
//!   the entry with a compare-and-swap that fails unless it is open at the expected
//!   generation, copies, and unpins: the owner cannot deregister (and then free) the
//!   memory in between. A peer copying into a shared segment only checks the entry is
//!   open, so a write to a deregistered region fails instead of landing unseen.
//! - At engine drop the owner closes every entry, waiting a bounded time for pins to
//!   drain (copies are synchronous and short; a pin left by a peer killed mid-copy
//!   cannot be followed by a write).

// Unsafe code: the registration table in a shared-memory segment (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::sys::shm::Segment;

const OPEN: u64 = 1 << 31;
const PINS: u64 = OPEN - 1;

fn tag(generation: u64) -> u64 {
    (generation & 0xFFFF_FFFF) << 32
}

pub(crate) struct RegTable {
    segment: Segment,
    entries: usize,
}

// SAFETY: the segment is only accessed through the atomics `entry` hands out.
unsafe impl Send for RegTable {}
// SAFETY: as above.
unsafe impl Sync for RegTable {}

impl RegTable {
    /// The owner's table: `entries` closed entries.
    pub(crate) fn create(dir: &Path, name: &str, entries: usize) -> Result<RegTable> {
        Ok(RegTable {
            segment: Segment::create(dir, name, entries.max(1) * 8)?,
            entries,
        })
    }

    /// A peer's view of an owner's table.
    pub(crate) fn open(path: &Path, entries: usize) -> Result<RegTable> {
        Ok(RegTable {
            segment: Segment::open(path, entries.max(1) * 8)?,
            entries,
        })
    }

    fn entry(&self, index: usize) -> Option<&AtomicU64> {
        (index < self.entries).then(|| {
            // SAFETY: the segment holds `entries` u64s from its page-aligned start, and
            // every bit pattern is a valid AtomicU64.
            unsafe { &*self.segment.as_ptr().cast::<AtomicU64>().add(index) }
        })
    }

    /// Owner: the region at `index` is registered at `generation`.
    pub(crate) fn open_entry(&self, index: usize, generation: u64) {
        if let Some(e) = self.entry(index) {
            e.store(tag(generation) | OPEN, Ordering::Release);
        }
    }

    /// Owner: closes the entry unless remote copies hold it; `Err(pins)` then.
    pub(crate) fn close_entry(&self, index: usize, generation: u64) -> std::result::Result<(), u32> {
        let Some(e) = self.entry(index) else { return Ok(()) };
        let mut w = e.load(Ordering::Acquire);
        loop {
            if w & PINS != 0 {
                return Err((w & PINS) as u32);
            }
            match e.compare_exchange_weak(w, tag(generation), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(current) => w = current,
            }
        }
    }

    /// Owner, at engine drop: closes the entry, waiting up to `patience` for pins.
    pub(crate) fn close_waiting(&self, index: usize, generation: u64, patience: Duration) {
        let start = Instant::now();
        while self.close_entry(index, generation).is_err() && start.elapsed() < patience {
            std::thread::sleep(Duration::from_micros(100));
        }
        if let Some(e) = self.entry(index) {
            // Whatever remains (a peer killed mid-copy), the entry is closed for good.
            e.fetch_and(!OPEN, Ordering::AcqRel);
        }
    }

    /// Peer: whether the region is registered at `generation`.
    pub(crate) fn is_open(&self, index: usize, generation: u64) -> bool {
        self.entry(index).is_some_and(|e| {
            let w = e.load(Ordering::Acquire);
            w & !(OPEN | PINS) == tag(generation) && w & OPEN != 0
        })
    }

    /// Peer: pins the region for a copy; false if it is not registered at `generation`.
    pub(crate) fn pin(&self, index: usize, generation: u64) -> bool {
        let Some(e) = self.entry(index) else { return false };
        let mut w = e.load(Ordering::Acquire);
        loop {
            if w & !(OPEN | PINS) != tag(generation) || w & OPEN == 0 || w & PINS == PINS {
                return false;
            }
            match e.compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(current) => w = current,
            }
        }
    }

    /// Peer: drops a pin taken by [`pin`](RegTable::pin).
    pub(crate) fn unpin(&self, index: usize) {
        if let Some(e) = self.entry(index) {
            e.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_block_closing_and_closing_blocks_pins() {
        let dir = std::env::temp_dir();
        let name = format!("ringxfer-regtable-test-{}", std::process::id());
        let t = RegTable::create(&dir, &name, 4).unwrap();
        assert!(!t.is_open(1, 7) && !t.pin(1, 7), "entries start closed");
        t.open_entry(1, 7);
        assert!(t.is_open(1, 7) && !t.is_open(1, 8), "the generation must match");
        assert!(t.pin(1, 7));
        assert_eq!(t.close_entry(1, 7), Err(1), "a remote copy holds it");
        t.unpin(1);
        assert_eq!(t.close_entry(1, 7), Ok(()));
        assert!(!t.pin(1, 7), "closed: no new copies");
        assert!(!t.pin(9, 1), "out of range");
    }
}
