//! Test scaffolding, behind the cargo feature `testing` (tests, fuzz targets and the
//! bench turn it on; a serving binary never sees it): the sim transport's peer and
//! knobs, and a raw fabric write that poses as a transfer of this engine.

use std::sync::Arc;

use crate::backend::Link;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::notify::Outbox;
use crate::peer::Peer;
use crate::types::{Desc, Handle, PeerId};

impl Engine {
    /// Adds a peer served by the sim transport (`Config::sim`): transfers to it move no
    /// bytes and end as the sim's seeded faults decide (late, out of order, twice,
    /// failed, stalled past their deadline, replayed after reuse); its notifications
    /// arrive in this engine's own inbox, sometimes dropped or doubled. Any remote
    /// descriptor is accepted. For tests, soaks and fuzzing.
    pub fn sim_peer(&self) -> Result<PeerId> {
        let Some(sim) = self.core().transports.sim() else {
            return Err(Error::InvalidConfig {
                field: "sim",
                reason: "is None: the engine has no sim transport",
            });
        };
        // The sim "engine" id: our pid (alive), other low bits than ours.
        let id = self.core().shared.engine_id ^ 0x5A5A_0000 | 1;
        let outbox = Outbox::claim(Arc::clone(self.core().shared.inbox.map()), id, "sim")?;
        sim.set_outbox(outbox);
        let peer = Peer::new(
            String::from("sim"),
            id,
            Vec::new(),
            self.config().max_notif_bytes,
            Link::Sim,
        );
        self.add_peer(Arc::new(peer))
    }

    /// Sim transport: fails every transfer in flight with `PEER_LOST` at the next
    /// progress (the peer is "lost mid-transfer").
    pub fn sim_lose_peer(&self) {
        if let Some(sim) = self.core().transports.sim() {
            sim.lose_peer();
        }
    }

    /// File transport: while `on`, every file job waits before its I/O, as on a
    /// stalled network filesystem (the job's thread, a worker or a waiter that took
    /// it, waits too).
    pub fn stall_file_io(&self, on: bool) {
        self.core().transports.stall_files(on);
    }

    /// Panics while holding the engine's peer table for writing, as a bug in the
    /// middle of an update would: the engine must poison itself.
    pub fn inject_panic(&self) {
        self.inject_panic_in_peers();
    }

    /// Sim transport: ends everything it holds now and replays its kept handles (the
    /// end of a run, before a quiescence check).
    pub fn sim_drain(&self) {
        let core = self.core();
        core.transports.drain(&mut |h, o| core.complete(h, o));
    }

    /// Sends one raw fabric write of `local` to `remote` at `peer`, carrying `handle`
    /// in its immediate data as if it were a transfer of this engine — a late
    /// completion of an old generation, say — for the receiver to reject. Waits for it
    /// to complete.
    pub fn inject_fabric_write(&self, peer: PeerId, local: Desc, remote: Desc, handle: Handle) -> Result<()> {
        let core = self.core();
        let p = self.peer(peer.0)?;
        let (Some(fabric), Link::Fabric(link)) = (core.transports.fabric(), &p.link) else {
            return Err(Error::InvalidDescriptor {
                reason: "not a fabric peer",
            });
        };
        p.check(&remote)?;
        let (raddr, key) = link.target(&remote).ok_or(Error::UnknownRegion {
            region: remote.region.to_raw(),
        })?;
        let registry = &core.shared.registry;
        let resolved = registry.pin_memory(&local)?;
        let result = fabric.inject_write(link.addr, link.tag, &resolved, raddr, key, handle, &mut |h, o| {
            core.complete(h, o)
        });
        registry.unpin(resolved.entry);
        result
    }
}

impl Engine {
    /// Sends one raw fabric NOTIFY carrying `handle` and `payload` to `peer`, as if a
    /// transfer of this engine had sent it — a late or repeated one of an old
    /// generation, say — for the receiver to reject. Waits for the send to complete.
    pub fn inject_fabric_notify(&self, peer: PeerId, handle: Handle, payload: &[u8]) -> Result<()> {
        let core = self.core();
        let p = self.peer(peer.0)?;
        let (Some(fabric), Link::Fabric(link)) = (core.transports.fabric(), &p.link) else {
            return Err(Error::InvalidDescriptor {
                reason: "not a fabric peer",
            });
        };
        fabric.inject_notify(link.addr, link.tag, handle, payload, &mut |h, o| core.complete(h, o))
    }
}

/// Fuzzing entry point: parses `data` as the cuda transport's GPU export (what a
/// peer's metadata carries under `BackendKind::Cuda`, decoded at `load_peer`),
/// checking that whatever parses encodes back to the same bytes.
#[cfg(feature = "cuda")]
pub fn fuzz_cuda_export(data: &[u8]) {
    use crate::backend::cuda_ipc::IpcInfo;
    if let Some(info) = IpcInfo::decode(data) {
        assert_eq!(info.encode(), data, "a decoded GPU export re-encodes to its bytes");
    }
}
