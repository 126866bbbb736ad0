//! Memory registration: the table of regions an engine may move bytes to and from.
//!
//! A registration is named by a [`RegionId`], generational like a transfer handle
//! (`generation << 20 | index`), so an id kept after `deregister` is refused rather
//! than resolved to whatever took its entry next. The table has a fixed number of
//! entries chosen at engine construction; registering and deregistering are control
//! path (they take the table's write lock), while resolving a descriptor on the hot
//! path takes the read lock briefly and never allocates.
//!
//! Every transfer *holds* the regions its descriptors name from `prepare` until its slot
//! is freed, and so does a prepared list until it is released: the holder records the
//! table entries in its own row of [`Holds`] (plain stores, no read-modify-write), and
//! deregistration scans the rows. Deregistering a held region is `Error::Busy`, so
//! memory is never unregistered — or freed, for engine-owned buffers — under a
//! transfer. Control-path copies (`read_region`, `write_region`) pin the region with a
//! per-entry counter for the length of the copy instead.

// Unsafe code: `posix_fallocate` and control-path copies to and from registered addresses (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

mod holds;
mod pinner;

use self::holds::Holds;
pub(crate) use self::holds::{Holder, Pairs};
pub(crate) use self::pinner::Pinner;
use crate::error::{Error, Result};
use crate::sys::regtable::RegTable;
use crate::sys::sharded::{ReadGuard, Sharded, WriteGuard};
use crate::sys::shm::{self, Segment};
use crate::types::{Desc, INDEX_BITS, RegionId};
use crate::wire::metadata::{MemKind, RegionInfo};

/// How [`Engine::register_file`](crate::Engine::register_file) opens a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOptions {
    /// Open for writing too (WRITE transfers into it); read-only otherwise, and a WRITE
    /// into a read-only file fails with `EBADF`.
    pub writable: bool,
    /// Create the file if it does not exist (needs `writable`).
    pub create: bool,
    /// The registered length: a regular file shorter than this is extended (needs
    /// `writable`), a longer one is registered up to it; for a device it is the length
    /// to address. `None`: the file's current size.
    pub len: Option<u64>,
    /// Make every WRITE durable (`fdatasync`) before the transfer reports DONE. Without
    /// it, DONE means the bytes are in the kernel's page cache: visible to every reader
    /// of the file, but lost if the machine (not the process) crashes.
    pub sync: bool,
}

/// A transport that registers memory itself (libfabric's memory regions): the
/// registry asks it to register every region of host memory, and GPU memory where it
/// can, and keeps the [`Key`] with the region until the region goes. The registry
/// knows no transport; this is how one hooks into registration.
pub(crate) trait Keyring: Send + Sync {
    /// Registers host memory; an error fails the registration.
    fn register_host(&self, addr: usize, len: usize) -> Result<Key>;
    /// Registers GPU memory of `device`; an error (why, in words) leaves the region
    /// registered without a key, and transfers through this transport refuse it.
    fn register_device(&self, addr: usize, len: usize, device: u32) -> std::result::Result<Key, String>;
}

/// A region's registration with a [`Keyring`] transport.
pub(crate) struct Key {
    /// Passed with local buffers (libfabric's `fi_mr_desc`).
    pub(crate) desc: usize,
    /// What a peer names the region with (libfabric's `fi_mr_key`).
    pub(crate) remote: u64,
    /// Undoes the registration when dropped.
    pub(crate) _owner: Box<dyn std::any::Any + Send + Sync>,
}

struct Region {
    addr: usize,
    len: u64,
    kind: MemKind,
    /// The region's registration with a keying transport (libfabric), when the engine
    /// has one; undone when the region goes. GPU memory has one only where the
    /// transport can register device memory. Declared (so dropped)
    /// before what holds the memory — the segment, the mapping, the owner — so the
    /// key stops working before the memory is unmapped or freed: a peer's write
    /// arriving meanwhile fails instead of landing in unmapped memory.
    key: Option<Key>,
    /// What the region owns besides: device memory from `Engine::alloc_vram` (freed
    /// with the region, after `key` let go of it), or the page-locking of host memory
    /// for the GPU (undone before `segment` unmaps the memory).
    _owned: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// The shared-memory segment an engine-allocated region lives in (peers in other
    /// processes map it by name); `None` for memory the caller registered.
    segment: Option<Segment>,
    /// A registered file: its descriptor, owned here and closed when the region goes,
    /// and whether writes to it are made durable (`fdatasync`) before they complete.
    file: Option<(std::fs::File, bool)>,
    /// A mapped file's mapping (`addr` is its start), unmapped when the region goes.
    _map: Option<memmap2::MmapRaw>,
    /// GPU memory the keying transport could not register: why (said when a
    /// transfer through it names the region).
    unkeyed: Option<Box<str>>,
    /// The GPU ordinal of GPU memory (0 otherwise).
    device: u32,
    /// False for a file registered read-only.
    writable: bool,
}

/// One registration slot. `whole` is the region resolved whole (its address, length
/// and flags, as a [`Resolved`]), so a transfer's lookup touches one cache line per
/// region, not the whole `Region` (three lines, and behind its `Option`): set with
/// `region`, cleared with it.
#[repr(C, align(64))]
struct Entry {
    generation: u64,
    whole: Option<Resolved>,
    region: Option<Region>,
}

impl Resolved {
    /// All of `region`, registered at table index `entry`.
    fn whole(region: &Region, entry: u32) -> Resolved {
        Resolved {
            addr: region.addr,
            len: region.len as usize,
            entry,
            fd: region.file.as_ref().map(|(f, _)| std::os::fd::AsRawFd::as_raw_fd(f)),
            sync: region.file.as_ref().is_some_and(|(_, sync)| *sync),
            mapped: region._map.is_some(),
            writable: region.writable,
            key_desc: region.key.as_ref().map_or(0, |k| k.desc),
            vram: region.kind == MemKind::Vram,
        }
    }
}

static_assertions::const_assert!(std::mem::offset_of!(Entry, region) <= 64);

struct Table {
    entries: Box<[Entry]>,
    free: Vec<u32>,
}

/// The registration table (see the module docs).
pub(crate) struct Registry {
    table: Sharded<Table>,
    /// Per entry: control-path copies in progress (`read_bytes`, `write_bytes`, a test
    /// hook). Taken under the table's read lock (so deregistration, under the write
    /// lock, sees every pin); dropped without it.
    pins: Box<[AtomicU32]>,
    /// Which regions each transfer and prepared list holds.
    holds: Holds,
    /// What peers in other processes see of each entry (see `sys::regtable`).
    remote: RegTable,
    /// Where engine-allocated regions' segments are created, and their name prefix.
    segment_dir: PathBuf,
    segment_prefix: String,
    /// The transport memory is registered with (libfabric), when the engine has one.
    keyring: Option<Arc<dyn Keyring>>,
}

/// The name of the registration-table segment of the engine whose prefix is `prefix`.
pub(crate) fn regtable_name(prefix: &str) -> String {
    format!("{prefix}-regs")
}

/// The segment name of region `id` of the engine whose prefix is `prefix`.
pub(crate) fn segment_name(prefix: &str, id: u64) -> String {
    format!("{prefix}-r{id:x}")
}

/// The registry's read lock, held while another engine copies to or from its memory.
pub(crate) struct Access<'a>(ReadGuard<'a, Table>);

impl Access<'_> {
    /// Checks `desc` against its region; valid while this guard lives.
    pub(crate) fn resolve(&self, desc: &Desc) -> Result<Resolved> {
        resolve(&self.0, desc).and_then(memory_only)
    }
}

/// What a transfer's side may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// Host memory only: a peer's copy (the local transport), a `memcpy`.
    Memory,
    /// Host memory, and GPU memory registered with the keying transport: a transfer
    /// to a peer reached through it.
    Keyed,
    /// Host memory and any GPU memory: a transfer to a peer whose GPU memory is
    /// mapped here (the cuda transport moves it).
    Device,
    /// Memory, files and GPU memory: a transfer between the engine's own regions.
    Anything,
}

/// Refuses a file or GPU region where only host memory will do (a peer's copy, a
/// `memcpy`).
#[inline(always)]
fn memory_only(r: Resolved) -> Result<Resolved> {
    if r.vram {
        return Err(Error::InvalidDescriptor {
            reason: "a VRAM region moves only in transfers with Engine::local_peer() (the cuda transport)",
        });
    }
    match r.fd {
        None => Ok(r),
        Some(_) => Err(Error::InvalidDescriptor {
            reason: "a file region moves only in transfers with Engine::local_peer()",
        }),
    }
}

#[inline(always)]
fn resolve(table: &Table, desc: &Desc) -> Result<Resolved> {
    let whole = match table.entries.get(desc.region.index()) {
        Some(Entry {
            generation,
            whole: Some(whole),
            ..
        }) if *generation == desc.region.generation() => whole,
        _ => {
            return Err(Error::UnknownRegion {
                region: desc.region.to_raw(),
            });
        }
    };
    let in_bounds = desc.len > 0
        && desc
            .offset
            .checked_add(desc.len)
            .is_some_and(|end| end <= whole.len as u64);
    if !in_bounds {
        return Err(Error::OutOfBounds {
            region: desc.region.to_raw(),
            offset: desc.offset,
            len: desc.len,
            region_len: whole.len as u64,
        });
    }
    // The whole region narrowed (copied whole, then two fields set: cheaper than
    // building it field by field).
    let mut resolved = *whole;
    resolved.addr += desc.offset as usize;
    resolved.len = desc.len as usize;
    Ok(resolved)
}

/// A descriptor resolved against the table: an address valid while its region is held
/// (or pinned, for a control-path copy).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Resolved {
    /// The address, or for a file the offset in it.
    pub addr: usize,
    pub len: usize,
    pub entry: u32,
    /// A file region's descriptor (valid while the region is held).
    pub fd: Option<i32>,
    /// Whether writes to this file are made durable before they complete.
    pub sync: bool,
    /// A mapped file: `addr` is the address of the bytes in the mapping.
    pub mapped: bool,
    /// Whether the region may be written (a file registered read-only may not).
    pub writable: bool,
    /// The keying transport's local descriptor of the region (libfabric's
    /// `fi_mr_desc`), 0 without one.
    pub key_desc: usize,
    /// GPU memory: `addr` is a device pointer, reached only through the cuda transport.
    pub vram: bool,
}

impl Registry {
    /// A table of `capacity` entries, with rows of [`Holds`] for `slots` ring slots and
    /// `lists` prepared lists of at most `per_side` descriptors a side; `lanes` peers in
    /// other processes may pin its entries (one per inbox lane).
    pub(crate) fn new(
        capacity: usize,
        lanes: usize,
        (slots, lists, per_side): (usize, usize, usize),
        segment_prefix: String,
        keyring: Option<Arc<dyn Keyring>>,
    ) -> Result<Registry> {
        let entries = (0..capacity)
            .map(|_| Entry {
                generation: 1,
                whole: None,
                region: None,
            })
            .collect();
        // Popped from the back: reversed so ids are handed out from index 0 up.
        let free = (0..capacity as u32).rev().collect();
        let segment_dir = shm::dir();
        let remote = RegTable::create(&segment_dir, &regtable_name(&segment_prefix), capacity, lanes)?;
        Ok(Registry {
            table: Sharded::new(Table { entries, free }),
            pins: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            holds: Holds::new(slots, lists, per_side),
            remote,
            segment_dir,
            segment_prefix,
            keyring,
        })
    }

    fn read(&self) -> ReadGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent (every
        // write is a single assignment), so a poisoned lock is still usable.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> WriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// (address, length) of a live region.
    pub(crate) fn extent(&self, id: RegionId) -> Result<(usize, usize)> {
        let table = self.read();
        match table.entries.get(id.index()) {
            Some(Entry {
                generation,
                region: Some(r),
                ..
            }) if *generation == id.generation() => Ok((r.addr, r.len as usize)),
            _ => Err(Error::UnknownRegion { region: id.to_raw() }),
        }
    }

    /// Gives a live region something to own (dropped with it).
    pub(crate) fn attach(&self, id: RegionId, owned: Box<dyn std::any::Any + Send + Sync>) -> Result<()> {
        let mut table = self.write();
        let entry = Self::entry_mut(&mut table, id)?;
        if let Some(r) = entry.region.as_mut() {
            r._owned = Some(owned);
        }
        Ok(())
    }

    /// Registers memory the caller owns.
    pub(crate) fn register(&self, addr: usize, len: u64, kind: MemKind) -> Result<RegionId> {
        Self::check_range(addr, len)?;
        let key = self.register_key(addr, len as usize)?;
        self.insert_memory(addr, len, kind, (key, None), 0, None)
    }

    /// Registers GPU memory (a CUDA device pointer on device `device`), with what
    /// owns it, if anything. With a keying transport (the fabric) it is registered
    /// there too, so it can be a transfer's source or target through it; if the
    /// transport cannot, the region is still registered for local use, and a transfer
    /// through that transport naming it is refused with the reason.
    pub(crate) fn register_vram(
        &self,
        addr: usize,
        len: u64,
        device: u32,
        owned: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Result<RegionId> {
        Self::check_range(addr, len)?;
        let key = match &self.keyring {
            None => (None, None),
            Some(keyring) => match keyring.register_device(addr, len as usize, device) {
                Ok(key) => (Some(key), None),
                Err(why) => (None, Some(why.into_boxed_str())),
            },
        };
        self.insert_memory(addr, len, MemKind::Vram, key, device, owned)
    }

    /// A non-null, non-empty range that does not wrap.
    fn check_range(addr: usize, len: u64) -> Result<()> {
        if len == 0 || addr == 0 {
            return Err(Error::InvalidDescriptor {
                reason: "a region needs a non-null address and a non-zero length",
            });
        }
        if (addr as u64).checked_add(len).is_none() {
            return Err(Error::InvalidDescriptor {
                reason: "region wraps around the address space",
            });
        }
        Ok(())
    }

    /// Inserts memory the caller (or `owned`) owns, with its transport key or why it
    /// has none.
    fn insert_memory(
        &self,
        addr: usize,
        len: u64,
        kind: MemKind,
        (key, unkeyed): (Option<Key>, Option<Box<str>>),
        device: u32,
        owned: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Result<RegionId> {
        self.insert(|_| {
            Ok(Region {
                addr,
                len,
                kind,
                segment: None,
                file: None,
                _map: None,
                writable: true,
                key,
                unkeyed,
                device,
                _owned: owned,
            })
        })
    }

    /// Allocates `len` zeroed bytes in a shared-memory segment owned by the registry
    /// (so peers in other processes can map them) and registers them.
    pub(crate) fn allocate(&self, len: usize) -> Result<RegionId> {
        if len == 0 {
            return Err(Error::InvalidDescriptor {
                reason: "a region cannot be empty",
            });
        }
        self.insert(|id| {
            let segment = Segment::create(&self.segment_dir, &segment_name(&self.segment_prefix, id.to_raw()), len)?;
            let addr = segment.as_ptr() as usize;
            Ok(Region {
                addr,
                len: len as u64,
                kind: MemKind::Dram,
                segment: Some(segment),
                file: None,
                _map: None,
                writable: true,
                key: self.register_key(addr, len)?,
                unkeyed: None,
                device: 0,
                _owned: None,
            })
        })
    }

    /// Opens a file once and registers it (see [`FileOptions`]).
    pub(crate) fn register_file(
        &self,
        path: &std::path::Path,
        options: &FileOptions,
        mapped: bool,
    ) -> Result<RegionId> {
        use std::os::unix::fs::FileTypeExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(options.writable)
            .create(options.create)
            .open(path)
            .map_err(|e| Error::io("opening a file to register", &e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("reading a registered file's size", &e))?;
        if meta.is_dir() {
            return Err(Error::InvalidDescriptor {
                reason: "a directory cannot be registered as a file",
            });
        }
        let len = match options.len {
            Some(len) if meta.is_file() && len > meta.len() => {
                if !options.writable {
                    return Err(Error::InvalidDescriptor {
                        reason: "extending a file needs it registered writable",
                    });
                }
                file.set_len(len)
                    .map_err(|e| Error::io("extending a registered file", &e))?;
                len
            }
            Some(len) if meta.file_type().is_char_device() || meta.file_type().is_block_device() => len,
            Some(len) => len.min(meta.len()),
            None => meta.len(),
        };
        if len == 0 {
            return Err(Error::InvalidDescriptor {
                reason: "an empty file cannot be registered (give a length)",
            });
        }
        let map = if mapped {
            if !meta.is_file() {
                return Err(Error::InvalidDescriptor {
                    reason: "mapped mode needs a regular file",
                });
            }
            let mut map_options = memmap2::MmapOptions::new();
            map_options.len(len as usize);
            let map = if options.writable {
                // Allocate the blocks now: a write into a hole of a mapping on a full
                // filesystem would raise SIGBUS; here it fails with ENOSPC instead.
                // SAFETY: a valid descriptor and an in-range length.
                let r = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, len as libc::off_t) };
                if r != 0 {
                    return Err(Error::io(
                        "allocating a mapped file's blocks",
                        &std::io::Error::from_raw_os_error(r),
                    ));
                }
                map_options.map_raw(&file)
            } else {
                map_options.map_raw_read_only(&file)
            }
            .map_err(|e| Error::io("mapping a registered file", &e))?;
            Some(map)
        } else {
            None
        };
        self.insert(|_| {
            Ok(Region {
                addr: map.as_ref().map_or(0, |m| m.as_mut_ptr() as usize),
                len,
                kind: MemKind::File,
                segment: None,
                file: Some((file, options.sync)),
                _map: map,
                key: None,
                writable: options.writable,
                unkeyed: None,
                device: 0,
                _owned: None,
            })
        })
    }

    /// The directory and name prefix of this registry's segments.
    pub(crate) fn segments(&self) -> (&std::path::Path, &str) {
        (&self.segment_dir, &self.segment_prefix)
    }

    fn insert(&self, make: impl FnOnce(RegionId) -> Result<Region>) -> Result<RegionId> {
        // Take an entry under the lock, build the region (which may create and map a
        // segment: I/O) without it, then publish under the lock again, so the hot
        // path's readers never wait on a filesystem call.
        let id = {
            let mut table = self.write();
            let capacity = table.entries.len();
            let index = table.free.pop().ok_or(Error::RegistryFull { capacity })?;
            RegionId::from_raw(table.entries[index as usize].generation << INDEX_BITS | u64::from(index))
        };
        let region = match make(id) {
            Ok(region) => region,
            Err(e) => {
                self.write().free.push(id.index() as u32);
                return Err(e);
            }
        };
        let mut table = self.write();
        let entry = &mut table.entries[id.index()];
        entry.whole = Some(Resolved::whole(&region, id.index() as u32));
        entry.region = Some(region);
        drop(table);
        self.remote.open_entry(id.index(), id.generation());
        Ok(id)
    }

    /// Removes a registration; `Busy` while any transfer holds it.
    pub(crate) fn deregister(&self, id: RegionId) -> Result<()> {
        let mut table = self.write();
        let entry = Self::entry_mut(&mut table, id)?;
        // Acquire: pairs with `unpin`'s and `Holds::clear`'s Release, so the last
        // accesses to the region happen before it goes.
        let pins = self.pins[id.index()].load(Ordering::Acquire) + self.holds.holders_of(id.index() as u32);
        if pins > 0 {
            return Err(Error::Busy {
                what: "region",
                id: id.to_raw(),
                users: pins,
            });
        }
        if let Err(users) = self.remote.close_entry(id.index(), id.generation()) {
            return Err(Error::Busy {
                what: "region (a peer is copying)",
                id: id.to_raw(),
                users,
            });
        }
        entry.whole = None;
        let region = entry.region.take();
        entry.generation += 1;
        table.free.push(id.index() as u32);
        drop(table);
        // Unmapping and unlinking an engine-owned segment happens here, outside the lock.
        drop(region);
        Ok(())
    }

    fn entry_mut(table: &mut Table, id: RegionId) -> Result<&mut Entry> {
        match table.entries.get_mut(id.index()) {
            Some(e) if e.generation == id.generation() && e.region.is_some() => Ok(e),
            _ => Err(Error::UnknownRegion { region: id.to_raw() }),
        }
    }

    /// Holds the table's read lock to pin descriptors: one lock for all of a
    /// transfer's pins.
    pub(crate) fn pinner(&self) -> Pinner<'_> {
        Pinner {
            table: self.read(),
            pins: &self.pins,
            holds: &self.holds,
        }
    }

    /// Checks `desc` (a memory region: no file, no VRAM) against its region and pins
    /// the region. On error nothing is pinned.
    pub(crate) fn pin_memory(&self, desc: &Desc) -> Result<Resolved> {
        self.pinner().pin(desc, Allowed::Memory)
    }

    /// Holds the table's read lock so descriptors can be resolved and used without
    /// pinning: nothing can be deregistered until the returned guard is dropped.
    pub(crate) fn access(&self) -> Access<'_> {
        Access(self.read())
    }

    /// Deregisters everything (engine drop), freeing engine-owned buffers. Waits for
    /// transfers from other engines that are copying under [`access`](Registry::access).
    pub(crate) fn clear(&self) {
        let mut table = self.write();
        let Table { entries, free } = &mut *table;
        for (index, entry) in entries.iter_mut().enumerate() {
            if entry.region.is_some() {
                self.remote
                    .close_waiting(index, entry.generation, std::time::Duration::from_secs(1));
                entry.whole = None;
                entry.region = None;
                entry.generation += 1;
                free.push(index as u32);
            }
        }
    }

    /// Makes `to` hold what `from` holds (a prepared list handing its regions to a
    /// transfer), without the table's lock and without re-validation: `from` holds
    /// them throughout, so they cannot go. `to` held nothing.
    ///
    /// Why a deregistration cannot miss both: the caller keeps `from` alive (the list
    /// table's read lock) while copying, and letting `from` go later (the list table's
    /// write lock, then [`let_go`](Registry::let_go)'s Release store) comes after the
    /// copy. A scan that finds `from`'s row empty read its count with Acquire, so it
    /// then sees the copy in `to`'s row — which it reads afterwards, because lists'
    /// rows are scanned before slots' (`Holds::holders_of`).
    pub(crate) fn copy_holds(&self, from: Holder, to: Holder) {
        self.holds.copy(from, to);
    }

    /// Lets go of every region `holder` holds (its transfer's slot is being freed, or
    /// its list released). No lock: letting go early is never unsafe for the table.
    pub(crate) fn let_go(&self, holder: Holder) {
        self.holds.clear(holder);
    }

    /// Drops one pin taken by [`Registry::pin_memory`]. Takes no lock: a pin only ever
    /// keeps a region, so dropping one early is never unsafe for the table.
    pub(crate) fn unpin(&self, entry: u32) {
        if let Some(p) = self.pins.get(entry as usize) {
            // Release: the copy's accesses to the region happen before a
            // deregistration that sees the count drop (its load is Acquire).
            let before = p.fetch_sub(1, Ordering::Release);
            debug_assert!(before > 0, "unpin without pin");
        }
    }

    /// Bytes of the holds table (allocated with the registry).
    pub(crate) fn holds_bytes(&self) -> usize {
        self.holds.bytes()
    }

    /// What `f` gives for each live registration (its id and region), under the read
    /// lock (control path: it allocates the list).
    fn collect_live<T>(&self, mut f: impl FnMut(u64, &Region) -> Option<T>) -> Vec<T> {
        let table = self.read();
        table
            .entries
            .iter()
            .enumerate()
            .filter_map(|(index, e)| f(e.generation << INDEX_BITS | index as u64, e.region.as_ref()?))
            .collect()
    }

    /// (id, device address, length) of every GPU region.
    pub(crate) fn device_regions(&self) -> Vec<(u64, usize, u64)> {
        self.collect_live(|id, r| (r.kind == MemKind::Vram).then_some((id, r.addr, r.len)))
    }

    /// Every live registration peers may name, for the metadata blob. Files are
    /// reached only by their own engine, and GPU memory through the metadata only when
    /// a keying transport registered it (the cuda transport publishes its own export):
    /// those are left out.
    pub(crate) fn regions(&self) -> Vec<RegionInfo> {
        self.collect_live(|id, r| {
            (r.file.is_none() && (r.kind != MemKind::Vram || r.key.is_some())).then(|| RegionInfo {
                id,
                addr: r.addr as u64,
                len: r.len,
                kind: r.kind,
                device: r.device,
                // The local transport's key: 1 = in a shared-memory segment named after
                // the region, 0 = process memory (reached with process_vm_*).
                remote_key: u64::from(r.segment.is_some()),
            })
        })
    }

    /// (region id, remote key) of every memory region registered with the keying
    /// transport.
    pub(crate) fn keys(&self) -> Vec<(u64, u64)> {
        self.collect_live(|id, r| Some((id, r.key.as_ref()?.remote)))
    }

    /// Registers host memory with the keying transport, if the engine has one.
    fn register_key(&self, addr: usize, len: usize) -> Result<Option<Key>> {
        self.keyring.as_ref().map(|k| k.register_host(addr, len)).transpose()
    }

    /// (live registrations, pins held, open file descriptors).
    pub(crate) fn counts(&self) -> (usize, u64, usize) {
        let table = self.read();
        let live = table.entries.iter().filter(|e| e.region.is_some()).count();
        let pins = self
            .pins
            .iter()
            .map(|p| u64::from(p.load(Ordering::Relaxed)))
            .sum::<u64>()
            + self.holds.total();
        let fds = table
            .entries
            .iter()
            .filter(|e| e.region.as_ref().is_some_and(|r| r.file.is_some()))
            .count();
        (live, pins, fds)
    }

    /// Bytes of memory the engine allocated for regions (`alloc_region` segments and
    /// `alloc_vram` device memory), as opposed to memory callers registered.
    pub(crate) fn owned_bytes(&self) -> u64 {
        let table = self.read();
        table
            .entries
            .iter()
            .filter_map(|e| e.region.as_ref())
            .filter(|r| r.segment.is_some() || r._owned.is_some() && r.kind == MemKind::Vram)
            .map(|r| r.len)
            .sum()
    }

    /// Copies bytes out of a region (control path: tests and tools).
    pub(crate) fn read_bytes(&self, id: RegionId, offset: u64, out: &mut [u8]) -> Result<()> {
        let r = self.pin_memory(&Desc::new(id, offset, out.len() as u64))?;
        // SAFETY: `r` lies inside a live, pinned registration (checked by `pin`), and
        // `out` is a distinct Rust buffer, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(r.addr as *const u8, out.as_mut_ptr(), r.len) };
        self.unpin(r.entry);
        Ok(())
    }

    /// Copies bytes into a region (control path: tests and tools).
    pub(crate) fn write_bytes(&self, id: RegionId, offset: u64, data: &[u8]) -> Result<()> {
        let r = self.pin_memory(&Desc::new(id, offset, data.len() as u64))?;
        // SAFETY: as in `read_bytes`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), r.addr as *mut u8, r.len) };
        self.unpin(r.entry);
        Ok(())
    }
}
