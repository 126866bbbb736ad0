//! GPU memory across processes on one node: what the cuda transport publishes of an
//! engine's GPU regions, and the mappings a peer opens of them.
//!
//! - **Export** (`publish`): every GPU region whose allocation has a legacy IPC
//!   handle (`cuIpcGetMemHandle`, `cuMemAlloc` memory), or is a VMM allocation this
//!   engine made and shares as a file descriptor (`cuda_vmm`), is listed in the
//!   engine's metadata, under [`BackendKind::Cuda`], with its offset in that
//!   allocation, next to the node's identity (the kernel's boot id) and the device's
//!   UUID.
//! - **Import** (`load_peer`, control path): a peer in another process on the same
//!   node whose device this engine can see gets each distinct handle opened once
//!   (`cuIpcOpenMemHandle`, lazy peer access), kept in its [`IpcLink`]. Reloading the
//!   peer keeps the mappings of handles that did not change and opens only the new
//!   ones; dropping the link (a reload, the engine's drop) closes what no link uses.
//!   `EngineStats::cuda_ipc_mappings` counts the mappings open.
//!
//! A peer on another node, or whose GPU this engine cannot reach (not visible, or no
//! peer access), is refused at `load_peer` with the reason; a peer on another device
//! of the node that is reachable is mapped like one on the same device (copies
//! between the devices go peer to peer). Nothing here runs on the hot path.

// Unsafe code: the CUDA driver's IPC calls (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cudarc::driver::sys;

use super::cuda::Cuda;
use super::local::LocalLink;
use crate::error::{Error, Result};
use crate::mem::Registry;
use crate::wire::metadata::{BackendInfo, BackendKind, Metadata};

/// The wire format's version byte.
const VERSION: u8 = 2;
/// Bytes of a legacy IPC handle (and of every entry's handle field).
const HANDLE_BYTES: usize = 64;
/// Bytes of one exported region: id, offset, length, kind, handle.
const ENTRY_BYTES: usize = 8 + 8 + 8 + 1 + HANDLE_BYTES;
/// An entry's kind: a legacy IPC handle (`cuIpcGetMemHandle`).
const LEGACY: u8 = 0;
/// An entry's kind: a VMM allocation shared as a POSIX file descriptor; the handle
/// field holds the descriptor's number in the exporting process (4 bytes), the
/// allocation's size (8 bytes) and the export's serial there (8 bytes: a descriptor
/// number reused for a later allocation is another export, never a stale match).
const POSIX_FD: u8 = 1;
/// At most this many exported regions in one blob (the registry's own limit).
const MAX_ENTRIES: usize = 1 << 20;

/// One exported GPU region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exported {
    /// The region's id at its owner.
    pub(crate) id: u64,
    /// Where the region starts in its allocation.
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// [`LEGACY`] or [`POSIX_FD`].
    pub(crate) kind: u8,
    /// The allocation's IPC handle, or its descriptor and size.
    pub(crate) handle: [u8; HANDLE_BYTES],
}

/// What the cuda transport puts in an engine's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IpcInfo {
    /// The node: its kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub(crate) node: [u8; 16],
    /// The UUID of the device the regions live on.
    pub(crate) device: [u8; 16],
    pub(crate) regions: Vec<Exported>,
}

impl IpcInfo {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 4 + self.regions.len() * ENTRY_BYTES);
        out.push(VERSION);
        out.extend_from_slice(&self.node);
        out.extend_from_slice(&self.device);
        out.extend_from_slice(&(self.regions.len() as u32).to_le_bytes());
        for r in &self.regions {
            out.extend_from_slice(&r.id.to_le_bytes());
            out.extend_from_slice(&r.offset.to_le_bytes());
            out.extend_from_slice(&r.len.to_le_bytes());
            out.push(r.kind);
            out.extend_from_slice(&r.handle);
        }
        out
    }

    /// Parses `conn` (from a peer: untrusted); `None` if it is malformed.
    pub(crate) fn decode(conn: &[u8]) -> Option<IpcInfo> {
        let (&version, rest) = conn.split_first()?;
        if version != VERSION || rest.len() < 36 {
            return None;
        }
        let node = rest[..16].try_into().ok()?;
        let device = rest[16..32].try_into().ok()?;
        let count = u32::from_le_bytes(rest[32..36].try_into().ok()?) as usize;
        let body = &rest[36..];
        if count > MAX_ENTRIES || body.len() != count.checked_mul(ENTRY_BYTES)? {
            return None;
        }
        let u64_at = |b: &[u8], i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        let regions = body
            .chunks_exact(ENTRY_BYTES)
            .map(|e| {
                Some(Exported {
                    id: u64_at(e, 0)?,
                    offset: u64_at(e, 8)?,
                    len: u64_at(e, 16)?,
                    kind: Some(e[24]).filter(|&k| k == LEGACY || k == POSIX_FD)?,
                    handle: e[25..].try_into().ok()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(IpcInfo { node, device, regions })
    }
}

/// This node's identity: the kernel's boot id, as 16 bytes (all zero if unreadable:
/// such an engine then matches no peer but one that could not read it either, and
/// that one only on the same node's shared-memory directory).
pub(crate) fn node_id() -> [u8; 16] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: Vec<u8> = text
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).unwrap_or(0) as u8)
        .collect();
    let mut id = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).take(16).enumerate() {
        id[i] = pair[0] << 4 | pair[1];
    }
    id
}

/// The UUID of the device with ordinal `ordinal`.
pub(crate) fn device_uuid(device: sys::CUdevice) -> Result<[u8; 16]> {
    let mut uuid = sys::CUuuid { bytes: [0; 16] };
    // SAFETY: a valid out-pointer and a device from cuDeviceGet.
    let r = unsafe { sys::cuDeviceGetUuid(&mut uuid, device) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(Error::Cuda {
            what: "cuDeviceGetUuid",
            code: r as i32,
        });
    }
    Ok(uuid.bytes.map(|b| b as u8))
}

/// Whether this engine's device can copy to and from memory on the device `uuid`:
/// it is that device, or a visible device with that UUID that it has peer access to
/// (`cuDeviceCanAccessPeer`; the mapping then enables it, lazily).
fn reaches(cuda: &Cuda, uuid: [u8; 16]) -> bool {
    if uuid == cuda.uuid() {
        return true;
    }
    let mut count = 0;
    // SAFETY: a valid out-pointer; the driver is initialised.
    if unsafe { sys::cuDeviceGetCount(&mut count) } != sys::CUresult::CUDA_SUCCESS {
        return false;
    }
    (0..count).any(|ordinal| {
        let mut device = 0;
        // SAFETY: a valid out-pointer and an ordinal below the count.
        if unsafe { sys::cuDeviceGet(&mut device, ordinal) } != sys::CUresult::CUDA_SUCCESS {
            return false;
        }
        let mut can = 0;
        device_uuid(device).is_ok_and(|u| u == uuid)
            // SAFETY: a valid out-pointer and two devices from cuDeviceGet.
            && unsafe { sys::cuDeviceCanAccessPeer(&mut can, cuda.cu_device(), device) } == sys::CUresult::CUDA_SUCCESS
            && can == 1
    })
}

/// The metadata entry describing the engine's exportable GPU regions (none is an
/// entry too: it says the peer has the transport, so this engine's GPU memory may
/// move to and from the peer's shared-memory host regions). A region whose allocation has no legacy IPC handle (VMM memory, say) is
/// left out: peers in other processes cannot reach it.
pub(crate) fn publish(cuda: &Cuda, registry: &Registry) -> Option<BackendInfo> {
    let regions: Vec<Exported> = registry
        .device_regions()
        .into_iter()
        .filter_map(|(id, addr, len)| {
            export(cuda, addr, len).map(|(offset, kind, handle)| Exported {
                id,
                offset,
                len,
                kind,
                handle,
            })
        })
        .collect();
    let info = IpcInfo {
        node: node_id(),
        device: cuda.uuid(),
        regions,
    };
    Some(BackendInfo {
        kind: BackendKind::Cuda,
        conn: info.encode(),
    })
}

/// (offset in its allocation, the entry's kind, its handle field) of device memory
/// at `addr`: a VMM allocation this engine exports as a descriptor, else the legacy
/// IPC handle of a `cuMemAlloc` allocation; `None` where there is neither.
fn export(cuda: &Cuda, addr: usize, len: u64) -> Option<(u64, u8, [u8; HANDLE_BYTES])> {
    if let Some((base, size, fd, serial)) = super::cuda_vmm::exported(cuda, addr as u64) {
        let offset = addr as u64 - base;
        if offset.checked_add(len)? > size {
            return None;
        }
        let mut handle = [0u8; HANDLE_BYTES];
        handle[..4].copy_from_slice(&fd.to_le_bytes());
        handle[4..12].copy_from_slice(&size.to_le_bytes());
        handle[12..20].copy_from_slice(&serial.to_le_bytes());
        return Some((offset, POSIX_FD, handle));
    }
    cuda.make_current().ok()?;
    let (mut base, mut size) = (0, 0);
    // SAFETY: valid out-pointers; the driver checks `addr`.
    let r = unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, addr as u64) };
    let offset = (addr as u64).checked_sub(base)?;
    if r != sys::CUresult::CUDA_SUCCESS || offset.checked_add(len)? > size as u64 {
        return None;
    }
    let mut handle = sys::CUipcMemHandle { reserved: [0; 64] };
    // SAFETY: a valid out-pointer; `base` is an allocation's start.
    let r = unsafe { sys::cuIpcGetMemHandle(&mut handle, base) };
    (r == sys::CUresult::CUDA_SUCCESS).then(|| (offset, LEGACY, handle.reserved.map(|b| b as u8)))
}

/// One opened export (an IPC handle, or a VMM allocation's descriptor), closed when
/// the last link using it goes.
struct Mapping {
    cuda: Arc<Cuda>,
    /// The entry's kind and handle field: what tells one export from another.
    key: (u8, [u8; HANDLE_BYTES]),
    /// The allocation's start in this process.
    base: u64,
    /// The bytes mapped from `base`.
    size: u64,
    /// A VMM import (unmapped at drop), or `None` for a legacy IPC handle.
    vmm: Option<super::cuda_vmm::Imported>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.cuda.make_current().is_ok() {
            match &self.vmm {
                Some(imported) => imported.close(),
                None => {
                    // SAFETY: `base` came from cuIpcOpenMemHandle and is closed once,
                    // here.
                    let _ = unsafe { sys::cuIpcCloseMemHandle(self.base) };
                }
            }
        }
        self.cuda.ipc_mappings.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The GPU regions of a peer in another process on this node, mapped here: one
/// mapping per distinct IPC handle it exports.
pub(crate) struct IpcLink {
    /// (region id, where it starts in this process, its length), sorted by id.
    regions: Vec<(u64, u64, u64)>,
    mappings: Vec<Arc<Mapping>>,
    /// The peer's shared-memory segments page-locked here (their starts).
    host_pins: Vec<usize>,
    cuda: Arc<Cuda>,
    /// Keeps the segments mapped until they are unlocked (see `Drop`).
    _local: Arc<LocalLink>,
}

impl Drop for IpcLink {
    fn drop(&mut self) {
        for &addr in &self.host_pins {
            self.cuda.host_unregister(addr);
        }
    }
}

impl IpcLink {
    /// Maps the GPU regions the engine `md` describes exports, if it is another
    /// process with any; reuses the mappings of `previous` (the same peer, loaded
    /// before) for handles that did not change.
    /// With `CudaConfig::pin_host`, the peer's shared-memory host regions that `local`
    /// mapped here are page-locked for the GPU too (undone when the link goes; the
    /// link keeps `local`, and so the mappings, until then).
    pub(crate) fn connect(
        cuda: &Arc<Cuda>,
        md: &Metadata,
        local: &Arc<LocalLink>,
        previous: Option<&IpcLink>,
    ) -> Result<Option<IpcLink>> {
        let Some(conn) = md.backends.iter().find(|b| b.kind == BackendKind::Cuda) else {
            return Ok(None);
        };
        if md.process_id == std::process::id() {
            // The same process: its device pointers are ours already.
            return Ok(None);
        }
        let unreachable = |reason: &str| Error::PeerUnreachable {
            name: md.engine_name.clone(),
            reason: reason.to_owned(),
        };
        let info = IpcInfo::decode(&conn.conn).ok_or_else(|| unreachable("its GPU export is malformed"))?;
        if info.node != node_id() {
            return Err(unreachable(
                "its GPU memory is on another node (a different boot id): reach it over the fabric",
            ));
        }
        if !info.regions.is_empty() && !reaches(cuda, info.device) {
            return Err(unreachable(
                "its GPU memory is on a device this engine does not use and cannot reach \
                 (no visible device has that UUID, or it has no peer access to ours)",
            ));
        }
        let mut mappings: Vec<Arc<Mapping>> = Vec::new();
        let mut regions = Vec::with_capacity(info.regions.len());
        for r in &info.regions {
            let key = (r.kind, r.handle);
            let mapping = match mappings.iter().find(|m| m.key == key) {
                Some(m) => Arc::clone(m),
                None => {
                    let reused = previous.and_then(|p| p.mappings.iter().find(|m| m.key == key));
                    let m = match reused {
                        Some(m) => Arc::clone(m),
                        None => Arc::new(open(cuda, md.process_id, key).map_err(|e| unreachable(&e))?),
                    };
                    mappings.push(Arc::clone(&m));
                    m
                }
            };
            // The export comes from outside: the region must lie inside what was mapped.
            if r.offset.checked_add(r.len).is_none_or(|end| end > mapping.size) {
                return Err(unreachable("its GPU export is out of range"));
            }
            let start = mapping.base + r.offset;
            regions.push((r.id, start, r.len));
        }
        regions.sort_unstable_by_key(|&(id, _, _)| id);
        let mut host_pins = Vec::new();
        if cuda.pins_host() {
            for (addr, len) in local.mapped_segments() {
                // Pageable is slower, not wrong: a range the driver refuses stays so.
                if cuda.host_register(addr, len).is_ok() {
                    host_pins.push(addr);
                }
            }
        }
        Ok(Some(IpcLink {
            regions,
            mappings,
            host_pins,
            cuda: Arc::clone(cuda),
            _local: Arc::clone(local),
        }))
    }

    /// Where the peer's GPU region `id` starts in this process, and its length.
    #[inline]
    pub(crate) fn region(&self, id: u64) -> Option<(u64, u64)> {
        let i = self.regions.binary_search_by_key(&id, |&(id, _, _)| id).ok()?;
        let (_, start, len) = self.regions[i];
        Some((start, len))
    }
}

/// Opens one export of process `pid`; the error says why in words.
fn open(cuda: &Arc<Cuda>, pid: u32, key: (u8, [u8; HANDLE_BYTES])) -> std::result::Result<Mapping, String> {
    let (kind, handle) = key;
    let (base, size, vmm) = if kind == POSIX_FD {
        let fd = i32::from_le_bytes(handle[..4].try_into().unwrap_or_default());
        let size = u64::from_le_bytes(handle[4..12].try_into().unwrap_or_default());
        let imported = super::cuda_vmm::Imported::open(cuda, pid, fd, size)?;
        (imported.base, size, Some(imported))
    } else {
        cuda.make_current().map_err(|e| e.to_string())?;
        let raw = sys::CUipcMemHandle {
            reserved: handle.map(|b| b as std::ffi::c_char),
        };
        let mut base = 0;
        // SAFETY: a valid out-pointer; the driver checks the handle.
        let r = unsafe {
            sys::cuIpcOpenMemHandle_v2(&mut base, raw, 1 /* CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS */)
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(format!("cuIpcOpenMemHandle of one of its GPU regions failed: {r:?}"));
        }
        let (mut start, mut size) = (0, 0);
        // SAFETY: valid out-pointers; `base` was just mapped.
        let r = unsafe { sys::cuMemGetAddressRange_v2(&mut start, &mut size, base) };
        if r != sys::CUresult::CUDA_SUCCESS || start != base {
            // SAFETY: opened just above, closed once.
            let _ = unsafe { sys::cuIpcCloseMemHandle(base) };
            return Err(format!("the size of one of its mapped GPU regions is unknown: {r:?}"));
        }
        (base, size as u64, None)
    };
    cuda.ipc_mappings.fetch_add(1, Ordering::Relaxed);
    Ok(Mapping {
        cuda: Arc::clone(cuda),
        key,
        base,
        size,
        vmm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_refuses_truncation() {
        let info = IpcInfo {
            node: [1; 16],
            device: [2; 16],
            regions: vec![Exported {
                id: 7 << 20 | 3,
                offset: 4096,
                len: 1 << 20,
                kind: POSIX_FD,
                handle: [9; 64],
            }],
        };
        let bytes = info.encode();
        assert_eq!(IpcInfo::decode(&bytes), Some(info));
        for cut in 0..bytes.len() {
            assert_eq!(IpcInfo::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(IpcInfo::decode(&long), None);
        let mut unknown_kind = bytes.clone();
        unknown_kind[1 + 32 + 4 + 24] = 7;
        assert_eq!(IpcInfo::decode(&unknown_kind), None);
    }

    #[test]
    fn node_id_is_stable() {
        assert_eq!(node_id(), node_id());
    }
}
