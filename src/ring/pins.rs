//! The pin protocol of a registration table that other processes read: an owner
//! registers and deregisters regions; peers in other processes pin a region while a
//! copy of theirs uses it, so the owner cannot deregister (and then free) memory
//! under the copy. A peer that dies holding pins holds nothing: its pins are ignored.
//!
//! Three arrays of words (in a shared-memory segment, `sys::regtable`):
//!
//! - **entries**, one per registration: `generation (low 32 bits) << 32 | state`,
//!   state one of CLOSED, OPEN, CLOSING.
//! - **lanes**, one per pinning peer: `pid << 32 | epoch`, written by the peer that
//!   holds the lane (lanes are handed out elsewhere: the owner's inbox lanes).
//! - **counts**, one per (entry, lane), entry-major: `epoch << 32 | pins`, written by
//!   the lane's holder only. A count whose epoch is not its lane's current one is 0:
//!   a lane taken over from a dead process needs no clearing.
//!
//! Pinning and closing are a store-then-load handshake on both sides (all `SeqCst`):
//!
//! - a peer raises its count, then reads the entry: OPEN at its generation means the
//!   pin holds; anything else (CLOSED, another generation, or CLOSING: the owner is
//!   deregistering it) means the region is gone: lower the count and fail. Pinning
//!   is wait-free; a copy that meets a deregistration in progress fails even if that
//!   deregistration then turns out `Busy` because of other copies.
//! - the owner moves the entry OPEN → CLOSING, then reads every lane's count of the
//!   entry: any live pin (the lane's epoch, a live process) reopens the entry and the
//!   close is `Busy`; otherwise the entry is CLOSED.
//!
//! Each side puts a `SeqCst` fence between its store and its load (what orders a
//! store before a later load of another word; loom models fences, not `SeqCst`
//! accesses alone). In the single total order of those fences either the peer's read
//! comes after the owner's CLOSING store (the peer backs out) or the owner's read of the
//! count comes after the peer's raise (the owner sees the pin): a region is never
//! closed under a pin whose holder is alive. Model-checked in `tests/loom.rs`.

use super::sync::{AtomicU64, Ordering, fence};

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const CLOSING: u64 = 2;
const STATE: u64 = 0xFFFF_FFFF;

fn tag(generation: u64) -> u64 {
    (generation & 0xFFFF_FFFF) << 32
}

/// A registration table's words, as the owner and its peers see them.
pub struct PinTable<'a> {
    entries: &'a [AtomicU64],
    lanes: &'a [AtomicU64],
    counts: &'a [AtomicU64],
}

/// One peer's hold on a lane of a [`PinTable`]: which lane, and the epoch its pins
/// carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinLane {
    /// The lane's index.
    pub lane: usize,
    /// The epoch the holder's pins carry (never 0 for a taken lane).
    pub epoch: u32,
}

impl<'a> PinTable<'a> {
    /// The table over `entries.len()` entries and `lanes.len()` lanes; `counts` holds
    /// `entries.len() * lanes.len()` words.
    pub fn new(entries: &'a [AtomicU64], lanes: &'a [AtomicU64], counts: &'a [AtomicU64]) -> PinTable<'a> {
        assert_eq!(
            counts.len(),
            entries.len() * lanes.len(),
            "one count per entry and lane"
        );
        PinTable { entries, lanes, counts }
    }

    fn count(&self, index: usize, lane: usize) -> &AtomicU64 {
        &self.counts[index * self.lanes.len() + lane]
    }

    /// Owner: the region at `index` is registered at `generation`.
    pub fn open(&self, index: usize, generation: u64) {
        if let Some(e) = self.entries.get(index) {
            e.store(tag(generation) | OPEN, Ordering::SeqCst);
        }
    }

    /// Owner: closes the entry unless a live peer pins it; `Err(pins)` then (the entry
    /// stays open). `alive(pid)` says whether the process holding a lane still runs.
    pub fn close(&self, index: usize, generation: u64, alive: impl Fn(u32) -> bool) -> Result<(), u32> {
        let Some(e) = self.entries.get(index) else {
            return Ok(());
        };
        let open = tag(generation) | OPEN;
        if e.compare_exchange(open, tag(generation) | CLOSING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Not open at this generation: nothing to close.
            return Ok(());
        }
        // The owner's store (CLOSING) before its loads (the counts): see the module doc.
        fence(Ordering::SeqCst);
        let mut pins = 0u32;
        for lane in 0..self.lanes.len() {
            let count = self.count(index, lane).load(Ordering::SeqCst);
            if count as u32 == 0 {
                continue;
            }
            let holder = self.lanes[lane].load(Ordering::SeqCst);
            if holder as u32 == (count >> 32) as u32 && alive((holder >> 32) as u32) {
                pins = pins.saturating_add(count as u32);
            }
        }
        if pins != 0 {
            e.store(open, Ordering::SeqCst);
            return Err(pins);
        }
        e.store(tag(generation), Ordering::SeqCst);
        Ok(())
    }

    /// Owner: closes the entry whatever pins it (at engine drop, after waiting).
    pub fn force_close(&self, index: usize, generation: u64) {
        if let Some(e) = self.entries.get(index) {
            e.store(tag(generation) | CLOSED, Ordering::SeqCst);
        }
    }

    /// Peer: whether the region is registered at `generation` (a close being decided
    /// counts as registered).
    pub fn is_open(&self, index: usize, generation: u64) -> bool {
        self.entries.get(index).is_some_and(|e| {
            let w = e.load(Ordering::Acquire);
            w == tag(generation) | OPEN || w == tag(generation) | CLOSING
        })
    }

    /// Peer: takes lane `lane` for process `pid`, its pins under a new epoch (pins
    /// left under the lane's previous epoch, by a process now dead, count for nothing).
    /// The caller holds the lane exclusively (the owner's inbox handed it out).
    pub fn take_lane(&self, lane: usize, pid: u32) -> Option<PinLane> {
        let word = self.lanes.get(lane)?;
        let epoch = (word.load(Ordering::SeqCst) as u32).wrapping_add(1).max(1);
        word.store(u64::from(pid) << 32 | u64::from(epoch), Ordering::SeqCst);
        Some(PinLane { lane, epoch })
    }

    /// Peer: pins the region for a copy; false if it is not registered at
    /// `generation`.
    pub fn pin(&self, lane: PinLane, index: usize, generation: u64) -> bool {
        let (Some(e), true) = (self.entries.get(index), lane.lane < self.lanes.len()) else {
            return false;
        };
        let count = self.count(index, lane.lane);
        let mine = u64::from(lane.epoch) << 32;
        let mut c = count.load(Ordering::SeqCst);
        loop {
            let ours = c >> 32 == u64::from(lane.epoch);
            if ours && c & STATE == STATE {
                return false; // 2^32 - 1 pins of one lane on one region
            }
            let raised = if ours { c + 1 } else { mine | 1 };
            match count.compare_exchange_weak(c, raised, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        // The peer's store (its count) before its load (the entry): see the module doc.
        fence(Ordering::SeqCst);
        if e.load(Ordering::SeqCst) == tag(generation) | OPEN {
            return true;
        }
        count.fetch_sub(1, Ordering::SeqCst);
        false
    }

    /// Peer: drops a pin taken by [`pin`](PinTable::pin).
    pub fn unpin(&self, lane: PinLane, index: usize) {
        if index < self.entries.len() && lane.lane < self.lanes.len() {
            self.count(index, lane.lane).fetch_sub(1, Ordering::SeqCst);
        }
    }
}
