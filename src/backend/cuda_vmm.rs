//! GPU memory through the CUDA virtual memory management API, for sharing it with
//! other processes on the node as a file descriptor (`CudaConfig::vmm`).
//!
//! - **Allocate** (`alloc_vram` with `vmm`): `cuMemCreate` asking for a POSIX file
//!   descriptor handle, an address range (`cuMemAddressReserve`), `cuMemMap`, and
//!   read-write access for this engine's device. The allocation is exported once
//!   (`cuMemExportToShareableHandle`): the descriptor belongs to the region, listed in
//!   the transport's exports while it lives, and is closed with it.
//! - **Import** (a peer's `load_peer`, control path): the descriptor is fetched from
//!   the exporting process with `pidfd_getfd` (the kernel allows it only with ptrace
//!   rights over that process), imported (`cuMemImportFromShareableHandle`), and
//!   mapped with access for this engine's device; undone when the mapping goes.
//!
//! Nothing here runs on the hot path.

// Unsafe code: the CUDA driver's VMM calls and pidfds (the crate root denies it elsewhere).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use cudarc::driver::sys;

use super::cuda::Cuda;
use super::cuda::check;
use crate::error::{Error, Result};

/// Pinned device memory on `device`, shareable as a POSIX file descriptor.
fn properties(device: i32) -> sys::CUmemAllocationProp {
    // SAFETY: a plain C struct; all-zero is its documented default.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.requestedHandleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    prop.location = sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id: device,
    };
    prop
}

/// Maps `handle` over a new address range of `size` bytes with read-write access for
/// `device`; the range's start.
///
/// # Safety
/// The context is current; `handle` is a live allocation of at least `size` bytes.
unsafe fn map(handle: sys::CUmemGenericAllocationHandle, size: usize, device: i32) -> Result<u64> {
    let mut ptr = 0;
    // SAFETY: a valid out-pointer.
    let reserved = unsafe { sys::cuMemAddressReserve(&mut ptr, size, 0, 0, 0) };
    check(reserved, "cuMemAddressReserve")?;
    // SAFETY: the range was just reserved with this size; `handle` per the contract.
    let mapped = check(unsafe { sys::cuMemMap(ptr, size, 0, handle, 0) }, "cuMemMap");
    let access = sys::CUmemAccessDesc {
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: device,
        },
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    // SAFETY: one valid descriptor, over the range just mapped.
    let accessible =
        mapped.and_then(|()| check(unsafe { sys::cuMemSetAccess(ptr, size, &access, 1) }, "cuMemSetAccess"));
    if let Err(e) = accessible {
        // SAFETY: undoes what succeeded above (an unmap of an unmapped range fails
        // harmlessly).
        unsafe {
            let _ = sys::cuMemUnmap(ptr, size);
            let _ = sys::cuMemAddressFree(ptr, size);
        }
        return Err(e);
    }
    Ok(ptr)
}

/// Unmaps and frees a range from [`map`].
///
/// # Safety
/// The context is current; no copy uses the range; called once per range.
unsafe fn unmap(ptr: u64, size: usize) {
    // SAFETY: per the contract.
    unsafe {
        let _ = sys::cuMemUnmap(ptr, size);
        let _ = sys::cuMemAddressFree(ptr, size);
    }
}

/// One allocation's exported descriptor, listed in the transport's `vmm_exports`
/// (published to peers) while it lives; withdrawn and closed when dropped.
pub(crate) struct Export {
    cuda: Arc<Cuda>,
    serial: u64,
    /// The descriptor peers fetch.
    _fd: OwnedFd,
}

impl Export {
    /// Lists `fd`, the export of the allocation mapped at `base` for `size` bytes.
    fn new(cuda: &Arc<Cuda>, base: u64, size: u64, fd: OwnedFd) -> Export {
        let mut exports = cuda.vmm_exports.lock().unwrap_or_else(|e| e.into_inner());
        let serial = cuda.vmm_serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        exports.push((base, size, fd.as_raw_fd(), serial));
        drop(exports);
        Export {
            cuda: Arc::clone(cuda),
            serial,
            _fd: fd,
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        let mut exports = self.cuda.vmm_exports.lock().unwrap_or_else(|e| e.into_inner());
        exports.retain(|&(.., serial)| serial != self.serial);
    }
}

/// Exports `handle` as a POSIX file descriptor.
///
/// # Safety
/// The context is current; `handle` is live.
unsafe fn export_fd(handle: sys::CUmemGenericAllocationHandle) -> Result<OwnedFd> {
    let mut raw_fd: i32 = -1;
    // SAFETY: per the contract; the out-pointer holds an int.
    let r = unsafe {
        sys::cuMemExportToShareableHandle(
            (&mut raw_fd as *mut i32).cast(),
            handle,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            0,
        )
    };
    check(r, "cuMemExportToShareableHandle")?;
    if raw_fd < 0 {
        return Err(Error::Cuda {
            what: "cuMemExportToShareableHandle",
            code: 0,
        });
    }
    // SAFETY: the driver returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw_fd) })
}

/// An `alloc_vram` allocation made with the VMM API: its export withdrawn and
/// closed, and the memory unmapped and freed, when its region goes.
pub(crate) struct VmmAlloc {
    pub(crate) ptr: u64,
    size: usize,
    /// Dropped after `drop` below: the listing outlives the mapping by a moment,
    /// harmlessly (the region is already deregistered, so nothing publishes it).
    export: Export,
}

impl VmmAlloc {
    /// Allocates at least `len` bytes (rounded up to the allocation granularity).
    pub(crate) fn new(cuda: &Arc<Cuda>, len: usize) -> Result<VmmAlloc> {
        cuda.make_current()?;
        let device = cuda.device() as i32;
        let prop = properties(device);
        let mut granularity = 0;
        let minimum = sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM;
        // SAFETY: valid pointers.
        let r = unsafe { sys::cuMemGetAllocationGranularity(&mut granularity, &prop, minimum) };
        check(r, "cuMemGetAllocationGranularity")?;
        let size = len.next_multiple_of(granularity.max(1));
        let mut handle = 0;
        // SAFETY: valid pointers; released below (the mapping keeps the memory).
        check(unsafe { sys::cuMemCreate(&mut handle, size, &prop, 0) }, "cuMemCreate")?;
        // SAFETY: the context is current and `handle` live.
        let fd = unsafe { export_fd(handle) };
        let mapped = match &fd {
            // SAFETY: as above.
            Ok(_) => unsafe { map(handle, size, device) },
            Err(e) => Err(e.clone()),
        };
        // SAFETY: our handle, released once; a mapping holds the memory from here.
        let _ = unsafe { sys::cuMemRelease(handle) };
        let ptr = mapped?;
        let fd = fd?;
        Ok(VmmAlloc {
            ptr,
            size,
            export: Export::new(cuda, ptr, size as u64, fd),
        })
    }
}

impl Drop for VmmAlloc {
    fn drop(&mut self) {
        if self.export.cuda.make_current().is_ok() {
            // SAFETY: made by `new`, unmapped once; the transport's quiesce drained
            // the copies before regions go.
            unsafe { unmap(self.ptr, self.size) };
        }
    }
}

/// The export of GPU memory the caller allocated with the VMM API and registers
/// (`register_vram`) at `ptr` for `len` bytes: the allocation holding it (as mapped
/// here, from `cuMemGetAddressRange`) exported as a descriptor, withdrawn when the
/// region goes. `None`, and the region is not exported this way, where the memory is
/// not a VMM allocation (`cuMemAlloc` memory is exported by IPC handle at publish),
/// was not created shareable as a POSIX file descriptor, or the range runs past the
/// allocation (a range over several allocations cannot be mapped as one elsewhere).
pub(crate) fn export_caller_memory(cuda: &Arc<Cuda>, ptr: u64, len: u64) -> Result<Option<Export>> {
    cuda.make_current()?;
    let mut handle = 0;
    // SAFETY: a valid out-pointer; the driver checks `ptr` (and fails for memory
    // that is not a VMM mapping).
    let r = unsafe { sys::cuMemRetainAllocationHandle(&mut handle, ptr as *mut std::ffi::c_void) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Ok(None);
    }
    // SAFETY: a plain C struct the driver fills; `handle` was just retained.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; `handle` is live.
    let props = check(
        unsafe { sys::cuMemGetAllocationPropertiesFromHandle(&mut prop, handle) },
        "cuMemGetAllocationPropertiesFromHandle",
    );
    let fd_type = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR.0;
    // A bit set: the handle types the allocation was created shareable as.
    let shareable = props.map(|()| prop.requestedHandleTypes.0 & fd_type != 0);
    let (mut base, mut size) = (0, 0);
    // SAFETY: valid out-pointers; the driver checks `ptr`.
    let range = unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr) };
    let inside = range == sys::CUresult::CUDA_SUCCESS
        && ptr >= base
        && (ptr - base).checked_add(len).is_some_and(|end| end <= size as u64);
    let fd = match shareable {
        // SAFETY: the context is current and `handle` live.
        Ok(true) if inside => unsafe { export_fd(handle) }.map(Some),
        Ok(_) => Ok(None),
        Err(e) => Err(e),
    };
    // SAFETY: retained above, released once.
    let _ = unsafe { sys::cuMemRelease(handle) };
    Ok(fd?.map(|fd| Export::new(cuda, base, size as u64, fd)))
}

/// The VMM export holding `addr`: (allocation start, its size, the descriptor number
/// in this process, the export's serial).
pub(crate) fn exported(cuda: &Cuda, addr: u64) -> Option<(u64, u64, i32, u64)> {
    let exports = cuda.vmm_exports.lock().unwrap_or_else(|e| e.into_inner());
    exports
        .iter()
        .find(|&&(base, size, ..)| addr >= base && addr - base < size)
        .copied()
}

/// A peer's VMM allocation mapped here; unmapped when dropped.
pub(crate) struct Imported {
    pub(crate) base: u64,
    size: usize,
}

impl Imported {
    /// Fetches descriptor `fd` of process `pid` and maps the `size` bytes of the
    /// allocation it shares; the error says why in words.
    pub(crate) fn open(cuda: &Cuda, pid: u32, fd: i32, size: u64) -> std::result::Result<Imported, String> {
        let size = usize::try_from(size).map_err(|_| "its VMM export is out of range".to_owned())?;
        let local = fetch_fd(pid, fd)?;
        cuda.make_current().map_err(|e| e.to_string())?;
        let mut handle = 0;
        // SAFETY: a valid out-pointer; the driver reads the descriptor (passed by
        // value in the pointer argument, as the API says) and does not keep it.
        let r = unsafe {
            sys::cuMemImportFromShareableHandle(
                &mut handle,
                local.as_raw_fd() as isize as *mut std::ffi::c_void,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(format!(
                "cuMemImportFromShareableHandle of one of its GPU regions failed: {r:?}"
            ));
        }
        // SAFETY: the context is current and `handle` live.
        let mapped = unsafe { map(handle, size, cuda.device() as i32) };
        // SAFETY: our handle, released once; the mapping holds the memory.
        let _ = unsafe { sys::cuMemRelease(handle) };
        let base = mapped.map_err(|e| format!("mapping one of its GPU regions failed: {e}"))?;
        Ok(Imported { base, size })
    }

    /// Unmaps (the context is current; no copy uses the range).
    pub(crate) fn close(&self) {
        // SAFETY: mapped by `open`; the caller (the mapping's drop) calls this once,
        // after every transfer holding the peer's link ended.
        unsafe { unmap(self.base, self.size) };
    }
}

/// A duplicate, in this process, of descriptor `fd` of process `pid`.
fn fetch_fd(pid: u32, fd: i32) -> std::result::Result<OwnedFd, String> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(format!(
            "pidfd_open of its process failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and
    // flags, and returns a new fd here or -1.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "pidfd_getfd of its GPU allocation's descriptor failed: {e} (it needs ptrace rights over the \
             exporting process: the same user, and Yama's ptrace_scope 0 or the exporter's PR_SET_PTRACER)"
        ));
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}
