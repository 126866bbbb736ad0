//! [`Config`]: every capacity of an engine, fixed at `Engine::new`, with its range.

use std::time::Duration;

use crate::backend::Settings;
use crate::backend::cuda_config::CudaConfig;
use crate::backend::fabric::FabricConfig;
#[cfg(feature = "testing")]
use crate::backend::sim::SimConfig;
use crate::error::{Error, Result};

/// A shared secret (`Config::metadata_secret`): `"..".into()`; its `Debug` is
/// redacted, so a logged `Config` does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

/// Engine capacities, all fixed at [`Engine::new`](crate::Engine::new). Every field has a default
/// ([`Config::default`]) and a documented range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The engine's name, sent to peers in its metadata (≤ 255 bytes).
    pub name: String,
    /// Transfer slots: how many transfers may be prepared or in flight at once. A
    /// power of two, 1 ..= 2^20. Default 1024.
    pub capacity: usize,
    /// Descriptors per transfer, 1 ..= 65536. Default 64. Memory: about (capacity × 128 +
    /// max_prepared_lists × 8) × this bytes: each slot's descriptor storage (two resolved
    /// sides and the remote descriptors) and each holder's record of the regions it holds.
    pub max_descs_per_xfer: usize,
    /// Block ids a block transfer ([`Engine::prepare_blocks`](crate::Engine::prepare_blocks))
    /// holds on each side, over all its indexed sets, 0 ..= 2^24 (strided sets store
    /// no ids; their pairs count against `max_descs_per_xfer`). Default 1024. Memory:
    /// capacity × 8 × this bytes.
    pub max_blocks_per_xfer: usize,
    /// Registered regions at once, 1 ..= 2^20. Default 1024.
    pub max_registrations: usize,
    /// Peers this engine loads, and senders it accepts notifications from, 1 ..= 4096.
    /// Default 64.
    pub max_peers: usize,
    /// Largest notification payload, 0 ..= 65536 bytes. Default 256.
    pub max_notif_bytes: usize,
    /// I/O worker threads for transfers to and from registered files, 0 ..= 64 (0: file
    /// transfers are refused). Created with the engine. Default 2.
    pub file_workers: usize,
    /// How long an idle I/O worker keeps polling for work before it sleeps, at most
    /// 10 ms. Polling costs a core while it lasts; a sleeping worker costs the next
    /// `post` a wake (a system call, microseconds). Default 100 µs; zero sleeps at
    /// once (for a binary whose cores are all spoken for).
    pub file_worker_poll: Duration,
    /// Prepared descriptor lists alive at once ([`Engine::prepare_list`](crate::Engine::prepare_list)), 1 ..= 4096.
    /// Default 64.
    pub max_prepared_lists: usize,
    /// Descriptors per prepared list, 1 ..= 2^24. Default 65536. A list is allocated
    /// by `prepare_list` (control path) and posted whole (then at most
    /// `max_descs_per_xfer` descriptors) or a subset of it by index
    /// ([`Engine::post_list_indices`](crate::Engine::post_list_indices)); it may name
    /// at most `max_descs_per_xfer` separate runs of regions.
    pub max_list_descs: usize,
    /// Notifications waiting to be popped *per sender* (each sender has its own lane
    /// of the inbox), a power of two 1 ..= 2^20. A full lane is backpressure to that
    /// sender (`InboxFull`), never a silent drop. Default 128. The inbox is a
    /// shared-memory segment of about `max_peers × inbox_capacity × (max_notif_bytes
    /// + 24)` bytes (2.3 MB with the defaults).
    pub inbox_capacity: usize,
    /// How long a posted transfer may stay in flight before it reads
    /// `Failed(FailCode::TIMEOUT)`, on every transport; `None`: no deadline.
    /// [`Engine::set_deadline`](crate::Engine::set_deadline) chooses another for one
    /// transfer. Past it the caller sees the failure at once (from `status` or
    /// `wait`), while the slot stays the transport's until it has let go of the
    /// memory. The fabric also declares a peer lost that held a transfer past this
    /// deadline; a shorter one chosen for a single transfer fails only that
    /// transfer. Default 30 s.
    pub deadline: Option<Duration>,
    /// Entries of the completion queue (rounded up to a power of two, at most
    /// 2^20; 0: none): how many transfers may at once be asked to report their end
    /// ([`Engine::report_completion`](crate::Engine::report_completion)) or wait,
    /// reported, to be polled. Default 1024.
    pub completion_queue: usize,
    /// How long `wait` and `wait_any` spin (one core, the lowest latency) before
    /// they yield. Default 50 µs.
    pub wait_spin: Duration,
    /// Until when `wait` and `wait_any` yield between looks before they sleep
    /// (10 µs doubling to 500 µs naps). A transfer that ends only under progress
    /// (the fabric with no progress thread, the sim) is never slept on: its waiter
    /// yields to the end. Default 2 ms. See `docs/design.md` (Waiting).
    pub wait_yield: Duration,
    /// The fabric transport (libfabric, loaded at run time): `None` (the default)
    /// leaves it off; peers are then reached with the local transport only. With it
    /// on, peers that offer a fabric endpoint are reached through it.
    pub fabric: Option<FabricConfig>,
    /// The cuda transport (cudarc, loaded at run time): `None` (the default) leaves
    /// it off. With it on, `alloc_vram`/`register_vram` regions move to and from host
    /// memory (and each other) in transfers with [`Engine::local_peer`](crate::Engine::local_peer).
    pub cuda: Option<CudaConfig>,
    /// A shared secret for the metadata server: [`serve_metadata`](crate::Engine::serve_metadata)
    /// answers only a client presenting it, and [`fetch_peer`](crate::Engine::fetch_peer)
    /// presents it. `None` (the default) takes `RINGXFER_METADATA_SECRET` from the
    /// environment, if set. Non-empty, no whitespace. (`Debug` never shows it.)
    pub metadata_secret: Option<Secret>,
    /// The fault-injecting sim transport, for tests and fuzzing (cargo feature
    /// `testing`): `None` (the default) leaves it off; with it, `Engine::sim_peer`
    /// makes a peer it serves.
    #[cfg(feature = "testing")]
    pub sim: Option<SimConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            name: String::from("ringxfer"),
            capacity: 1024,
            max_descs_per_xfer: 64,
            max_blocks_per_xfer: 1024,
            max_registrations: 1024,
            max_peers: 64,
            max_notif_bytes: 256,
            max_prepared_lists: 64,
            max_list_descs: 1 << 16,
            file_workers: 2,
            file_worker_poll: Duration::from_micros(100),
            inbox_capacity: 128,
            deadline: Some(Duration::from_secs(30)),
            completion_queue: 1024,
            wait_spin: Duration::from_micros(50),
            wait_yield: Duration::from_millis(2),
            fabric: None,
            cuda: None,
            metadata_secret: None,
            #[cfg(feature = "testing")]
            sim: None,
        }
    }
}

impl Config {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.name.is_empty() || self.name.len() > 255 {
            return bad("name", "must be 1 to 255 bytes");
        }
        if !self.capacity.is_power_of_two() || self.capacity > crate::ring::MAX_CAPACITY {
            return bad("capacity", "must be a power of two from 1 to 2^20");
        }
        if self.max_descs_per_xfer == 0 || self.max_descs_per_xfer > 1 << 16 {
            return bad("max_descs_per_xfer", "must be 1 to 65536");
        }
        if self.max_list_descs == 0 || self.max_list_descs > 1 << 24 {
            return bad("max_list_descs", "must be 1 to 2^24");
        }
        if self.max_blocks_per_xfer > 1 << 24 {
            return bad("max_blocks_per_xfer", "must be at most 2^24");
        }
        if self.max_registrations == 0 || self.max_registrations > 1 << 20 {
            return bad("max_registrations", "must be 1 to 2^20");
        }
        if self.max_peers == 0 || self.max_peers > 4096 {
            return bad("max_peers", "must be 1 to 4096");
        }
        if self.max_registrations * self.max_peers > 1 << 26 {
            return bad(
                "max_peers",
                "max_registrations × max_peers must be at most 2^26 (a pin count per region and peer process)",
            );
        }
        if self.max_notif_bytes > 1 << 16 {
            return bad("max_notif_bytes", "must be at most 65536");
        }
        if self
            .secret()
            .is_some_and(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return bad("metadata_secret", "must be non-empty, without whitespace");
        }
        if self
            .deadline
            .is_some_and(|d| d.is_zero() || d.as_nanos() >= u128::from(u64::MAX))
        {
            return bad(
                "deadline",
                "must be more than 0 and less than 584 years (None: no deadline)",
            );
        }
        if self.wait_spin > Duration::from_secs(1) || self.wait_yield > Duration::from_secs(1) {
            return bad("wait_spin", "wait_spin and wait_yield must be at most 1 s");
        }
        if self.completion_queue > 1 << 20 {
            return bad("completion_queue", "must be at most 2^20 entries (0: none)");
        }
        if self.file_workers > 64 {
            return bad("file_workers", "must be at most 64");
        }
        if self.file_worker_poll > Duration::from_millis(10) {
            return bad("file_worker_poll", "must be at most 10 ms");
        }
        if self.max_prepared_lists == 0 || self.max_prepared_lists > 4096 {
            return bad("max_prepared_lists", "must be 1 to 4096");
        }
        if let Some(c) = &self.cuda
            && (c.streams == 0 || c.streams > 64)
        {
            return bad("cuda.streams", "must be 1 to 64");
        }
        if !self.inbox_capacity.is_power_of_two() || self.inbox_capacity > 1 << 20 {
            return bad("inbox_capacity", "must be a power of two from 1 to 2^20");
        }
        let inbox_bytes = (self.max_peers * self.inbox_capacity) as u64 * (self.max_notif_bytes as u64 + 24);
        if inbox_bytes > 1 << 32 {
            return bad(
                "inbox_capacity",
                "× max_peers × (max_notif_bytes + 24) must stay within 4 GiB of shared memory",
            );
        }
        Ok(())
    }

    /// What the transports are built from.
    /// The metadata secret: the field, else `RINGXFER_METADATA_SECRET`.
    pub(crate) fn secret(&self) -> Option<String> {
        self.metadata_secret
            .as_ref()
            .map(|s| s.0.clone())
            .or_else(|| std::env::var("RINGXFER_METADATA_SECRET").ok())
    }

    pub(crate) fn settings(&self, engine_id: u64) -> Settings<'_> {
        Settings {
            name: &self.name,
            engine_id,
            capacity: self.capacity,
            max_notif_bytes: self.max_notif_bytes,
            max_descs_per_xfer: self.max_descs_per_xfer,
            max_peers: self.max_peers,
            max_registrations: self.max_registrations,
            inbox_capacity: self.inbox_capacity,
            file_workers: self.file_workers,
            file_worker_poll: self.file_worker_poll,
            liveness: self.deadline.map_or(u64::MAX, super::timeout_nanos),
            fabric: self.fabric.as_ref(),
            cuda: self.cuda.as_ref(),
            #[cfg(feature = "testing")]
            sim: self.sim.as_ref(),
        }
    }
}
