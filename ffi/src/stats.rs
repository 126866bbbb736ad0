//! The engine's counters and resource ledger: `rx_stats` and `rx_engine_stats`.

use ringxfer::EngineStats;

use crate::boundary::{engine, guard, need, put};
use crate::engine::rx_engine;
use crate::status::rx_status;

/// Counters and the resource ledger (`rx_engine_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct rx_stats {
    /// Transfer slots.
    pub capacity: u64,
    /// Slots held now.
    pub live: u64,
    /// Most slots held at once (sampled).
    pub high_water: u64,
    /// Slots acquired since start.
    pub acquired: u64,
    /// Slots freed since start.
    pub freed: u64,
    /// Transfers completed done.
    pub done: u64,
    /// Transfers completed failed.
    pub failed: u64,
    /// Transfers cancelled.
    pub cancelled: u64,
    /// Completions rejected as duplicate, late or stale.
    pub stale_completions: u64,
    /// Slots retired at their last generation.
    pub retired: u64,
    /// Live registrations.
    pub registrations: u64,
    /// Region pins held by transfers not yet released.
    pub pins: u64,
    /// Peers loaded.
    pub peers: u64,
    /// Prepared lists alive.
    pub prepared_lists: u64,
    /// File descriptors held by file registrations.
    pub open_files: u64,
    /// Notifications waiting in this engine's inbox.
    pub notifications_queued: u64,
    /// Notifications popped.
    pub notifications_delivered: u64,
    /// Notifications dropped as duplicates or stale.
    pub notifications_stale: u64,
    /// Peers' GPU regions mapped into this process: one mapping per distinct IPC
    /// handle per peer in another process on this node (0 without the cuda transport).
    pub cuda_ipc_mappings: u64,
    /// 1 where the cuda transport posts a transfer's runs with `cuMemcpyBatchAsync`,
    /// 0 where it makes one copy call per run or has no cuda transport.
    pub cuda_batch: u64,
}

/// Writes the engine's counters and ledger to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_engine_stats(engine: *const rx_engine, out: *mut rx_stats) -> rx_status {
    guard(|| {
        tri!(need(out));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let stats = stats_of(e.stats());
        // SAFETY: checked non-NULL.
        unsafe { put(out, stats) }
    })
}

/// The C view of an engine's counters and ledger.
fn stats_of(s: EngineStats) -> rx_stats {
    let r = s.ring;
    rx_stats {
        capacity: r.capacity as u64,
        live: r.live as u64,
        high_water: r.high_water as u64,
        acquired: r.acquired,
        freed: r.freed,
        done: r.done,
        failed: r.failed,
        cancelled: r.cancelled,
        stale_completions: r.stale_completions,
        retired: r.retired,
        registrations: s.registrations as u64,
        pins: s.pins,
        peers: s.peers as u64,
        prepared_lists: s.prepared_lists as u64,
        open_files: s.open_files as u64,
        notifications_queued: s.notifications_queued as u64,
        notifications_delivered: s.notifications_delivered,
        notifications_stale: s.notifications_stale,
        cuda_ipc_mappings: s.cuda_ipc_mappings as u64,
        cuda_batch: s.cuda_batch as u64,
    }
}
