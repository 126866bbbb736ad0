//! The `cuda` transport: copies between host memory and GPU memory (and GPU to GPU)
//! on CUDA streams, through the driver API, loaded at run time (cudarc's
//! `dynamic-loading`: the crate builds and runs without CUDA).
//!
//! Everything a transfer needs is made at `Engine::new` and kept: the context, a
//! fixed pool of streams, and **one event per slot**, reused by every transfer of
//! that slot and destroyed only when the engine drops. No event is ever created or
//! destroyed on the hot path, so none can leak (Mooncake's TENT created one per
//! submit and never destroyed it).
//!
//! Every launch result is checked. A transfer is in flight only once its event was
//! *recorded* after its copies: a failed `cuEventRecord` fails the transfer (after
//! the stream drained what was enqueued), and an event is queried only if it was
//! recorded — an unrecorded event reads as "complete", which is how the same engine's
//! unchecked record turned into silent corruption.

// Unsafe code: the CUDA driver API (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys;

use super::cuda_batch::{BatchFn, Kinds, Staged};
use super::cuda_config::CudaConfig;
use super::cuda_order::StreamOrder;
use crate::error::{Error, Result};
use crate::mem::Resolved;
use crate::ring::{FailCode, FailSource, Handle, Outcome, PinLane, TransportId};
use crate::types::Op;

use super::DeviceLink;
use super::local::LocalLink;
use super::{Expire, Sink, Started, Transport, TransportStats, Xfer};
use crate::mem::Registry;
use crate::notify::Outbox;
use crate::sys::regtable::RegTable;
use crate::types::RegionId;

/// A failed driver call as a transfer's failure code.
fn fail_code(r: sys::CUresult) -> FailCode {
    FailCode::new(FailSource::Transport(TransportId::CUDA), (r as u32).min(0x3fff))
}

/// `Ok` for `CUDA_SUCCESS`, else the call's name and code.
pub(crate) fn check(r: sys::CUresult, what: &'static str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda { what, code: r as i32 })
    }
}

/// The CUDA state of one engine.
pub(crate) struct Cuda {
    ctx: sys::CUcontext,
    device: sys::CUdevice,
    streams: Box<[sys::CUstream]>,
    /// Whether the streams are ours to destroy (false for a caller's stream).
    own_streams: bool,
    /// One per slot, created at start, destroyed at drop.
    events: Box<[sys::CUevent]>,
    /// Per slot: the handle of the transfer whose recorded event is pending, or 0.
    in_flight: Box<[AtomicU64]>,
    /// Per slot: a failure already known (a copy that failed after others were
    /// enqueued); the transfer ends with it once the event says the stream drained.
    failed: Box<[AtomicU32]>,
    pending: AtomicUsize,
    /// Per stream, its transfers in flight oldest first: progress queries only the
    /// oldest not yet ended (`cuda_order`).
    order: StreamOrder,
    /// `cuMemcpyBatchAsync`, where the driver has it and `CudaConfig::batch` is on.
    batch: Option<BatchFn>,
    /// Per slot: the copies staged for the batch call (`cuda_batch`).
    staged: Box<[Mutex<Staged>]>,
    progress: Mutex<()>,
    events_live: AtomicUsize,
    pin_host: bool,
    /// The device's ordinal (`CudaConfig::device`).
    ordinal: u32,
    /// The device's UUID (all zero where the driver cannot say).
    uuid: [u8; 16],
    /// IPC mappings of peers' GPU regions open now (`cuda_ipc`).
    pub(crate) ipc_mappings: AtomicUsize,
    /// `CudaConfig::vmm`: `alloc_vram` uses the VMM API.
    vmm: bool,
    /// The VMM allocations this engine exports: (start, size, descriptor, serial),
    /// one per live `alloc_vram` region made with `vmm` (`cuda_vmm`). The serial
    /// tells apart exports that reuse a descriptor number.
    pub(crate) vmm_exports: Mutex<Vec<(u64, u64, i32, u64)>>,
    pub(crate) vmm_serial: AtomicU64,
    /// Per slot: what a transfer to a peer in another process holds until its event
    /// completes (preallocated), and whether it holds anything.
    peer_slots: Box<[Mutex<PeerSlot>]>,
    peer_held: Box<[AtomicBool]>,
}

/// What a transfer to a peer's mapped memory holds while its copies run: the owner's
/// registration entries it pinned (so the owner's `deregister` is `Busy` meanwhile)
/// and the notification to deliver once the copies are done.
struct PeerSlot {
    /// The remote side, resolved to addresses in this process (`max_descs_per_xfer`
    /// reserved).
    remote: Vec<Resolved>,
    /// The peer's link and GPU mappings, kept alive until the copies are done (a
    /// reload of the peer meanwhile does not unmap memory under them).
    link: Option<(Arc<LocalLink>, Arc<DeviceLink>)>,
    regs: Option<(Arc<RegTable>, PinLane)>,
    /// Entries pinned in `regs` (`max_descs_per_xfer` reserved).
    pinned: Vec<usize>,
    outbox: Option<Arc<Outbox>>,
    /// The notification (`max_notif_bytes` reserved) and whether there is one.
    notif: Vec<u8>,
    notify: bool,
}

impl PeerSlot {
    /// Lets go of what the transfer held; delivers its notification if it is done.
    fn release(&mut self, handle: Handle, done: bool) {
        self.remote.clear();
        if let Some((regs, lane)) = self.regs.take() {
            for &entry in &self.pinned {
                regs.unpin(lane, entry);
            }
        }
        self.pinned.clear();
        if let Some(outbox) = self.outbox.take() {
            if self.notify && done {
                outbox.deliver(handle, &self.notif);
            } else if self.notify {
                outbox.unreserve();
            }
        }
        self.notify = false;
        self.notif.clear();
        self.link = None;
    }
}

// SAFETY: the driver API is thread-safe; the raw handles are only destroyed in Drop
// (one owner), and each slot's event is used by one transfer at a time (the ring's
// slot ownership).
unsafe impl Send for Cuda {}
// SAFETY: as above.
unsafe impl Sync for Cuda {}

impl Cuda {
    /// Probes the driver and creates the context, streams and `capacity` events.
    pub(crate) fn open(config: &CudaConfig, capacity: usize, max_descs: usize, max_notif_bytes: usize) -> Result<Cuda> {
        // cudarc panics when libcuda cannot be loaded: probe first.
        // SAFETY: only tries to dlopen the library's candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::CudaUnavailable {
                reason: "no CUDA driver library (libcuda.so) could be loaded: install the NVIDIA driver, \
                         or build the engine without Config::cuda"
                    .into(),
            });
        }
        // SAFETY: plain driver calls with valid out-pointers.
        unsafe {
            let r = sys::cuInit(0);
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(Error::CudaUnavailable {
                    reason: format!("cuInit failed: {r:?} (no usable GPU or driver)"),
                });
            }
            let mut count = 0;
            let r = sys::cuDeviceGetCount(&mut count);
            if r != sys::CUresult::CUDA_SUCCESS || count <= 0 {
                return Err(Error::CudaUnavailable {
                    reason: format!("no CUDA device ({r:?}, {count} devices)"),
                });
            }
            if config.device as i32 >= count {
                return Err(Error::CudaUnavailable {
                    reason: format!("device {} asked for, {count} present", config.device),
                });
            }
        }
        let mut cuda = Cuda {
            ctx: std::ptr::null_mut(),
            device: 0,
            streams: Box::new([]),
            own_streams: config.stream.is_none(),
            events: Box::new([]),
            in_flight: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            failed: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            pending: AtomicUsize::new(0),
            order: StreamOrder::new(
                if config.stream.is_some() {
                    1
                } else {
                    config.streams.max(1)
                },
                capacity,
            ),
            batch: None,
            staged: Box::new([]),
            progress: Mutex::new(()),
            events_live: AtomicUsize::new(0),
            pin_host: config.pin_host,
            ordinal: config.device,
            uuid: [0; 16],
            ipc_mappings: AtomicUsize::new(0),
            vmm: config.vmm,
            vmm_exports: Mutex::new(Vec::new()),
            vmm_serial: AtomicU64::new(0),
            peer_slots: (0..capacity)
                .map(|_| {
                    Mutex::new(PeerSlot {
                        remote: Vec::with_capacity(max_descs),
                        link: None,
                        regs: None,
                        pinned: Vec::with_capacity(max_descs),
                        outbox: None,
                        notif: Vec::with_capacity(max_notif_bytes),
                        notify: false,
                    })
                })
                .collect(),
            peer_held: (0..capacity).map(|_| AtomicBool::new(false)).collect(),
        };
        // SAFETY: valid out-pointers; everything created is released by Drop, which
        // runs on the error paths below too.
        unsafe {
            check(sys::cuDeviceGet(&mut cuda.device, config.device as i32), "cuDeviceGet")?;
            check(
                sys::cuDevicePrimaryCtxRetain(&mut cuda.ctx, cuda.device),
                "cuDevicePrimaryCtxRetain",
            )?;
            cuda.make_current()?;
            cuda.uuid = super::cuda_ipc::device_uuid(cuda.device).unwrap_or([0; 16]);
            let mut streams = Vec::with_capacity(config.streams.max(1));
            match config.stream {
                Some(raw) => streams.push(raw as sys::CUstream),
                None => {
                    for _ in 0..config.streams.max(1) {
                        let mut s: sys::CUstream = std::ptr::null_mut();
                        let r = sys::cuStreamCreate(&mut s, 1 /* CU_STREAM_NON_BLOCKING */);
                        if r != sys::CUresult::CUDA_SUCCESS {
                            cuda.streams = streams.into_boxed_slice();
                            return Err(Error::Cuda {
                                what: "cuStreamCreate",
                                code: r as i32,
                            });
                        }
                        streams.push(s);
                    }
                }
            }
            cuda.streams = streams.into_boxed_slice();
            let mut events = Vec::with_capacity(capacity);
            for _ in 0..capacity {
                let mut e: sys::CUevent = std::ptr::null_mut();
                let r = sys::cuEventCreate(&mut e, 2 /* CU_EVENT_DISABLE_TIMING */);
                if r != sys::CUresult::CUDA_SUCCESS {
                    cuda.events = events.into_boxed_slice();
                    return Err(Error::Cuda {
                        what: "cuEventCreate",
                        code: r as i32,
                    });
                }
                cuda.events_live.fetch_add(1, Ordering::Relaxed);
                events.push(e);
            }
            cuda.events = events.into_boxed_slice();
            // Resolve every hot-path symbol now (cudarc looks each up on first use, and
            // a lookup allocates): zero-byte copies, a record and a query of slot 0's
            // event, a sync; `make_current` above resolved cuCtxGetCurrent and
            // cuCtxSetCurrent.
            let s = cuda.streams[0];
            let mut host = [0u8; 1];
            let _ = sys::cuMemcpyHtoDAsync_v2(0, host.as_ptr().cast(), 0, s);
            let _ = sys::cuMemcpyDtoHAsync_v2(host.as_mut_ptr().cast(), 0, 0, s);
            let _ = sys::cuMemcpyDtoDAsync_v2(0, 0, 0, s);
            if let Some(&e) = cuda.events.first() {
                let _ = sys::cuEventRecord(e, s);
                let _ = sys::cuEventQuery(e);
            }
            check(sys::cuStreamSynchronize(s), "cuStreamSynchronize")?;
        }
        // The batch API, resolved now so posting never looks a symbol up. Not on the
        // legacy default stream (a caller's stream 0), which it does not take.
        if config.batch && !cuda.streams[0].is_null() {
            cuda.batch = BatchFn::probe();
        }
        cuda.staged = (0..capacity)
            .map(|_| Mutex::new(Staged::new(cuda.batch.is_some())))
            .collect();
        Ok(cuda)
    }

    /// Makes the engine's context current on this thread, once: the thread remembers
    /// the context it made current, and later calls cost no driver call. A thread
    /// that makes another context current and then uses the engine again must make
    /// the engine's current again (`cudaSetDevice` of its device does that: the
    /// engine uses the device's primary context); a failed post forgets what the
    /// thread remembered, so the next call asks the driver again.
    pub(crate) fn make_current(&self) -> Result<()> {
        let ctx = self.ctx as usize;
        if CURRENT.with(Cell::get) == ctx {
            return Ok(());
        }
        let mut current: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let same = unsafe { sys::cuCtxGetCurrent(&mut current) } == sys::CUresult::CUDA_SUCCESS && current == self.ctx;
        if !same {
            // SAFETY: a retained context.
            check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")?;
        }
        CURRENT.with(|c| c.set(ctx));
        Ok(())
    }

    /// Whether posting uses `cuMemcpyBatchAsync`.
    pub(crate) fn batches(&self) -> bool {
        self.batch.is_some()
    }

    /// Bytes of host memory it allocated at start (its per-slot tables; the events
    /// themselves are the driver's).
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.in_flight)
            + std::mem::size_of_val(&*self.failed)
            + self.order.bytes()
            + self.staged.first().map_or(0, |s| lock(s).bytes() * self.staged.len())
            + std::mem::size_of_val(&*self.events)
    }

    /// Events alive (created at start, destroyed at drop): `capacity` all along.
    pub(crate) fn events_live(&self) -> usize {
        self.events_live.load(Ordering::Relaxed)
    }

    /// Whether host regions are page-locked for the GPU.
    pub(crate) fn pins_host(&self) -> bool {
        self.pin_host
    }

    /// Page-locks a host range for the GPU (`cuMemHostRegister`, portable).
    pub(crate) fn host_register(&self, addr: usize, len: usize) -> Result<()> {
        self.make_current()?;
        // SAFETY: a live registered host range; undone by `host_unregister`.
        check(
            unsafe {
                sys::cuMemHostRegister_v2(addr as *mut _, len, 1 /* PORTABLE */)
            },
            "cuMemHostRegister",
        )
    }

    /// Undoes `host_register`.
    pub(crate) fn host_unregister(&self, addr: usize) {
        if self.make_current().is_ok() {
            // SAFETY: `addr` was registered by `host_register`, undone once.
            let _ = unsafe { sys::cuMemHostUnregister(addr as *mut _) };
        }
    }

    /// Allocates device memory (for `Engine::alloc_vram`).
    pub(crate) fn alloc(&self, len: usize) -> Result<u64> {
        self.make_current()?;
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: a valid out-pointer; freed by `free`.
        check(unsafe { sys::cuMemAlloc_v2(&mut ptr, len) }, "cuMemAlloc")?;
        Ok(ptr)
    }

    /// Frees device memory from `alloc`.
    pub(crate) fn free(&self, ptr: u64) {
        if self.make_current().is_ok() {
            // SAFETY: `ptr` came from `alloc` and is freed once (its region's drop).
            let _ = unsafe { sys::cuMemFree_v2(ptr) };
        }
    }

    /// Waits for every stream to drain (engine drop).
    pub(crate) fn synchronize(&self) {
        if self.make_current().is_ok() {
            for &s in self.streams.iter() {
                // SAFETY: our (or the caller's) live stream.
                let _ = unsafe { sys::cuStreamSynchronize(s) };
            }
        }
    }

    /// Enqueues a transfer's copies on its slot's stream and records the slot's event.
    /// `Ok(Ok(failure))`: recorded; the caller hands it to progress with `launch`
    /// once it no longer borrows the transfer (`failure`: a copy that failed after
    /// others were enqueued, as `FailCode` bits, or 0). `Ok(Err(outcome))`: it ended
    /// now (the record failed; whatever was enqueued has drained).
    pub(crate) fn post(
        &self,
        handle: Handle,
        op: Op,
        runs: super::runs::Runs<'_>,
        other: &[Resolved],
    ) -> Result<std::result::Result<u32, Outcome>> {
        self.make_current()?;
        let index = handle.index() as usize;
        let stream = self.streams[index % self.streams.len()];
        let event = self.events[index];
        let mut staged = lock(&self.staged[index]);
        let mut failure = None;
        for run in runs {
            let (l, o) = (&run.local, &run.other(&other[run.pair]));
            let (src, dst) = match op {
                Op::Write => (l, o),
                Op::Read => (o, l),
            };
            let kinds = Kinds {
                src_vram: src.vram,
                dst_vram: dst.vram,
            };
            let r = if !src.vram && !dst.vram {
                // SAFETY: both host ranges are held by the transfer; lengths were
                // checked equal at prepare.
                unsafe { std::ptr::copy(src.addr as *const u8, dst.addr as *mut u8, src.len) };
                sys::CUresult::CUDA_SUCCESS
            } else if let Some(batch) = self.batch {
                let mut r = sys::CUresult::CUDA_SUCCESS;
                if staged.is_full() {
                    r = staged.issue(batch, stream, self.ordinal);
                }
                staged.push(dst.addr as u64, src.addr as u64, src.len, kinds);
                r
            } else {
                // SAFETY: as `copy_one` asks.
                unsafe { copy_one(dst.addr as u64, src.addr as u64, src.len, kinds, stream) }
            };
            if r != sys::CUresult::CUDA_SUCCESS {
                failure = Some(fail_code(r));
                break;
            }
        }
        if failure.is_some() {
            staged.clear();
        }
        let r = match (staged.len(), self.batch) {
            (0, _) | (_, None) => sys::CUresult::CUDA_SUCCESS,
            (1, _) => {
                let (dst, src, len, kinds) = staged.only();
                staged.clear();
                // SAFETY: as `copy_one` asks: a staged run of this transfer.
                unsafe { copy_one(dst, src, len, kinds, stream) }
            }
            (_, Some(batch)) => staged.issue(batch, stream, self.ordinal),
        };
        drop(staged);
        if r != sys::CUresult::CUDA_SUCCESS {
            failure = Some(fail_code(r));
        }
        // SAFETY: the slot's own event, used by this transfer only.
        let recorded = unsafe { sys::cuEventRecord(event, stream) };
        if recorded != sys::CUresult::CUDA_SUCCESS {
            // The event says nothing: never query it. Drain the stream so no copy
            // enqueued above touches the regions after the slot is freed.
            // SAFETY: our stream.
            let _ = unsafe { sys::cuStreamSynchronize(stream) };
            forget_current();
            return Ok(Err(Outcome::Failed(failure.unwrap_or(fail_code(recorded)))));
        }
        if failure.is_some() {
            forget_current();
        }
        Ok(Ok(failure.map_or(0, FailCode::to_bits)))
    }

    /// Hands a recorded transfer to `progress`, which queries its event.
    pub(crate) fn launch(&self, handle: Handle, failure: u32) {
        let index = handle.index() as usize;
        self.failed[index].store(failure, Ordering::Relaxed);
        self.in_flight[index].store(handle.to_raw(), Ordering::Release);
        self.pending.fetch_add(1, Ordering::AcqRel);
        let queued = self.order.push(index % self.order.streams(), index as u32);
        debug_assert!(queued, "a slot is queued once while in flight");
    }

    /// Queries the events of transfers in flight; reports the ended ones to `sink`.
    pub(crate) fn progress(&self, sink: Sink<'_>) -> usize {
        if self.pending.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let Ok(_one) = self.progress.try_lock() else { return 0 };
        if self.make_current().is_err() {
            return 0;
        }
        let mut ended = 0;
        for stream in 0..self.order.streams() {
            // Oldest first; the first not yet done ends this stream's turn.
            while let Some(index) = self.order.front(stream) {
                if !self.poll(stream, index as usize, sink) {
                    break;
                }
                ended += 1;
            }
        }
        ended
    }

    /// Queries slot `index`'s event (the oldest on `stream`); true (and reported to
    /// `sink`) if its transfer ended.
    fn poll(&self, stream: usize, index: usize, sink: Sink<'_>) -> bool {
        let slot = &self.in_flight[index];
        {
            let raw = slot.load(Ordering::Acquire);
            if raw == 0 {
                return false;
            }
            // SAFETY: the slot's event, recorded by the transfer now in flight.
            let r = unsafe { sys::cuEventQuery(self.events[index]) };
            let outcome = match r {
                sys::CUresult::CUDA_ERROR_NOT_READY => return false,
                sys::CUresult::CUDA_SUCCESS => match self.failed[index].load(Ordering::Relaxed) {
                    0 => Outcome::Done,
                    bits => Outcome::Failed(FailCode::from_bits(bits)),
                },
                error => {
                    // The stream is in an error state; let it drain before the
                    // transfer's regions can be released.
                    // SAFETY: our stream.
                    let _ = unsafe { sys::cuStreamSynchronize(self.streams[index % self.streams.len()]) };
                    Outcome::Failed(fail_code(error))
                }
            };
            if self.peer_held[index].swap(false, Ordering::AcqRel) {
                let mut peer = self.peer_slots[index].lock().unwrap_or_else(|e| e.into_inner());
                peer.release(Handle::from_raw(raw), outcome == Outcome::Done);
            }
            // Dequeued before the slot can be reused (the sink frees it): a new
            // transfer in the slot queues itself afterwards.
            self.order.pop(stream);
            slot.store(0, Ordering::Release);
            self.pending.fetch_sub(1, Ordering::AcqRel);
            sink(Handle::from_raw(raw), outcome);
            true
        }
    }
}

/// Enqueues one copy on `stream`, by the kind of its sides.
///
/// # Safety
/// Both ranges are live for `len` bytes until the stream passes this copy (the
/// transfer holds them until its event completes); at least one side is device memory.
pub(crate) unsafe fn copy_one(dst: u64, src: u64, len: usize, kinds: Kinds, stream: sys::CUstream) -> sys::CUresult {
    // SAFETY: as the caller promises.
    unsafe {
        match (kinds.src_vram, kinds.dst_vram) {
            (false, _) => sys::cuMemcpyHtoDAsync_v2(dst, src as *const _, len, stream),
            (true, false) => sys::cuMemcpyDtoHAsync_v2(dst as *mut _, src, len, stream),
            (true, true) => sys::cuMemcpyDtoDAsync_v2(dst, src, len, stream),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// The context this thread's engine calls made current (0: none yet).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// Makes the next `make_current` on this thread ask the driver again.
fn forget_current() {
    CURRENT.with(|c| c.set(0));
}

impl Drop for Cuda {
    fn drop(&mut self) {
        if self.ctx.is_null() {
            return;
        }
        let _ = self.make_current();
        // SAFETY: each handle was created in `open` and is destroyed once, here, after
        // the streams drained; a caller's stream is only synchronised.
        unsafe {
            for &s in self.streams.iter() {
                let _ = sys::cuStreamSynchronize(s);
            }
            // Transfers to peers' mapped memory that never reported (their engine
            // failed them with SHUTDOWN): the owners' entries are unpinned, so a
            // peer's `deregister` is not kept `Busy` by an engine that is gone.
            for (index, held) in self.peer_held.iter().enumerate() {
                if held.swap(false, Ordering::AcqRel) {
                    let raw = self.in_flight[index].load(Ordering::Acquire);
                    lock(&self.peer_slots[index]).release(Handle::from_raw(raw), false);
                }
            }
            for &e in self.events.iter() {
                if sys::cuEventDestroy_v2(e) == sys::CUresult::CUDA_SUCCESS {
                    self.events_live.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if self.own_streams {
                for &s in self.streams.iter() {
                    let _ = sys::cuStreamDestroy_v2(s);
                }
            }
            let _ = sys::cuDevicePrimaryCtxRelease_v2(self.device);
        }
    }
}

impl Cuda {
    /// The device's ordinal.
    pub(crate) fn device(&self) -> u32 {
        self.ordinal
    }

    /// The device's UUID.
    pub(crate) fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// The device's driver handle.
    pub(crate) fn cu_device(&self) -> sys::CUdevice {
        self.device
    }
}

impl Cuda {
    /// A transfer to a peer in another process on this node whose GPU memory is
    /// mapped here (and whose engine-allocated host memory is): its remote side is
    /// resolved to addresses in this process, the owner's entries are pinned, the
    /// notification is staged, and the copies go on the slot's stream; `progress`
    /// unpins and delivers the notification when the event completes.
    fn start_peer(&self, x: Xfer<'_>, link: &Arc<LocalLink>, device: &Arc<DeviceLink>) -> Result<Started> {
        let index = x.handle.index() as usize;
        let mut peer = self.peer_slots[index].lock().unwrap_or_else(|e| e.into_inner());
        let (regs, lane) = link.regtable().ok_or(Error::UnknownPeer { peer: x.peer() })?;
        if !link.alive() {
            return Ok(Started::Ended(Outcome::Failed(FailCode::PEER_LOST)));
        }
        peer.regs = Some((Arc::clone(regs), lane));
        peer.link = Some((Arc::clone(link), Arc::clone(device)));
        for d in x.remote() {
            let raw = d.region.to_raw();
            let (addr, vram) = match device.region(raw) {
                Some((start, len)) if d.offset.checked_add(d.len).is_some_and(|end| end <= len) => {
                    ((start + d.offset) as usize, true)
                }
                Some(_) => {
                    // The peer was reloaded since prepare with another export.
                    peer.release(x.handle, false);
                    return Err(Error::UnknownRegion { region: raw });
                }
                None => match link.segment_addr(d) {
                    Some(addr) => (addr, false),
                    None => {
                        peer.release(x.handle, false);
                        return Err(Error::InvalidDescriptor {
                            reason: "a GPU copy reaches a peer's host memory only in regions its engine allocated \
                                     (alloc_region: shared memory)",
                        });
                    }
                },
            };
            let (entry, generation) = (d.region.index(), d.region.generation());
            if !regs.pin(lane, entry, generation) {
                peer.release(x.handle, false);
                return Ok(Started::Ended(Outcome::Failed(FailCode::REGION_GONE)));
            }
            peer.pinned.push(entry);
            peer.remote.push(Resolved {
                addr,
                len: d.len as usize,
                vram,
                ..Resolved::default()
            });
        }
        if let Some(notif) = x.notif() {
            let outbox = link.outbox();
            if !outbox.reserve() {
                peer.release(x.handle, false);
                return Err(Error::InboxFull { peer: x.peer() });
            }
            peer.outbox = Some(Arc::clone(outbox));
            peer.notif.extend_from_slice(notif);
            peer.notify = true;
        }
        let posted = self.post(x.handle, x.op(), x.runs(), &peer.remote);
        peer.remote.clear();
        Ok(match posted {
            Ok(Ok(failure)) => {
                self.peer_held[index].store(true, Ordering::Release);
                Started::Handed(failure)
            }
            Ok(Err(outcome)) => {
                peer.release(x.handle, false);
                Started::Ended(outcome)
            }
            Err(e) => {
                peer.release(x.handle, false);
                return Err(e);
            }
        })
    }
}

impl Transport for Cuda {
    /// Enqueues the copies and records the slot's event; `progress` ends the transfer
    /// when the event completes.
    #[inline]
    fn start(&self, x: Xfer<'_>, _sink: Sink<'_>) -> Result<Started> {
        if let Some(link) = x.link {
            return match link {
                super::Link::Local(local, Some(device)) => self.start_peer(x, local, device),
                _ => Err(Error::UnknownPeer { peer: x.peer() }),
            };
        }
        Ok(match self.post(x.handle, x.op(), x.runs(), x.own())? {
            Err(outcome) => Started::Ended(outcome),
            Ok(failure) => Started::Handed(failure),
        })
    }

    #[inline]
    fn launch(&self, handle: Handle, failure: u32, _sink: Sink<'_>) {
        Cuda::launch(self, handle, failure);
    }

    #[inline]
    fn progress(&self, sink: Sink<'_>, _expire: Expire<'_>) -> usize {
        Cuda::progress(self, sink)
    }

    fn bytes(&self) -> usize {
        Cuda::bytes(self)
    }

    fn stats(&self, stats: &mut TransportStats) {
        stats.cuda_events = self.events_live();
        stats.held += self.order.queued();
        stats.cuda_batch = self.batches();
        stats.cuda_ipc_mappings = self.ipc_mappings.load(Ordering::Relaxed);
    }

    /// The engine's GPU regions that peers in other processes on this node can map.
    fn publish(&self, registry: &Registry) -> Option<crate::wire::metadata::BackendInfo> {
        super::cuda_ipc::publish(self, registry)
    }

    /// GPU copies in flight finish before device memory is freed with its region.
    fn quiesce(&self) {
        self.synchronize();
    }
}

/// With `CudaConfig::pin_host`: page-locks a new host region for the GPU
/// (`cuMemHostRegister`), undone when the region goes. On failure the region is
/// deregistered again.
pub(crate) fn pin_host(cuda: &Arc<Cuda>, registry: &Registry, id: RegionId) -> Result<RegionId> {
    if !cuda.pins_host() {
        return Ok(id);
    }
    let (addr, len) = registry.extent(id)?;
    match cuda.host_register(addr, len) {
        Ok(()) => {
            let pin = HostPin {
                cuda: Arc::clone(cuda),
                addr,
            };
            registry.attach(id, Box::new(pin))?;
            Ok(id)
        }
        Err(e) => {
            let _ = registry.deregister(id);
            Err(e)
        }
    }
}

/// Allocates `len` bytes of device memory (`cuMemAlloc`, or the VMM API with
/// `CudaConfig::vmm`) and registers them; freed when the region is deregistered or
/// the engine dropped.
pub(crate) fn alloc_region(cuda: &Arc<Cuda>, registry: &Registry, len: usize) -> Result<RegionId> {
    if len == 0 {
        return Err(Error::InvalidDescriptor {
            reason: "a region cannot be empty",
        });
    }
    if cuda.vmm {
        let owner = super::cuda_vmm::VmmAlloc::new(cuda, len)?;
        let ptr = owner.ptr;
        return registry.register_vram(ptr as usize, len as u64, cuda.device(), Some(Box::new(owner)));
    }
    let ptr = cuda.alloc(len)?;
    let owner = DeviceAlloc {
        cuda: Arc::clone(cuda),
        ptr,
    };
    registry.register_vram(ptr as usize, len as u64, cuda.device(), Some(Box::new(owner)))
}

/// Registers GPU memory the caller allocated; memory from the VMM API created
/// shareable as a file descriptor is exported to peers in other processes that way
/// (`cuMemAlloc` memory is exported by its IPC handle).
pub(crate) fn register_region(cuda: &Arc<Cuda>, registry: &Registry, ptr: u64, len: usize) -> Result<RegionId> {
    let export = super::cuda_vmm::export_caller_memory(cuda, ptr, len as u64)?;
    let owner = export.map(|e| Box::new(e) as Box<dyn std::any::Any + Send + Sync>);
    registry.register_vram(ptr as usize, len as u64, cuda.device(), owner)
}

/// A host region page-locked for the GPU, unlocked when its region goes.
struct HostPin {
    cuda: Arc<Cuda>,
    addr: usize,
}

impl Drop for HostPin {
    fn drop(&mut self) {
        self.cuda.host_unregister(self.addr);
    }
}

/// Device memory from `Engine::alloc_vram`, freed when its region goes.
struct DeviceAlloc {
    cuda: Arc<Cuda>,
    ptr: u64,
}

impl Drop for DeviceAlloc {
    fn drop(&mut self) {
        self.cuda.free(self.ptr);
    }
}
