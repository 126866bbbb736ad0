//! A raw cudarc copy loop with no engine: the baseline `ringxfer-bench --backend
//! cuda` measures the engine against, on the same device, in the same run.
//!
//! One stream, `window` events used round-robin, two buffers (host memory
//! page-locked with `cuMemHostRegister`, device memory from `cuMemAlloc`, or — for a
//! target in another process — device memory of that process opened here with
//! `cuIpcOpenMemHandle`), and a loop of `cuMemcpy*Async` + `cuEventRecord`, waiting
//! (by query) on an event only when its turn comes round again. No slots, handles or
//! ledgers.

// Unsafe code: the CUDA driver API, for the raw baseline (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use cudarc::driver::sys;

use super::cuda::check;
use super::cuda_batch::{BatchFn, Kinds, call};
use crate::error::{Error, Result};
use crate::types::Op;

/// One side's buffer of the raw loop.
enum Buffer {
    Host(Vec<u8>),
    Device(sys::CUdeviceptr),
    /// Another process's device memory, opened from its IPC handle.
    Mapped(sys::CUdeviceptr),
}

impl Buffer {
    fn is_device(&self) -> bool {
        !matches!(self, Buffer::Host(_))
    }

    fn addr(&self) -> u64 {
        match self {
            Buffer::Host(v) => v.as_ptr() as u64,
            Buffer::Device(p) | Buffer::Mapped(p) => *p,
        }
    }
}

/// Bytes of a legacy CUDA IPC handle.
pub const IPC_HANDLE_BYTES: usize = 64;

/// The raw loop's context, stream, events and buffers, set up once and run many times.
pub struct CudaRawLoop {
    device: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    events: Vec<sys::CUevent>,
    initiator: Buffer,
    target: Buffer,
    /// Whether the loaded driver is the test suite's fake (host memcpy, not a GPU).
    pub fake: bool,
}

// SAFETY: the driver API is thread-safe and the raw handles are destroyed only in
// Drop; `run` makes the context current on the calling thread first.
unsafe impl Send for CudaRawLoop {}
// SAFETY: as above.
unsafe impl Sync for CudaRawLoop {}

impl CudaRawLoop {
    /// Sets up `bytes` on each side: `initiator_vram`/`target_vram` choose device or
    /// (page-locked) host memory. `window` events.
    pub fn new(
        device: u32,
        bytes: usize,
        initiator_vram: bool,
        target_vram: bool,
        window: usize,
    ) -> Result<CudaRawLoop> {
        // SAFETY: only tries to dlopen the driver's candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::CudaUnavailable {
                reason: "no CUDA driver library (libcuda.so) could be loaded".into(),
            });
        }
        // SAFETY: the library just loaded by cudarc; looking up a symbol reads nothing.
        let fake = unsafe { sys::culib().get::<unsafe extern "C" fn() -> i64>(b"fake_cuda_events_live\0") }.is_ok();
        let mut raw = CudaRawLoop {
            device: 0,
            ctx: std::ptr::null_mut(),
            stream: std::ptr::null_mut(),
            events: Vec::with_capacity(window),
            initiator: Buffer::Host(Vec::new()),
            target: Buffer::Host(Vec::new()),
            fake,
        };
        // SAFETY: driver calls with valid out-pointers; everything made here is
        // released by Drop, which also runs on the error paths.
        unsafe {
            check(sys::cuInit(0), "cuInit")?;
            check(sys::cuDeviceGet(&mut raw.device, device as i32), "cuDeviceGet")?;
            check(
                sys::cuDevicePrimaryCtxRetain(&mut raw.ctx, raw.device),
                "cuDevicePrimaryCtxRetain",
            )?;
            check(sys::cuCtxSetCurrent(raw.ctx), "cuCtxSetCurrent")?;
            check(sys::cuStreamCreate(&mut raw.stream, 1), "cuStreamCreate")?;
            for _ in 0..window.max(1) {
                let mut e = std::ptr::null_mut();
                check(sys::cuEventCreate(&mut e, 2), "cuEventCreate")?;
                raw.events.push(e);
            }
            raw.initiator = Self::buffer(bytes, initiator_vram)?;
            raw.target = Self::buffer(bytes, target_vram)?;
        }
        Ok(raw)
    }

    /// # Safety
    /// The context is current.
    unsafe fn buffer(bytes: usize, vram: bool) -> Result<Buffer> {
        if vram {
            let mut p = 0;
            // SAFETY: a valid out-pointer; freed in Drop.
            check(unsafe { sys::cuMemAlloc_v2(&mut p, bytes.max(1)) }, "cuMemAlloc")?;
            Ok(Buffer::Device(p))
        } else {
            let mut v = vec![1u8; bytes.max(1)];
            // SAFETY: a live host buffer, unregistered in Drop before it is freed.
            let r = unsafe { sys::cuMemHostRegister_v2(v.as_mut_ptr().cast(), v.len(), 1) };
            check(r, "cuMemHostRegister")?;
            Ok(Buffer::Host(v))
        }
    }

    /// The loop of [`new`](CudaRawLoop::new) with, as its target, another process's
    /// device memory of at least `bytes` bytes whose IPC handle is `handle` (that
    /// process's [`ipc_handle`](CudaRawLoop::ipc_handle)), opened here once and closed
    /// at drop: the baseline of `ringxfer-bench --two-process --backend cuda`.
    pub fn with_peer_target(
        device: u32,
        bytes: usize,
        initiator_vram: bool,
        handle: [u8; IPC_HANDLE_BYTES],
        window: usize,
    ) -> Result<CudaRawLoop> {
        let mut raw = CudaRawLoop::new(device, 0, initiator_vram, false, window)?;
        // SAFETY: our context; a valid out-pointer. The buffers are replaced (the
        // zero-byte ones `new` made are released first).
        unsafe {
            check(sys::cuCtxSetCurrent(raw.ctx), "cuCtxSetCurrent")?;
            raw.release_buffers();
            raw.initiator = Self::buffer(bytes, initiator_vram)?;
            let mut h: sys::CUipcMemHandle = std::mem::zeroed();
            for (dst, &b) in h.reserved.iter_mut().zip(handle.iter()) {
                *dst = b as _;
            }
            let mut p = 0;
            check(
                sys::cuIpcOpenMemHandle_v2(&mut p, h, 1), // CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
                "cuIpcOpenMemHandle",
            )?;
            raw.target = Buffer::Mapped(p);
        }
        Ok(raw)
    }

    /// The IPC handle of the target buffer (device memory), for another process's
    /// [`with_peer_target`](CudaRawLoop::with_peer_target).
    pub fn ipc_handle(&self) -> Result<[u8; IPC_HANDLE_BYTES]> {
        let Buffer::Device(p) = self.target else {
            return Err(Error::InvalidDescriptor {
                reason: "only device memory has an IPC handle",
            });
        };
        let mut out = [0u8; IPC_HANDLE_BYTES];
        // SAFETY: our context and a live allocation of ours; a valid out-pointer.
        unsafe {
            check(sys::cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")?;
            let mut h: sys::CUipcMemHandle = std::mem::zeroed();
            check(sys::cuIpcGetMemHandle(&mut h, p), "cuIpcGetMemHandle")?;
            for (dst, &b) in out.iter_mut().zip(h.reserved.iter()) {
                *dst = b as u8;
            }
        }
        Ok(out)
    }

    /// Frees both buffers (the context is current, the stream drained).
    ///
    /// # Safety
    /// No copy uses them.
    unsafe fn release_buffers(&mut self) {
        for b in [&mut self.initiator, &mut self.target] {
            // SAFETY: each buffer was made by `buffer` or `with_peer_target` and is
            // released once: it is replaced by an empty host buffer.
            unsafe {
                match b {
                    Buffer::Device(p) => {
                        let _ = sys::cuMemFree_v2(*p);
                    }
                    Buffer::Mapped(p) => {
                        let _ = sys::cuIpcCloseMemHandle(*p);
                    }
                    Buffer::Host(v) if !v.is_empty() => {
                        let _ = sys::cuMemHostUnregister(v.as_mut_ptr().cast());
                    }
                    Buffer::Host(_) => {}
                }
            }
            *b = Buffer::Host(Vec::new());
        }
    }

    /// Copies `iters` transfers of `batch` blocks of `block` bytes (initiator →
    /// target for a WRITE), `window` in flight, after `warmup` untimed ones.
    pub fn run(&self, op: Op, block: usize, batch: usize, iters: u64, warmup: u64) -> Result<Duration> {
        let (src, dst) = self.sides(op);
        let kinds = kinds(src, dst);
        self.windowed(iters, warmup, || {
            for j in 0..batch {
                let (s, d) = (src.addr() + (j * block) as u64, dst.addr() + (j * block) as u64);
                // SAFETY: both buffers hold block × batch bytes and live as long as
                // `self`; the stream is synchronised before they go.
                check(unsafe { self.copy(d, s, block, kinds) }, "cuMemcpyAsync")?;
            }
            Ok(())
        })
    }

    /// (source, destination) of `op`.
    fn sides(&self, op: Op) -> (&Buffer, &Buffer) {
        match op {
            Op::Write => (&self.initiator, &self.target),
            Op::Read => (&self.target, &self.initiator),
        }
    }

    /// One copy on the loop's stream (a plain `memcpy` between two host buffers).
    ///
    /// # Safety
    /// Both ranges are live for `len` bytes until the stream is synchronised.
    unsafe fn copy(&self, dst: u64, src: u64, len: usize, kinds: Kinds) -> sys::CUresult {
        if !kinds.src_vram && !kinds.dst_vram {
            // SAFETY: as the caller promises (host memory, copied now).
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
            return sys::CUresult::CUDA_SUCCESS;
        }
        // SAFETY: as the caller promises; one side is device memory.
        unsafe { super::cuda::copy_one(dst, src, len, kinds, self.stream) }
    }

    /// The loop both runs share: `warmup` untimed then `iters` timed turns, each
    /// waiting for its event's previous record (one event per place in the window),
    /// enqueuing one transfer's copies with `enqueue`, and recording the event.
    fn windowed(&self, iters: u64, warmup: u64, mut enqueue: impl FnMut() -> Result<()>) -> Result<Duration> {
        // SAFETY: our context.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")?;
        let window = self.events.len();
        let mut recorded = vec![false; window];
        let mut start = Instant::now();
        for i in 0..warmup + iters {
            if i == warmup {
                // SAFETY: our stream.
                check(unsafe { sys::cuStreamSynchronize(self.stream) }, "cuStreamSynchronize")?;
                recorded.iter_mut().for_each(|r| *r = false);
                start = Instant::now();
            }
            let e = (i as usize) % window;
            if recorded[e] {
                loop {
                    // SAFETY: a recorded event of ours.
                    match unsafe { sys::cuEventQuery(self.events[e]) } {
                        sys::CUresult::CUDA_ERROR_NOT_READY => std::hint::spin_loop(),
                        r => break check(r, "cuEventQuery")?,
                    }
                }
            }
            enqueue()?;
            // SAFETY: our event and stream.
            let r = unsafe { sys::cuEventRecord(self.events[e], self.stream) };
            check(r, "cuEventRecord")?;
            recorded[e] = true;
        }
        // SAFETY: our stream.
        check(unsafe { sys::cuStreamSynchronize(self.stream) }, "cuStreamSynchronize")?;
        Ok(start.elapsed())
    }
}

/// Where a copy between `src` and `dst` reads and writes.
fn kinds(src: &Buffer, dst: &Buffer) -> Kinds {
    Kinds {
        src_vram: src.is_device(),
        dst_vram: dst.is_device(),
    }
}

impl CudaRawLoop {
    /// Whether the driver has `cuMemcpyBatchAsync` (for [`run_pieces`](Self::run_pieces)).
    pub fn has_batch(&self) -> bool {
        BatchFn::probe().is_some()
    }

    /// Copies `iters` transfers (after `warmup` untimed ones), `window` in flight, each
    /// of the pieces `(initiator offset, target offset, bytes)` (initiator → target
    /// for a WRITE): one `cuMemcpy*Async` per piece, or with `batched` one
    /// `cuMemcpyBatchAsync` per transfer for all its pieces. The KV baselines of
    /// `ringxfer-bench --kv`: no merging of adjacent pieces, no slots, no ledger.
    pub fn run_pieces(
        &self,
        op: Op,
        pieces: &[(u64, u64, usize)],
        iters: u64,
        warmup: u64,
        batched: bool,
    ) -> Result<Duration> {
        let batch = match batched {
            true => Some(BatchFn::probe().ok_or(Error::CudaUnavailable {
                reason: "the driver has no cuMemcpyBatchAsync (CUDA 12.8 or later)".into(),
            })?),
            false => None,
        };
        let (src, dst) = self.sides(op);
        let kinds = kinds(src, dst);
        // (source offset, destination offset) of a piece.
        let sides = |&(i, t, _): &(u64, u64, usize)| match op {
            Op::Write => (i, t),
            Op::Read => (t, i),
        };
        let mut srcs: Vec<u64> = pieces.iter().map(|p| src.addr() + sides(p).0).collect();
        let mut dsts: Vec<u64> = pieces.iter().map(|p| dst.addr() + sides(p).1).collect();
        let mut sizes: Vec<usize> = pieces.iter().map(|p| p.2).collect();
        self.windowed(iters, warmup, || {
            match batch {
                Some(f) => {
                    // SAFETY: every piece lies in the buffers, which live as long as
                    // `self`; the stream is synchronised before they go.
                    let r = unsafe { call(f, (&mut dsts, &mut srcs, &mut sizes), kinds, self.stream, 0) };
                    check(r, "cuMemcpyBatchAsync")?;
                }
                None => {
                    for ((&d, &s), &n) in dsts.iter().zip(&srcs).zip(&sizes) {
                        // SAFETY: as above.
                        check(unsafe { self.copy(d, s, n, kinds) }, "cuMemcpyAsync")?;
                    }
                }
            }
            Ok(())
        })
    }
}

impl Drop for CudaRawLoop {
    fn drop(&mut self) {
        if self.ctx.is_null() {
            return;
        }
        // SAFETY: everything was made in `new` and is released once, after the stream
        // drained.
        unsafe {
            let _ = sys::cuCtxSetCurrent(self.ctx);
            if !self.stream.is_null() {
                let _ = sys::cuStreamSynchronize(self.stream);
            }
            self.release_buffers();
            for &e in &self.events {
                let _ = sys::cuEventDestroy_v2(e);
            }
            if !self.stream.is_null() {
                let _ = sys::cuStreamDestroy_v2(self.stream);
            }
            let _ = sys::cuDevicePrimaryCtxRelease_v2(self.device);
        }
    }
}
