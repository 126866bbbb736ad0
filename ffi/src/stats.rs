//! The engine's counters and resource ledger: `rx_stats` and `rx_engine_stats`.

use ringxfer::EngineStats;

use crate::boundary::{engine, guard, need, put, slice_mut};
use crate::engine::rx_engine;
use crate::status::{rx_status, status_of};

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
    /// File descriptors held by file registrations.
    pub open_files_held: u64,
    /// Notifications queued in this engine's inbox, delivered, dropped as stale.
    pub notifications: [u64; 3],
    /// The fabric receiver's counters: remote writes matched, stale arrivals dropped,
    /// unattributed arrivals, notifications received, aborts, senders known,
    /// malformed messages, transfers expired at their deadline, peers lost.
    pub fabric: [u64; 9],
    /// CUDA events alive (one per slot, all along; 0 without the cuda transport).
    pub cuda_events: u64,
    /// Bytes the engine holds: allocated at start, plus regions it allocated.
    pub bytes: u64,
    /// Transfers the transports hold by their own tables (fabric slots with
    /// operations in flight, GPU copies queued on streams, sim transfers pending);
    /// 0 when quiescent.
    pub transport_held: u64,
    /// The sim transport's counters: posted, completed, extra completions, expired,
    /// notifications sent, dropped, duplicated, misattributed completions. All zero
    /// unless the library was built with the cargo feature `testing` and the engine
    /// has a sim transport.
    pub sim: [u64; 8],
    /// Completions reported and waiting to be polled (`rx_poll_completions`); 0
    /// when quiescent.
    pub completions_queued: u64,
    /// Times a thread slept in the fabric provider's wait descriptor
    /// (`RX_FABRIC_BLOCKING`, the progress thread).
    pub fabric_sleeps: u64,
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
        open_files_held: s.open_files as u64,
        notifications: [
            s.notifications_queued as u64,
            s.notifications_delivered,
            s.notifications_stale,
        ],
        fabric: [
            s.fabric.remote_writes,
            s.fabric.stale,
            s.fabric.unattributed,
            s.fabric.notifications,
            s.fabric.aborts,
            s.fabric.senders as u64,
            s.fabric.malformed,
            s.fabric.expired,
            s.fabric.lost_peers,
        ],
        cuda_events: s.cuda_events as u64,
        bytes: s.bytes,
        transport_held: s.transport_held as u64,
        sim: sim_of(&s),
        completions_queued: s.completions_queued as u64,
        fabric_sleeps: s.fabric.sleeps,
    }
}

#[cfg(feature = "testing")]
fn sim_of(s: &EngineStats) -> [u64; 8] {
    let m = s.sim;
    [
        m.posted,
        m.completed,
        m.extra_completions,
        m.expired,
        m.notifications_sent,
        m.notifications_dropped,
        m.notifications_duplicated,
        m.misattributed,
    ]
}

#[cfg(not(feature = "testing"))]
fn sim_of(_: &EngineStats) -> [u64; 8] {
    [0; 8]
}

/// `RX_OK` when the engine holds nothing for transfers (no slot held, no region held
/// by a transfer, no prepared list alive, nothing a transport holds, no notification
/// waiting to be popped, no completion waiting to be polled); otherwise `RX_NOT_QUIESCENT`, and
/// `rx_last_error` names what is still held.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_check_quiescent(engine: *const rx_engine) -> rx_status {
    guard(|| {
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        status_of(e.check_quiescent())
    })
}

/// Writes the engine's counters in Prometheus' text exposition format into
/// `buf[0..len]` and their length to `*out_len` (no NUL is added). A buffer too small
/// is `RX_BUFFER_TOO_SMALL`, with the length needed in `*out_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_metrics(
    engine: *const rx_engine,
    buf: *mut u8,
    len: usize,
    out_len: *mut usize,
) -> rx_status {
    guard(|| {
        tri!(need(out_len));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's buffer contract: `len` writable bytes (NULL with 0).
        let text = tri!(unsafe { slice_mut(buf, len) });
        match e.metrics(text) {
            // SAFETY: checked non-NULL.
            Ok(n) => unsafe { put(out_len, n) },
            Err(ringxfer::Error::BufferTooSmall { needed, .. }) => {
                // SAFETY: checked non-NULL.
                let _ = unsafe { put(out_len, needed) };
                status_of(Err(ringxfer::Error::BufferTooSmall { needed, got: len }))
            }
            Err(other) => status_of(Err(other)),
        }
    })
}
