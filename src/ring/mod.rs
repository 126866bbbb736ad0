//! The slot ring: fixed, preallocated request slots named by generation-counted
//! handles.
//!
//! Every transfer takes one slot and gives it back exactly once, whatever path ends
//! it. The pieces, bottom up:
//!
//! - [`Handle`] (from `types`): `generation << 20 | index`, the name of one
//!   transfer; a released handle never matches the slot's next transfer.
//! - [`FreeList`]: a bounded lock-free FIFO of free slot indices.
//! - [`SlotRing`]: the slots, the free list, and the state machine that moves a slot
//!   from FREE to RESERVED, POSTED, an ended state, and back, one compare-and-swap per
//!   step. [`SlotRing::complete`] is the only way a posted transfer ends.
//! - [`Completion`]s: the ring's optional completion queue, fed by the same state
//!   transitions, for owners that asked to hear of a transfer's end.
//! - [`JobQueue`]: posted slots waiting for worker threads, each queued at most once,
//!   whose jobs their waiters may take out of the slot instead.
//! - [`PinTable`]: the pin protocol of the registration table peers in other
//!   processes read (in `sys::regtable`): a region is never deregistered under a copy
//!   of a live peer, and a dead peer's pins hold nothing.
//! - `sync`: the atomics the above are built on, swapped for loom's under `cfg(loom)`.
//!
//! See `docs/design.md` for why it has this shape.

mod completions;
mod free_list;
mod job_queue;
mod pins;
mod slot_ring;
mod state;
mod sync;
pub(crate) use sync::home;

pub use crate::types::{
    CancelResult, FIRST_GENERATION, FailCode, FailSource, GENERATION_BITS, Handle, INDEX_BITS, MAX_CAPACITY,
    MAX_GENERATION, Outcome, Released, Status, TransportId,
};
pub use completions::{Completion, Signal};
pub use free_list::FreeList;
pub(crate) use job_queue::Job;
pub use job_queue::{JobQueue, Popped};
pub use pins::{PinLane, PinTable};
pub use slot_ring::{HIGH_WATER_SAMPLE, RingStats, SlotRing};
/// The word type of a [`PinTable`] (loom's under `cfg(loom)`).
pub(crate) use sync::AtomicU64 as PinWord;
