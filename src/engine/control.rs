//! The control path: memory registration, metadata and peers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Engine, MetadataServer, fetch_metadata_with};
use crate::error::{Error, Result};
use crate::mem::FileOptions;
use crate::notify::SenderId;
use crate::peer::Peer;
use crate::types::{PeerId, RegionId};
use crate::wire::metadata::{MemKind, Metadata};

impl Engine {
    // ----- control path: memory -----

    /// Registers `len` bytes at `addr` that the caller allocated.
    ///
    /// # Safety
    /// The memory stays allocated, and is not otherwise written while a transfer may
    /// read it or read while a transfer may write it, until [`deregister`](Engine::deregister)
    /// succeeds or the engine is dropped.
    // An `unsafe` API (the caller promises what the memory is); no unsafe code.
    #[allow(unsafe_code)]
    pub unsafe fn register_dram(&self, addr: *mut u8, len: usize) -> Result<RegionId> {
        self.usable()?;
        let id = self
            .core
            .shared
            .registry
            .register(addr as usize, len as u64, MemKind::Dram)?;
        self.pin_for_gpu(id)
    }

    /// Lets the transports see a new host region (the cuda transport page-locks it
    /// for the GPU with `CudaConfig::pin_host`); on failure it is deregistered again.
    fn pin_for_gpu(&self, id: RegionId) -> Result<RegionId> {
        self.core.transports.registered(&self.core.shared.registry, id)
    }

    /// Allocates `len` zeroed bytes owned by the engine and registers them; they are
    /// freed by [`deregister`](Engine::deregister) or engine drop.
    pub fn alloc_region(&self, len: usize) -> Result<RegionId> {
        self.usable()?;
        let id = self.core.shared.registry.allocate(len)?;
        self.pin_for_gpu(id)
    }

    /// Registers `len` bytes of GPU memory at device pointer `dev_ptr` (a
    /// `CUdeviceptr` of the engine's device) that the caller allocated. It moves to and
    /// from host memory and other GPU regions in transfers with
    /// [`local_peer`](Engine::local_peer), through the cuda transport.
    ///
    /// With the fabric transport too, it is registered with libfabric
    /// (`fi_mr_regattr`, `FI_HMEM_CUDA`) where the provider offers `FI_HMEM`: then it
    /// is published to peers and can be a fabric transfer's source or target. Where
    /// the provider or libfabric cannot, it is still registered for local use, and a
    /// fabric transfer naming it fails at prepare with [`Error::NotOnFabric`] saying
    /// why.
    ///
    /// # Safety
    /// The memory stays allocated, and is not otherwise used while a transfer may
    /// touch it, until [`deregister`](Engine::deregister) succeeds or the engine is
    /// dropped.
    // An `unsafe` API (the caller promises what the memory is); no unsafe code.
    #[allow(unsafe_code)]
    pub unsafe fn register_vram(&self, dev_ptr: u64, len: usize) -> Result<RegionId> {
        self.usable()?;
        self.core
            .transports
            .register_vram(&self.core.shared.registry, dev_ptr, len)
    }

    /// Allocates `len` bytes of GPU memory (`cuMemAlloc`) and registers them; freed
    /// when the region is deregistered or the engine dropped. For tests, tools and
    /// the bench: serving binaries usually register memory they own.
    pub fn alloc_vram(&self, len: usize) -> Result<RegionId> {
        self.usable()?;
        self.core.transports.alloc_vram(&self.core.shared.registry, len)
    }

    /// Opens the file at `path` once and registers it: its descriptor belongs to the
    /// registration and is closed by [`deregister`](Engine::deregister) (refused with
    /// [`Error::Busy`] while a transfer uses it) or engine drop — never per transfer.
    /// Move bytes to and from it with transfers to [`Engine::local_peer`], descriptors
    /// addressing it by (region, offset in the file, length).
    pub fn register_file(&self, path: impl AsRef<std::path::Path>, options: FileOptions) -> Result<RegionId> {
        self.usable()?;
        self.core.shared.registry.register_file(path.as_ref(), &options, false)
    }

    /// As [`register_file`](Engine::register_file), but the file is also mapped
    /// (shared), and transfers copy to and from the mapping instead of calling
    /// `pread`/`pwrite`: repeated reads of cached data skip a system call each. It is
    /// slower for data not yet in the page cache (a page fault per 4 KiB instead of one
    /// large read) and for one-off writes. Measure with `ringxfer-bench --backend file
    /// --mapped`.
    ///
    /// Only regular files are mapped; a writable one has its blocks allocated first
    /// (`posix_fallocate`), so a full filesystem is an error here rather than a fault
    /// later; a read-only one is mapped read-only and a WRITE into it fails `EBADF`.
    ///
    /// # Safety
    /// Nothing may truncate the file below the registered length while it is
    /// registered: touching a mapped page past the end of a file raises SIGBUS, which
    /// ends the process.
    // An `unsafe` API (the caller promises what the memory is); no unsafe code.
    #[allow(unsafe_code)]
    pub unsafe fn register_file_mapped(
        &self,
        path: impl AsRef<std::path::Path>,
        options: FileOptions,
    ) -> Result<RegionId> {
        self.usable()?;
        self.core.shared.registry.register_file(path.as_ref(), &options, true)
    }

    /// The peer id of this engine itself ([`PeerId::SELF`]), for transfers between its
    /// own registrations: memory to and from registered files (run by the I/O workers),
    /// or memory to memory.
    pub fn local_peer(&self) -> PeerId {
        PeerId::SELF
    }

    /// Removes a registration. [`Error::Busy`] while a transfer not yet released uses it.
    pub fn deregister(&self, region: RegionId) -> Result<()> {
        self.usable()?;
        self.core.shared.registry.deregister(region)
    }

    /// Copies bytes out of a local region (control path; for tools and tests).
    pub fn read_region(&self, region: RegionId, offset: u64, out: &mut [u8]) -> Result<()> {
        self.core.shared.registry.read_bytes(region, offset, out)
    }

    /// Copies bytes into a local region (control path; for tools and tests).
    pub fn write_region(&self, region: RegionId, offset: u64, data: &[u8]) -> Result<()> {
        self.core.shared.registry.write_bytes(region, offset, data)
    }

    // ----- control path: metadata and peers -----

    /// This engine's metadata blob: what a peer needs to reach it. Fetch it again after
    /// registering new regions.
    pub fn local_metadata(&self) -> Result<Vec<u8>> {
        self.core.metadata()
    }

    /// Serves this engine's metadata over TCP at `addr` (e.g. `"127.0.0.1:0"`) from a
    /// background thread, until the returned server is dropped. Each connection gets
    /// the metadata as it is at that moment: a `u32` little-endian length, then the blob.
    pub fn serve_metadata(&self, addr: impl std::net::ToSocketAddrs) -> Result<MetadataServer> {
        MetadataServer::start(
            Arc::downgrade(&self.core),
            &self.config.name,
            self.config.secret(),
            addr,
        )
    }

    /// Fetches a peer's metadata from its [`serve_metadata`](Engine::serve_metadata)
    /// address and loads it.
    pub fn fetch_peer(&self, addr: impl std::net::ToSocketAddrs) -> Result<PeerId> {
        self.usable()?;
        let blob = fetch_metadata_with(addr, self.config.secret().as_deref())?;
        self.load_peer(&blob)
    }

    /// Loads (or reloads) a peer from its metadata blob and introduces this engine to
    /// it, so it accepts our notifications.
    pub fn load_peer(&self, blob: &[u8]) -> Result<PeerId> {
        self.usable()?;
        let md = Metadata::decode(blob)?;
        // Connecting maps segments and opens a pidfd (I/O): done without the peer
        // table's write lock, which the hot path's readers would otherwise wait on.
        let previous = {
            let peers = self.unpoison(self.peers.read());
            peers.by_engine(md.engine_id).map(Arc::clone)
        };
        let (link, max_notif_bytes) = self.core.transports.connect(
            &md,
            &self.core.shared,
            previous.as_ref().map(|p| &p.link),
            &mut |h, o| self.core.complete(h, o),
        )?;
        let peer = Arc::new(Peer::new(
            md.engine_name,
            md.engine_id,
            md.regions,
            max_notif_bytes,
            link,
        ));
        self.add_peer(peer)
    }

    /// Puts a peer in the table: in place of the same engine's if it was loaded
    /// before (a reload), or of a previous incarnation's of the same name whose
    /// process is gone (a restart), keeping its id; the peer replaced is dropped
    /// (its mappings closed) outside the lock.
    pub(crate) fn add_peer(&self, peer: Arc<Peer>) -> Result<PeerId> {
        let _poison = self.poison_on_unwind();
        let mut peers = self.unpoison(self.peers.write());
        let (id, old) = peers.insert(peer)?;
        self.core.census.peers.store(peers.len(), Ordering::Relaxed);
        drop(peers);
        drop(old);
        Ok(id)
    }

    /// Forgets a peer: its id names nothing from now on, and what this engine holds
    /// to reach it (mapped segments and GPU memory, its inbox lane, its fabric
    /// address) is let go once no transfer uses it (transfers already prepared to it
    /// fail to post with `UnknownPeer`; those in flight end as they would have).
    pub fn unload_peer(&self, peer: PeerId) -> Result<()> {
        let _poison = self.poison_on_unwind();
        let mut peers = self.unpoison(self.peers.write());
        let old = peers.remove(peer.0)?;
        self.core.census.peers.store(peers.len(), Ordering::Relaxed);
        drop(peers);
        drop(old);
        Ok(())
    }

    /// Declares a peer lost (a metadata store saw its lease expire, or the caller
    /// knows by other means): new transfers to it fail at `prepare` with
    /// [`Error::PeerLost`], and its fabric transfers in flight fail now with
    /// `FailCode::PEER_LOST` (a local peer's transfers do not stay in flight). The
    /// entry stays until [`unload_peer`](Engine::unload_peer) or a reload of the
    /// same engine; loading a restarted engine under the name gives a new id.
    pub fn lose_peer(&self, peer: PeerId) -> Result<()> {
        let peers = self.unpoison(self.peers.read());
        let p = peers.get(peer.0).ok_or(Error::UnknownPeer { peer: peer.0 })?;
        p.lost.store(true, Ordering::Relaxed);
        self.core
            .transports
            .lose(&p.link, &|h, code| self.core.ring.expire(h, code));
        Ok(())
    }

    /// The libfabric provider the fabric transport uses (e.g. `tcp;ofi_rxm`), if it
    /// is on.
    pub fn fabric_provider(&self) -> Option<String> {
        self.core.transports.provider()
    }

    /// The name of a loaded peer.
    pub fn peer_name(&self, peer: PeerId) -> Result<String> {
        let peers = self.unpoison(self.peers.read());
        peers
            .get(peer.0)
            .map(|p| p.name.clone())
            .ok_or(Error::UnknownPeer { peer: peer.0 })
    }

    /// The name of an engine that sent us notifications.
    pub fn sender_name(&self, sender: SenderId) -> Option<String> {
        self.core.shared.inbox.sender_name(sender)
    }
}
