//! Many copies in one driver call: `cuMemcpyBatchAsync` (CUDA 12.8 and later), found
//! in the loaded driver at start, and the per-slot staging it reads.
//!
//! A transfer's runs are staged in its slot's arrays (`GROUP` entries, allocated at
//! `Engine::new`) and handed to the driver a group at a time. A transfer of one run
//! stays one plain `cuMemcpy*Async` (the same single call, with no arrays to fill).
//! Where the driver lacks the symbol, or `CudaConfig::batch` is off, every run is its
//! own call, as before; `Stats::cuda_batch` says which path an engine took.

// Unsafe code: resolving and calling a driver entry point (the crate root denies it
// elsewhere).
#![allow(unsafe_code)]

use cudarc::driver::sys;

/// Runs staged per driver call at most; a longer transfer makes one call per group.
pub(crate) const GROUP: usize = 64;

/// CUDA 13's `cuMemcpyBatchAsync_v2`.
type BatchV2 = unsafe extern "C" fn(
    *mut sys::CUdeviceptr,
    *mut sys::CUdeviceptr,
    *mut usize,
    usize,
    *mut sys::CUmemcpyAttributes,
    *mut usize,
    usize,
    sys::CUstream,
) -> sys::CUresult;

/// CUDA 12.8's `cuMemcpyBatchAsync`, which also reports the failing copy's index.
type BatchV1 = unsafe extern "C" fn(
    *mut sys::CUdeviceptr,
    *mut sys::CUdeviceptr,
    *mut usize,
    usize,
    *mut sys::CUmemcpyAttributes,
    *mut usize,
    usize,
    *mut usize,
    sys::CUstream,
) -> sys::CUresult;

/// The batch entry point the loaded driver has.
#[derive(Clone, Copy)]
pub(crate) enum BatchFn {
    V2(BatchV2),
    V1(BatchV1),
}

impl BatchFn {
    /// Looks the entry point up in the driver cudarc loaded (the newer form first).
    pub(crate) fn probe() -> Option<BatchFn> {
        // SAFETY: the library is loaded (the caller checked `is_culib_present`); the
        // types are the driver's prototypes for these names (cuda.h, 12.8 and 13.0).
        unsafe {
            let lib = sys::culib();
            if let Ok(f) = lib.get::<BatchV2>(b"cuMemcpyBatchAsync_v2\0") {
                return Some(BatchFn::V2(*f));
            }
            lib.get::<BatchV1>(b"cuMemcpyBatchAsync\0")
                .ok()
                .map(|f| BatchFn::V1(*f))
        }
    }
}

/// One side's kind: device memory or host memory.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Kinds {
    pub(crate) src_vram: bool,
    pub(crate) dst_vram: bool,
}

/// A slot's staged copies.
pub(crate) struct Staged {
    dsts: Box<[sys::CUdeviceptr]>,
    srcs: Box<[sys::CUdeviceptr]>,
    sizes: Box<[usize]>,
    kinds: Box<[Kinds]>,
    len: usize,
}

impl Staged {
    /// Arrays for `GROUP` copies (empty when batching is off).
    pub(crate) fn new(on: bool) -> Staged {
        let n = if on { GROUP } else { 0 };
        Staged {
            dsts: vec![0; n].into_boxed_slice(),
            srcs: vec![0; n].into_boxed_slice(),
            sizes: vec![0; n].into_boxed_slice(),
            kinds: vec![Kinds::default(); n].into_boxed_slice(),
            len: 0,
        }
    }

    /// Bytes allocated at start.
    pub(crate) fn bytes(&self) -> usize {
        self.dsts.len() * (8 + 8 + 8 + 2)
    }

    /// Whether another copy fits.
    pub(crate) fn is_full(&self) -> bool {
        self.len == self.dsts.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Stages a copy (the caller checked `is_full`).
    pub(crate) fn push(&mut self, dst: u64, src: u64, size: usize, kinds: Kinds) {
        let i = self.len;
        self.dsts[i] = dst;
        self.srcs[i] = src;
        self.sizes[i] = size;
        self.kinds[i] = kinds;
        self.len += 1;
    }

    /// The single staged copy (for `len() == 1`).
    pub(crate) fn only(&self) -> (u64, u64, usize, Kinds) {
        (self.dsts[0], self.srcs[0], self.sizes[0], self.kinds[0])
    }

    /// Empties the staging.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Enqueues the staged copies on `stream` with one call of `f` (at least two are
    /// staged), and empties the staging. `device`: the ordinal for the location
    /// hints.
    pub(crate) fn issue(&mut self, f: BatchFn, stream: sys::CUstream, device: u32) -> sys::CUresult {
        let n = self.len;
        self.len = 0;
        // SAFETY: the arrays hold `n` staged copies, each between two ranges the
        // transfer holds (pinned until its slot is freed, after its event completes).
        unsafe {
            call(
                f,
                (&mut self.dsts[..n], &mut self.srcs[..n], &mut self.sizes[..n]),
                self.kinds[0],
                stream,
                device,
            )
        }
    }
}

/// Enqueues the copies `dsts[i] ← srcs[i]` (`sizes[i]` bytes each; the three of one
/// length, at least one) on `stream` with one call of `f`, sources read in stream
/// order. `first`: where the first copy's sides live, and `device` the ordinal, for
/// the location hints.
///
/// # Safety
/// Every range is live until the stream passes the copies; the driver reads the
/// arrays during the call only.
pub(crate) unsafe fn call(
    f: BatchFn,
    (dsts, srcs, sizes): (&mut [sys::CUdeviceptr], &mut [sys::CUdeviceptr], &mut [usize]),
    first: Kinds,
    stream: sys::CUstream,
    device: u32,
) -> sys::CUresult {
    let n = sizes.len().min(dsts.len()).min(srcs.len());
    let location = |vram: bool| sys::CUmemLocation {
        type_: if vram {
            sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE
        } else {
            sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST
        },
        id: if vram { device as i32 } else { 0 },
    };
    // Sources are read in stream order (after the work enqueued before them).
    // The hints name where the first copy's sides live; the driver uses them for
    // memory it cannot place itself (managed memory) and otherwise ignores them.
    let mut attrs = sys::CUmemcpyAttributes {
        srcAccessOrder: sys::CUmemcpySrcAccessOrder::CU_MEMCPY_SRC_ACCESS_ORDER_STREAM,
        srcLocHint: location(first.src_vram),
        dstLocHint: location(first.dst_vram),
        flags: 0,
    };
    let mut attrs_idx = 0usize;
    // SAFETY: the arrays hold `n` copies whose ranges the caller keeps live; the
    // driver reads the arrays during the call only.
    unsafe {
        match f {
            BatchFn::V2(call) => call(
                dsts.as_mut_ptr(),
                srcs.as_mut_ptr(),
                sizes.as_mut_ptr(),
                n,
                &mut attrs,
                &mut attrs_idx,
                1,
                stream,
            ),
            BatchFn::V1(call) => {
                let mut fail_idx = 0usize;
                call(
                    dsts.as_mut_ptr(),
                    srcs.as_mut_ptr(),
                    sizes.as_mut_ptr(),
                    n,
                    &mut attrs,
                    &mut attrs_idx,
                    1,
                    &mut fail_idx,
                    stream,
                )
            }
        }
    }
}
