//! `CudaConfig`: how an engine uses CUDA (always compiled, so configurations build
//! with or without the `cuda` feature).

/// How an engine uses CUDA. `Config::cuda = Some(..)` turns the transport on; with no
/// driver or no device, `Engine::new` returns `Error::CudaUnavailable` (never a panic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaConfig {
    /// The device ordinal. Default 0.
    pub device: u32,
    /// Streams created for transfers (a slot uses stream `index % streams`), 1 ..= 64.
    /// Default 4. Ignored with `stream`.
    pub streams: usize,
    /// A caller's `CUstream` (as an integer) to put every transfer on, so they run
    /// after the caller's own kernels on it. Borrowed: never destroyed by ringxfer,
    /// and it must outlive the engine. Default `None`.
    pub stream: Option<usize>,
    /// Page-lock every host region (`alloc_region`, `register_dram`) for the GPU with
    /// `cuMemHostRegister` when it is registered (undone when it goes), so host ↔ GPU
    /// copies are asynchronous DMA rather than staged. Default true.
    pub pin_host: bool,
    /// Allocate `alloc_vram` memory with the virtual memory management API
    /// (`cuMemCreate`, shareable as a POSIX file descriptor, mapped with
    /// `cuMemMap`) instead of `cuMemAlloc`. Peers in other processes on the node then
    /// map it through that descriptor (fetched with `pidfd_getfd`, which needs the
    /// same rights as `ptrace` over this process) instead of a legacy IPC handle.
    /// Default false.
    pub vmm: bool,
    /// Post a transfer of several runs with `cuMemcpyBatchAsync` (one driver call per
    /// 64 runs) where the driver has it (CUDA 12.8 and later), rather than one
    /// `cuMemcpy*Async` per run; `Stats::cuda_batch` says which path is in use. Not
    /// with a caller's `stream` 0 (the legacy default stream). Default true.
    pub batch: bool,
}

impl Default for CudaConfig {
    fn default() -> CudaConfig {
        CudaConfig {
            device: 0,
            streams: 4,
            stream: None,
            pin_host: true,
            vmm: false,
            batch: true,
        }
    }
}
