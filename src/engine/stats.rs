//! The counters and the resource ledger: [`EngineStats`], [`Engine::stats`] and
//! [`Engine::check_quiescent`].

use std::sync::atomic::Ordering;

use super::{Core, Engine};
use crate::backend::fabric::FabricStats;
#[cfg(feature = "testing")]
use crate::backend::sim::SimStats;
use crate::error::{Error, Result};
use crate::ring::RingStats;

/// Counters and the resource ledger, from [`Engine::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStats {
    /// The slot ring's counters (live slots, completions by outcome, stale completions…).
    pub ring: RingStats,
    /// Live memory registrations.
    pub registrations: usize,
    /// Regions held: by transfers whose slots are not yet freed and by prepared lists
    /// (one per run of a side's descriptors naming one region), plus control-path
    /// copies (`read_region`, `write_region`) in progress.
    pub pins: u64,
    /// Peers loaded.
    pub peers: usize,
    /// Prepared lists alive.
    pub prepared_lists: usize,
    /// File descriptors held by file registrations (one per registered file, opened
    /// at registration, closed at deregistration: never one per transfer).
    pub open_files: usize,
    /// Notifications waiting in this engine's inbox.
    pub notifications_queued: usize,
    /// Notifications popped.
    pub notifications_delivered: u64,
    /// Notifications dropped as duplicates or stale arrivals.
    pub notifications_stale: u64,
    /// Completions reported and waiting to be polled (`Engine::poll_completions`).
    pub completions_queued: usize,
    /// Transfers the transports hold now, by their own tables: fabric slots with
    /// operations in flight, GPU copies not yet seen complete, sim transfers
    /// pending. Never more than the slots in flight; 0 once nothing is.
    pub transport_held: usize,
    /// The fabric transport's receiver counters (all zero without it).
    pub fabric: FabricStats,
    /// CUDA events alive: one per slot, created at `Engine::new` and destroyed at
    /// drop, whatever the transfers did (0 without the cuda transport).
    pub cuda_events: usize,
    /// Peers' GPU regions mapped into this process (one mapping per distinct IPC
    /// handle per peer in another process on this node, opened at `load_peer` and
    /// closed when the peer is reloaded without it or the engine is dropped; 0
    /// without the cuda transport).
    pub cuda_ipc_mappings: usize,
    /// Whether the cuda transport posts a transfer's runs with one
    /// `cuMemcpyBatchAsync` call (per 64 runs) rather than one `cuMemcpy*Async` per
    /// run: true where the driver has it (CUDA 12.8 and later) and
    /// `CudaConfig::batch` is on.
    pub cuda_batch: bool,
    /// What the sim transport did (all zero without it; cargo feature `testing`).
    #[cfg(feature = "testing")]
    pub sim: SimStats,
    /// Bytes the engine holds: what `Engine::new` allocated (slot contexts, the
    /// inbox segment, transports' per-slot state and buffers), fixed for its life,
    /// plus the regions it allocated (`alloc_region`, `alloc_vram`).
    pub bytes: u64,
}

impl Engine {
    /// Checks that the engine holds nothing for transfers: no slot held (reserved,
    /// in flight, or ended but not released), no region held by a transfer, nothing
    /// a transport still holds by its own tables (fabric slots with operations in
    /// flight, GPU copies, sim transfers), no notification waiting to be popped, no
    /// completion waiting to be polled.
    /// Prepared lists hold regions of their own and count as holding until
    /// released. The error names what is still held. What the caller keeps on
    /// purpose is not counted: registrations (and the file descriptor each
    /// registered file holds), loaded peers (and the GPU mappings of theirs), the
    /// per-slot CUDA events made at `Engine::new`.
    pub fn check_quiescent(&self) -> Result<()> {
        let s = self.stats();
        if s.ring.live == 0
            && s.pins == 0
            && s.prepared_lists == 0
            && s.ring.acquired == s.ring.freed
            && s.transport_held == 0
            && s.notifications_queued == 0
            && s.completions_queued == 0
        {
            return Ok(());
        }
        Err(Error::NotQuiescent {
            live_slots: s.ring.live,
            pins: s.pins,
            prepared_lists: s.prepared_lists,
            transport_held: s.transport_held,
            notifications_queued: s.notifications_queued,
            completions_queued: s.completions_queued,
        })
    }

    /// Counters and the resource ledger.
    pub fn stats(&self) -> EngineStats {
        self.core.stats()
    }
}

impl Core {
    /// [`Engine::stats`], from the core (the metadata server has only that).
    pub(crate) fn stats(&self) -> EngineStats {
        let (registrations, pins, open_files) = self.shared.registry.counts();
        let (notifications_queued, notifications_delivered, notifications_stale) = self.shared.inbox.counts();
        let transports = self.transports.stats();
        EngineStats {
            ring: self.ring.stats(),
            registrations,
            pins,
            peers: self.census.peers.load(Ordering::Relaxed),
            prepared_lists: self.census.lists.load(Ordering::Relaxed),
            open_files,
            notifications_queued,
            notifications_delivered,
            notifications_stale,
            transport_held: transports.held,
            completions_queued: self.ring.completions_ready(),
            fabric: transports.fabric,
            cuda_events: transports.cuda_events,
            cuda_ipc_mappings: transports.cuda_ipc_mappings,
            cuda_batch: transports.cuda_batch,
            #[cfg(feature = "testing")]
            sim: transports.sim,
            bytes: self.census.fixed_bytes.load(Ordering::Relaxed) + self.shared.registry.owned_bytes(),
        }
    }
}
