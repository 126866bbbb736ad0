//! Engine configuration: `rx_config` and its flags, `rx_config_default`, and the
//! reading of an `rx_config` into the `ringxfer::Config` that `rx_engine_new` uses.

use std::ffi::c_char;

use ringxfer::fabric::FabricConfig;
use ringxfer::{Config, CudaConfig};

use crate::boundary::{c_str, guard, put};
use crate::status::{invalid, rx_status};

/// Engine capacities; fill with `rx_config_default`, then change what you need.
/// See the README's configuration table for each field's range.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rx_config {
    /// The engine's name (NUL-terminated UTF-8, 1–255 bytes), or NULL for "ringxfer".
    /// Copied by `rx_engine_new`.
    pub name: *const c_char,
    /// Transfer slots: a power of two, 1–2^20.
    pub capacity: u32,
    /// Descriptors per transfer, 1–65536.
    pub max_descs_per_xfer: u32,
    /// Block ids a block transfer holds on each side, 0–2^24.
    pub max_blocks_per_xfer: u32,
    /// Registered regions at once, 1–2^20.
    pub max_registrations: u32,
    /// Peers (and notification senders), 1–4096.
    pub max_peers: u32,
    /// Largest notification payload, 0–65536 bytes.
    pub max_notif_bytes: u32,
    /// Prepared lists alive at once, 1–4096.
    pub max_prepared_lists: u32,
    /// Descriptors per prepared list, 1–2^24 (posted whole, at most
    /// `max_descs_per_xfer`, or by index with `rx_post_list_indices`).
    pub max_list_descs: u32,
    /// Notifications queued per sender: a power of two, 1–2^20.
    pub inbox_capacity: u32,
    /// I/O worker threads for file transfers, 0–64 (0 disables them).
    pub file_workers: u32,
    /// How long an idle I/O worker polls before it sleeps, in microseconds, 0–10000
    /// (0: sleep at once; each post after an idle spell then wakes one).
    pub file_worker_poll_us: u32,
    /// The fabric transport (libfabric): 0 leaves it off; `RX_FABRIC_ENABLE`, plus
    /// `RX_FABRIC_PROGRESS_THREAD` for an engine that only serves others,
    /// `RX_FABRIC_BLOCKING` for waiters that sleep in the provider's wait descriptor.
    pub fabric_flags: u32,
    /// How long a posted transfer may stay in flight, on every transport, in
    /// milliseconds: 0 the default (30000), `UINT32_MAX` no deadline. `rx_set_deadline`
    /// chooses another for one transfer.
    pub deadline_ms: u32,
    /// The libfabric provider ("tcp", "shm", "verbs", "efa", …; NUL-terminated), or
    /// NULL for libfabric's choice. `RINGXFER_FI_PROVIDER` overrides it.
    pub fabric_provider: *const c_char,
    /// A local address to bind the fabric endpoint to (an interface's IP), or NULL.
    pub fabric_node: *const c_char,
    /// The cuda transport: 0 leaves it off; `RX_CUDA_ENABLE` turns it on (no driver
    /// or no device: `rx_engine_new` returns `RX_CUDA_UNAVAILABLE`), plus
    /// `RX_CUDA_NO_PIN_HOST` to leave host regions pageable.
    pub cuda_flags: u32,
    /// The CUDA device ordinal.
    pub cuda_device: u32,
    /// Streams the engine creates, 1–64 (ignored with `cuda_stream`).
    pub cuda_streams: u32,
    /// A caller's `CUstream` to put every transfer on (borrowed, never destroyed; it
    /// must outlive the engine), or 0 for the engine's own streams.
    pub cuda_stream: usize,
    /// A shared secret for the metadata server (NUL-terminated, non-empty, no
    /// whitespace), which `rx_serve_metadata` asks of clients and `rx_fetch_peer`
    /// presents; NULL takes `RINGXFER_METADATA_SECRET` from the environment, if set.
    /// Copied by `rx_engine_new`.
    pub metadata_secret: *const c_char,
    /// Entries of the completion queue (`rx_report_completion`), at most 2^20; 0:
    /// none. Default 1024.
    pub completion_queue: u32,
    /// How long `rx_wait` and `rx_wait_any` spin before they yield, in microseconds
    /// (at most 10^6). Default 50.
    pub wait_spin_us: u32,
    /// Until when they yield before they sleep, in microseconds (at most 10^6); a
    /// transfer that ends only under progress is never slept on. Default 2000.
    pub wait_yield_us: u32,
}

/// `rx_config::cuda_flags`: turn the cuda transport on.
pub const RX_CUDA_ENABLE: u32 = 1;
/// `rx_config::cuda_flags`: do not page-lock host regions for the GPU.
pub const RX_CUDA_NO_PIN_HOST: u32 = 2;
/// `rx_config::cuda_flags`: allocate `rx_alloc_vram` memory with the VMM API
/// (`cuMemCreate`), shared with peers as a file descriptor (`CudaConfig::vmm`).
pub const RX_CUDA_VMM: u32 = 4;
/// `rx_config::cuda_flags`: one `cuMemcpy*Async` per run, never the batch API
/// (`CudaConfig::batch` off).
pub const RX_CUDA_NO_BATCH: u32 = 8;

/// `rx_config::fabric_flags`: turn the fabric transport on.
pub const RX_FABRIC_ENABLE: u32 = 1;
/// `rx_config::fabric_flags`: start a thread that drives fabric progress.
pub const RX_FABRIC_PROGRESS_THREAD: u32 = 2;
/// `rx_config::fabric_flags`: waiters whose spin budget is spent sleep in the
/// provider's wait descriptor (`FabricConfig::blocking`).
pub const RX_FABRIC_BLOCKING: u32 = 4;

/// Fills `*out` with the default configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_config_default(out: *mut rx_config) -> rx_status {
    guard(|| {
        let d = Config::default();
        let c = rx_config {
            name: std::ptr::null(),
            capacity: d.capacity as u32,
            max_descs_per_xfer: d.max_descs_per_xfer as u32,
            max_blocks_per_xfer: d.max_blocks_per_xfer as u32,
            max_registrations: d.max_registrations as u32,
            max_peers: d.max_peers as u32,
            max_notif_bytes: d.max_notif_bytes as u32,
            max_prepared_lists: d.max_prepared_lists as u32,
            max_list_descs: d.max_list_descs as u32,
            inbox_capacity: d.inbox_capacity as u32,
            file_workers: d.file_workers as u32,
            file_worker_poll_us: d.file_worker_poll.as_micros() as u32,
            fabric_flags: 0,
            deadline_ms: 0,
            fabric_provider: std::ptr::null(),
            fabric_node: std::ptr::null(),
            cuda_flags: 0,
            cuda_device: 0,
            cuda_streams: CudaConfig::default().streams as u32,
            cuda_stream: 0,
            metadata_secret: std::ptr::null(),
            completion_queue: d.completion_queue as u32,
            wait_spin_us: d.wait_spin.as_micros() as u32,
            wait_yield_us: d.wait_yield.as_micros() as u32,
        };
        // SAFETY: the caller promises a writable rx_config (NULL is refused).
        unsafe { put(out, c) }
    })
}

/// The engine configuration `cfg` asks for (its strings copied).
///
/// # Safety
/// `cfg.name`, `cfg.fabric_provider`, `cfg.fabric_node` and `cfg.metadata_secret`
/// are each NULL or a NUL-terminated string.
pub(crate) unsafe fn config_from(cfg: &rx_config) -> Result<Config, rx_status> {
    let mut c = Config::default();
    // SAFETY: the caller promises NULL or a NUL-terminated string.
    if let Some(name) = unsafe { c_str(cfg.name, "name is not UTF-8") }? {
        c.name = name.to_owned();
    }
    c.capacity = cfg.capacity as usize;
    c.max_descs_per_xfer = cfg.max_descs_per_xfer as usize;
    c.max_blocks_per_xfer = cfg.max_blocks_per_xfer as usize;
    c.max_registrations = cfg.max_registrations as usize;
    c.max_peers = cfg.max_peers as usize;
    c.max_notif_bytes = cfg.max_notif_bytes as usize;
    c.max_prepared_lists = cfg.max_prepared_lists as usize;
    c.max_list_descs = cfg.max_list_descs as usize;
    c.inbox_capacity = cfg.inbox_capacity as usize;
    c.file_workers = cfg.file_workers as usize;
    c.file_worker_poll = std::time::Duration::from_micros(u64::from(cfg.file_worker_poll_us));
    c.completion_queue = cfg.completion_queue as usize;
    c.wait_spin = std::time::Duration::from_micros(u64::from(cfg.wait_spin_us));
    c.wait_yield = std::time::Duration::from_micros(u64::from(cfg.wait_yield_us));
    c.deadline = match cfg.deadline_ms {
        0 => c.deadline,
        u32::MAX => None,
        ms => Some(std::time::Duration::from_millis(u64::from(ms))),
    };
    // SAFETY: the caller promises NULL or a NUL-terminated string in each fabric string.
    if let Some(f) = unsafe { fabric_from(cfg) }? {
        c.fabric = Some(f);
    }
    if let Some(cuda) = cuda_from(cfg)? {
        c.cuda = Some(cuda);
    }
    // SAFETY: the caller promises NULL or a NUL-terminated string.
    if let Some(secret) = unsafe { c_str(cfg.metadata_secret, "metadata_secret is not UTF-8") }? {
        c.metadata_secret = Some(secret.into());
    }
    Ok(c)
}

/// The fabric transport `cfg` asks for: `None` without `RX_FABRIC_ENABLE`.
///
/// # Safety
/// `cfg.fabric_provider` and `cfg.fabric_node` are each NULL or a NUL-terminated string.
unsafe fn fabric_from(cfg: &rx_config) -> Result<Option<FabricConfig>, rx_status> {
    if cfg.fabric_flags & !(RX_FABRIC_ENABLE | RX_FABRIC_PROGRESS_THREAD | RX_FABRIC_BLOCKING) != 0 {
        return Err(invalid("unknown fabric_flags"));
    }
    if cfg.fabric_flags & RX_FABRIC_ENABLE == 0 {
        return Ok(None);
    }
    // SAFETY: the caller promises NULL or a NUL-terminated string in each.
    let text = |p: *const c_char, what| unsafe { c_str(p, what) }.map(|s| s.map(str::to_owned));
    let f = FabricConfig {
        provider: text(cfg.fabric_provider, "fabric_provider is not UTF-8")?,
        node: text(cfg.fabric_node, "fabric_node is not UTF-8")?,
        progress_thread: cfg.fabric_flags & RX_FABRIC_PROGRESS_THREAD != 0,
        blocking: cfg.fabric_flags & RX_FABRIC_BLOCKING != 0,
        ..FabricConfig::default()
    };
    Ok(Some(f))
}

/// The cuda transport `cfg` asks for: `None` without `RX_CUDA_ENABLE`.
fn cuda_from(cfg: &rx_config) -> Result<Option<CudaConfig>, rx_status> {
    if cfg.cuda_flags & !(RX_CUDA_ENABLE | RX_CUDA_NO_PIN_HOST | RX_CUDA_VMM | RX_CUDA_NO_BATCH) != 0 {
        return Err(invalid("unknown cuda_flags"));
    }
    if cfg.cuda_flags & RX_CUDA_ENABLE == 0 {
        return Ok(None);
    }
    Ok(Some(CudaConfig {
        device: cfg.cuda_device,
        streams: cfg.cuda_streams as usize,
        stream: (cfg.cuda_stream != 0).then_some(cfg.cuda_stream),
        pin_host: cfg.cuda_flags & RX_CUDA_NO_PIN_HOST == 0,
        vmm: cfg.cuda_flags & RX_CUDA_VMM != 0,
        batch: cfg.cuda_flags & RX_CUDA_NO_BATCH == 0,
    }))
}
