//! libfabric loaded at run time, and its `static inline` calls as ops-table calls.
//!
//! `libfabric.so.1` exports only a handful of functions (`fi_getinfo`, `fi_fabric`,
//! …); everything else in `rdma/*.h` is a `static inline` that jumps through the ops
//! table of the object it is given. The functions here do the same jumps, so a call
//! compiles to what the C inline compiles to. Every one is `unsafe`: its pointers must
//! be live objects of the kind its name says, opened by the same library.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use super::sys;
use crate::error::{Error, Result};

/// The API version ringxfer asks for: 1.9, which every provider it uses supports.
pub(crate) const VERSION: u32 = 1 << 16 | 9;

/// The library's exported functions, resolved once.
pub(crate) struct Api {
    pub(crate) getinfo: unsafe extern "C" fn(
        u32,
        *const c_char,
        *const c_char,
        u64,
        *const sys::fi_info,
        *mut *mut sys::fi_info,
    ) -> c_int,
    pub(crate) freeinfo: unsafe extern "C" fn(*mut sys::fi_info),
    pub(crate) dupinfo: unsafe extern "C" fn(*const sys::fi_info) -> *mut sys::fi_info,
    pub(crate) fabric: unsafe extern "C" fn(*mut sys::fi_fabric_attr, *mut *mut sys::fid_fabric, *mut c_void) -> c_int,
    strerror: unsafe extern "C" fn(c_int) -> *const c_char,
    /// Kept loaded for the life of the process: the pointers above point into it.
    _library: libloading::Library,
}

static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

/// The environment variable naming the library to load instead of `libfabric.so.1`.
pub const LIBRARY_ENV: &str = "RINGXFER_LIBFABRIC";

const INSTALL_HINT: &str = "install libfabric (Debian/Ubuntu: apt-get install libfabric1; \
     RHEL: dnf install libfabric), or set RINGXFER_LIBFABRIC to the library's path \
     (AWS EFA: /opt/amazon/efa/lib/libfabric.so.1)";

/// Loads libfabric (once per process) or says why it cannot.
pub(crate) fn api() -> Result<&'static Api> {
    API.get_or_init(load)
        .as_ref()
        .map_err(|reason| Error::FabricUnavailable { reason: reason.clone() })
}

fn load() -> std::result::Result<Api, String> {
    let path = std::env::var_os(LIBRARY_ENV).unwrap_or_else(|| "libfabric.so.1".into());
    // SAFETY: loading libfabric runs its constructors, which only initialise its own
    // state; the library is never unloaded (kept in a static).
    let library = unsafe { libloading::Library::new(&path) }
        .map_err(|e| format!("cannot load {}: {e}; {INSTALL_HINT}", path.to_string_lossy()))?;
    macro_rules! symbol {
        ($name:literal) => {
            // SAFETY: the symbol's type is its prototype in rdma/fabric.h (1.x ABI),
            // and the library stays loaded as long as the pointer is used.
            *unsafe { library.get($name) }.map_err(|e| {
                format!(
                    "{} has no {}: {e}; {INSTALL_HINT}",
                    path.to_string_lossy(),
                    String::from_utf8_lossy(&$name[..$name.len() - 1])
                )
            })?
        };
    }
    let api = Api {
        getinfo: symbol!(b"fi_getinfo\0"),
        freeinfo: symbol!(b"fi_freeinfo\0"),
        dupinfo: symbol!(b"fi_dupinfo\0"),
        fabric: symbol!(b"fi_fabric\0"),
        strerror: symbol!(b"fi_strerror\0"),
        _library: library,
    };
    Ok(api)
}

impl Api {
    /// libfabric's message for a (positive) error number.
    pub(crate) fn strerror(&self, code: i32) -> String {
        // SAFETY: fi_strerror returns a static string for any number.
        let s = unsafe { (self.strerror)(code.abs()) };
        if s.is_null() {
            return format!("libfabric error {code}");
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }

    /// An error for a failed control-path call.
    pub(crate) fn error(&self, what: &'static str, ret: isize) -> Error {
        Error::Fabric {
            what,
            code: ret.unsigned_abs() as i32,
            message: self.strerror(ret as i32),
        }
    }
}

/// `-FI_EAGAIN` as the data-path calls return it.
pub(crate) const EAGAIN: isize = -(sys::FI_EAGAIN as isize);

// ----- the headers' static inline functions -----
//
// SAFETY (for every function below): the caller passes live objects of the named kind
// opened through `api()`; their ops tables are the provider's and stay valid until
// the object is closed. A missing entry (a provider that does not implement the call)
// reads as -FI_ENOSYS, as the headers' own checks do.

const ENOSYS: isize = -(sys::FI_ENOSYS as isize);

macro_rules! call {
    ($table:expr, $entry:ident ( $($arg:expr),* $(,)? )) => {
        match (*$table).$entry {
            Some(f) => f($($arg),*) as isize,
            None => ENOSYS,
        }
    };
}

/// `fi_close`.
pub(crate) unsafe fn close(fid: *mut sys::fid) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*fid).ops, close(fid)) }
}

/// `fi_domain`.
pub(crate) unsafe fn domain(
    fabric: *mut sys::fid_fabric,
    info: *mut sys::fi_info,
    out: *mut *mut sys::fid_domain,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*fabric).ops, domain(fabric, info, out, std::ptr::null_mut())) }
}

/// `fi_endpoint`.
pub(crate) unsafe fn endpoint(
    domain: *mut sys::fid_domain,
    info: *mut sys::fi_info,
    out: *mut *mut sys::fid_ep,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*domain).ops, endpoint(domain, info, out, std::ptr::null_mut())) }
}

/// `fi_av_open`.
pub(crate) unsafe fn av_open(
    domain: *mut sys::fid_domain,
    attr: *mut sys::fi_av_attr,
    out: *mut *mut sys::fid_av,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*domain).ops, av_open(domain, attr, out, std::ptr::null_mut())) }
}

/// `fi_cq_open`.
pub(crate) unsafe fn cq_open(
    domain: *mut sys::fid_domain,
    attr: *mut sys::fi_cq_attr,
    out: *mut *mut sys::fid_cq,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*domain).ops, cq_open(domain, attr, out, std::ptr::null_mut())) }
}

/// `fi_ep_bind`.
pub(crate) unsafe fn ep_bind(ep: *mut sys::fid_ep, what: *mut sys::fid, flags: u64) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*ep).fid.ops, bind(&raw mut (*ep).fid, what, flags)) }
}

/// `fi_enable`.
pub(crate) unsafe fn enable(ep: *mut sys::fid_ep) -> isize {
    // SAFETY: see the block comment above.
    unsafe {
        call!(
            (*ep).fid.ops,
            control(&raw mut (*ep).fid, sys::FI_ENABLE as c_int, std::ptr::null_mut())
        )
    }
}

/// `fi_getname`.
pub(crate) unsafe fn getname(ep: *mut sys::fid_ep, addr: *mut c_void, len: *mut usize) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*ep).cm, getname(&raw mut (*ep).fid, addr, len)) }
}

/// `fi_setname`.
pub(crate) unsafe fn setname(ep: *mut sys::fid_ep, addr: *mut c_void, len: usize) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*ep).cm, setname(&raw mut (*ep).fid, addr, len)) }
}

/// `fi_av_insert` of one address.
pub(crate) unsafe fn av_insert(av: *mut sys::fid_av, addr: *const c_void, out: *mut sys::fi_addr_t) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*av).ops, insert(av, addr, 1, out, 0, std::ptr::null_mut())) }
}

/// `fi_av_remove` of one address.
pub(crate) unsafe fn av_remove(av: *mut sys::fid_av, addr: *mut sys::fi_addr_t) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*av).ops, remove(av, addr, 1, 0)) }
}

/// `fi_mr_reg`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mr_reg(
    domain: *mut sys::fid_domain,
    buf: *const c_void,
    len: usize,
    access: u64,
    requested_key: u64,
    out: *mut *mut sys::fid_mr,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe {
        call!(
            (*domain).mr,
            reg(
                &raw mut (*domain).fid,
                buf,
                len,
                access,
                0,
                requested_key,
                0,
                out,
                std::ptr::null_mut()
            )
        )
    }
}

/// `fi_mr_regattr`.
pub(crate) unsafe fn mr_regattr(
    domain: *mut sys::fid_domain,
    attr: *const sys::fi_mr_attr,
    out: *mut *mut sys::fid_mr,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*domain).mr, regattr(&raw mut (*domain).fid, attr, 0, out)) }
}

/// `fi_writedata`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn writedata(
    ep: *mut sys::fid_ep,
    buf: *const c_void,
    len: usize,
    desc: *mut c_void,
    data: u64,
    dest: sys::fi_addr_t,
    addr: u64,
    key: u64,
    context: *mut c_void,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*ep).rma, writedata(ep, buf, len, desc, data, dest, addr, key, context)) }
}

/// `fi_read`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn read(
    ep: *mut sys::fid_ep,
    buf: *mut c_void,
    len: usize,
    desc: *mut c_void,
    src: sys::fi_addr_t,
    addr: u64,
    key: u64,
    context: *mut c_void,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*ep).rma, read(ep, buf, len, desc, src, addr, key, context)) }
}

/// `fi_send`.
pub(crate) unsafe fn send(
    ep: *mut sys::fid_ep,
    buf: *const c_void,
    len: usize,
    desc: *mut c_void,
    dest: sys::fi_addr_t,
    context: *mut c_void,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*ep).msg, send(ep, buf, len, desc, dest, context)) }
}

/// `fi_recv`.
pub(crate) unsafe fn recv(
    ep: *mut sys::fid_ep,
    buf: *mut c_void,
    len: usize,
    desc: *mut c_void,
    context: *mut c_void,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*ep).msg, recv(ep, buf, len, desc, FI_ADDR_UNSPEC, context)) }
}

/// `fi_cq_readfrom`.
pub(crate) unsafe fn cq_readfrom(
    cq: *mut sys::fid_cq,
    buf: *mut sys::fi_cq_data_entry,
    count: usize,
    src: *mut sys::fi_addr_t,
) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*cq).ops, readfrom(cq, buf.cast(), count, src)) }
}

/// `fi_control(FI_GETWAIT)` of a CQ opened with `FI_WAIT_FD`: the file descriptor to
/// poll (written to `fd`).
pub(crate) unsafe fn cq_wait_fd(cq: *mut sys::fid_cq, fd: *mut c_int) -> isize {
    // SAFETY: see the block comment above.
    unsafe {
        call!(
            (*cq).fid.ops,
            control(&raw mut (*cq).fid, sys::FI_GETWAIT as c_int, fd.cast())
        )
    }
}

/// `fi_trywait` of one CQ: 0 when it is safe to block on its wait object (nothing
/// completed or pending that progress would find first).
pub(crate) unsafe fn trywait(fabric: *mut sys::fid_fabric, cq: *mut sys::fid_cq) -> isize {
    // SAFETY: see the block comment above (`cq` is a live CQ).
    unsafe {
        let mut fid = &raw mut (*cq).fid;
        call!((*fabric).ops, trywait(fabric, &mut fid, 1))
    }
}

/// `fi_cq_signal`: makes the CQ's wait descriptor readable, waking a thread that
/// polls it.
pub(crate) unsafe fn cq_signal(cq: *mut sys::fid_cq) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*cq).ops, signal(cq)) }
}

/// `fi_cq_readerr`.
pub(crate) unsafe fn cq_readerr(cq: *mut sys::fid_cq, buf: *mut sys::fi_cq_err_entry) -> isize {
    // SAFETY: see the block comment above.
    unsafe { call!((*cq).ops, readerr(cq, buf, 0)) }
}

/// `FI_ADDR_UNSPEC`.
pub(crate) const FI_ADDR_UNSPEC: sys::fi_addr_t = u64::MAX;
/// `FI_ADDR_NOTAVAIL`.
pub(crate) const FI_ADDR_NOTAVAIL: sys::fi_addr_t = u64::MAX;
