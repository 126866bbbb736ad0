//! The fabric transport's public configuration and counters.

/// The environment variable that chooses the provider, over [`FabricConfig::provider`].
pub const PROVIDER_ENV: &str = "RINGXFER_FI_PROVIDER";

/// How an engine uses libfabric. `Config::fabric = Some(..)` turns the transport on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabricConfig {
    /// The provider (`tcp`, `shm`, `verbs`, `efa`, …); `None` lets libfabric choose the
    /// best. The environment variable `RINGXFER_FI_PROVIDER` overrides it.
    pub provider: Option<String>,
    /// A local address to bind to (an interface's IP for `tcp`); `None` for the
    /// provider's default.
    pub node: Option<String>,
    /// Receive buffers kept posted for control messages, 4 ..= 4096. Default 64.
    pub rx_buffers: usize,
    /// Start a thread that drives progress (for an engine that only serves others'
    /// READs and WRITEs and never calls `progress` itself). Default false.
    pub progress_thread: bool,
    /// Ask the provider for a wait descriptor on the completion queue (`FI_WAIT_FD`),
    /// so that a waiter (`wait`, `wait_any`) whose spin budget is spent sleeps in it
    /// until the provider has something to progress, instead of yielding in a loop:
    /// less CPU while a long transfer moves, at the price of one signal per
    /// completion inside the provider. The progress thread always asks for one (it
    /// sleeps there when idle, instead of napping). Providers without wait
    /// descriptors (shm in libfabric 1.17) ignore it. Default false.
    pub blocking: bool,
    /// Use at most this many bytes of the provider's immediate data: 4 makes an
    /// engine on a provider with 8 (tcp, shm) use the 4-byte encoding of verbs and
    /// efa, so that path is tested where those providers are not. `None` (the
    /// default) uses what the provider offers. Engines that exchange transfers must
    /// agree.
    pub cq_data_bytes: Option<usize>,
}

impl Default for FabricConfig {
    fn default() -> FabricConfig {
        FabricConfig {
            provider: None,
            node: None,
            rx_buffers: 64,
            progress_thread: false,
            blocking: false,
            cq_data_bytes: None,
        }
    }
}

/// Receiver-side counters of the fabric transport, in `EngineStats::fabric`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FabricStats {
    /// Remote writes counted into a sender's table.
    pub remote_writes: u64,
    /// Arrivals (writes, notifications, aborts) of a generation older than the one
    /// their table entry holds: dropped, never matched.
    pub stale: u64,
    /// Arrivals from an address no `HELLO` introduced, or naming a slot outside the
    /// sender's table: dropped.
    pub unattributed: u64,
    /// Notifications delivered to the inbox.
    pub notifications: u64,
    /// `ABORT` messages received (a sender's WRITE failed).
    pub aborts: u64,
    /// Senders this engine keeps a table for.
    pub senders: usize,
    /// Control messages received that were malformed.
    pub malformed: u64,
    /// Transfers failed by their deadline (`FailCode::TIMEOUT`) while the provider
    /// still held them.
    pub expired: u64,
    /// Peers declared lost (a deadline passed).
    pub lost_peers: u64,
    /// Times a thread (the progress thread, or a waiter with
    /// [`FabricConfig::blocking`]) slept in the provider's wait descriptor.
    pub sleeps: u64,
}
