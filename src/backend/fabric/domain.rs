//! Owned libfabric objects: the chosen provider (`fi_info`), fabric + domain, memory
//! registrations, and the endpoint with its address vector and completion queue.
//!
//! Each type closes what it opened on drop, in dependency order: an [`Mr`] and the
//! [`Endpoint`] hold an `Arc<Domain>`, so the domain (and fabric) close only after
//! the last registration and endpoint are gone. A failed `fi_close` is counted
//! ([`close_failures`]) and reported on stderr: there is no caller to return it to.

use std::ffi::{CStr, CString, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::api::{self, Api};
use super::sys;
use crate::error::{Error, Result};

static CLOSE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many `fi_close` calls failed in this process (0 unless a provider misbehaves).
pub fn close_failures() -> u64 {
    CLOSE_FAILURES.load(Ordering::Relaxed)
}

/// Closes `fid`, counting a failure.
///
/// # Safety
/// `fid` is a live object opened through `api`, closed exactly once, here.
unsafe fn close(api: &Api, what: &str, fid: *mut sys::fid) {
    // SAFETY: the caller's contract.
    let ret = unsafe { api::close(fid) };
    if ret != 0 {
        CLOSE_FAILURES.fetch_add(1, Ordering::Relaxed);
        eprintln!("ringxfer: fi_close({what}) failed: {}", api.strerror(ret as i32));
    }
}

/// The `mr_mode` bits ringxfer honours. A provider asking for another bit is not chosen.
const SUPPORTED_MR_MODE: u64 =
    (sys::FI_MR_LOCAL | sys::FI_MR_VIRT_ADDR | sys::FI_MR_ALLOCATED | sys::FI_MR_PROV_KEY) as u64;

/// Capabilities the transport needs.
const CAPS: u64 = (sys::FI_MSG
    | sys::FI_RMA
    | sys::FI_READ
    | sys::FI_WRITE
    | sys::FI_REMOTE_READ
    | sys::FI_REMOTE_WRITE
    | sys::FI_SEND
    | sys::FI_RECV) as u64
    | sys::FI_SOURCE;

/// A fabric and domain of one provider.
pub(crate) struct Domain {
    pub(crate) api: &'static Api,
    info: *mut sys::fi_info,
    fabric: *mut sys::fid_fabric,
    pub(crate) domain: *mut sys::fid_domain,
    /// The provider's name as libfabric reports it (e.g. `tcp;ofi_rxm`).
    pub(crate) provider: String,
    pub(crate) mr_mode: u64,
    /// Whether the domain was opened with `FI_HMEM`: device memory may be registered
    /// (and then be a transfer's source or target) if libfabric has the device's
    /// support built in.
    pub(crate) hmem: bool,
    /// Bytes of immediate data a write carries (`cq_data_size`).
    pub(crate) cq_data_size: usize,
    pub(crate) max_msg_size: usize,
    next_key: AtomicU64,
}

// SAFETY: the domain is opened with FI_THREAD_SAFE, so its objects may be used from
// any thread; the raw pointers are only closed in Drop (one owner).
unsafe impl Send for Domain {}
// SAFETY: as above.
unsafe impl Sync for Domain {}

impl Domain {
    /// Chooses a provider (`provider`, else the best RDM provider with RMA) and opens
    /// its fabric and domain. `node` binds to a local address (e.g. an interface's IP).
    /// With `hmem`, the same provider, fabric and domain (so the same NIC) are asked
    /// for again with `FI_HMEM` and `FI_MR_HMEM`, so GPU memory can be registered
    /// with them; if that is refused, or the domain it gives does not open, the
    /// domain is opened without it. Asking only after the choice keeps `FI_HMEM` from
    /// changing which provider or NIC is chosen.
    pub(crate) fn open(provider: Option<&str>, node: Option<&str>, hmem: bool) -> Result<Arc<Domain>> {
        let api = api::api()?;
        let info = Self::getinfo(api, provider, node, None)?;
        if hmem
            && let Ok(with_hmem) = Self::getinfo(api, provider, node, Some(info))
            && let Ok(domain) = Self::open_info(api, with_hmem)
        {
            // SAFETY: from fi_dupinfo, not used after this.
            unsafe { (api.freeinfo)(info) };
            return Ok(domain);
        }
        Self::open_info(api, info)
    }

    /// One provider's `fi_info` (fi_dupinfo'd: the caller frees it). With `hmem_like`,
    /// that `fi_info`'s provider, fabric and domain with `FI_HMEM` and `FI_MR_HMEM`.
    fn getinfo(
        api: &'static Api,
        provider: Option<&str>,
        node: Option<&str>,
        hmem_like: Option<*mut sys::fi_info>,
    ) -> Result<*mut sys::fi_info> {
        let provider_c = provider
            .map(CString::new)
            .transpose()
            .map_err(|_| Error::InvalidConfig {
                field: "fabric.provider",
                reason: "contains a NUL byte",
            })?;
        let node_c = node.map(CString::new).transpose().map_err(|_| Error::InvalidConfig {
            field: "fabric.node",
            reason: "contains a NUL byte",
        })?;
        // SAFETY: fi_dupinfo(NULL) allocates zeroed hints with their attr structs.
        let hints = unsafe { (api.dupinfo)(std::ptr::null()) };
        if hints.is_null() {
            return Err(Error::FabricUnavailable {
                reason: "fi_allocinfo failed (out of memory)".into(),
            });
        }
        // SAFETY: `hints` and its attr structs were allocated by fi_dupinfo; strings
        // put in them are strdup'd, because fi_freeinfo frees them with free().
        unsafe {
            (*hints).caps = CAPS;
            (*hints).mode = 0;
            (*(*hints).ep_attr).type_ = sys::FI_EP_RDM;
            // A transfer is DONE when its bytes are in the target's memory, not when
            // they left ours: then DONE is a promise, and a target-side failure (a
            // key deregistered meanwhile) comes back as this transfer's error.
            (*(*hints).tx_attr).op_flags = u64::from(sys::FI_DELIVERY_COMPLETE);
            let d = &mut *(*hints).domain_attr;
            d.threading = sys::FI_THREAD_SAFE;
            d.mr_mode = SUPPORTED_MR_MODE as i32;
            d.av_type = sys::FI_AV_TABLE;
            if let Some(p) = &provider_c {
                (*(*hints).fabric_attr).prov_name = libc::strdup(p.as_ptr());
            }
            if let Some(chosen) = hmem_like {
                (*hints).caps |= sys::FI_HMEM;
                d.mr_mode |= sys::FI_MR_HMEM as i32;
                // The chosen entry's names (NULL-safe strdup: a NULL stays NULL).
                let dup = |name: *mut libc::c_char| if name.is_null() { name } else { libc::strdup(name) };
                let (fa, ha) = (&*(*chosen).fabric_attr, &mut *(*hints).fabric_attr);
                libc::free(ha.prov_name.cast());
                ha.prov_name = dup(fa.prov_name);
                ha.name = dup(fa.name);
                d.name = dup((*(*chosen).domain_attr).name);
            }
        }
        let flags = if node_c.is_some() { sys::FI_SOURCE } else { 0 };
        Self::query(api, node_c.as_deref(), flags, hints).map_err(|ret| Error::FabricUnavailable {
            reason: format!(
                "no libfabric provider{} offers reliable datagram endpoints with RMA, \
                 FI_SOURCE and thread safety with mr_mode ⊆ LOCAL|VIRT_ADDR|ALLOCATED|PROV_KEY: {} \
                 (see `fi_info -l` for the providers installed)",
                provider.map(|p| format!(" named {p:?}")).unwrap_or_default(),
                api.strerror(ret)
            ),
        })
    }

    /// `fi_getinfo` with `hints` (taken and freed): the first, best entry alone
    /// (fi_dupinfo'd: the caller frees it), or libfabric's error code.
    fn query(
        api: &'static Api,
        node: Option<&CStr>,
        flags: u64,
        hints: *mut sys::fi_info,
    ) -> std::result::Result<*mut sys::fi_info, i32> {
        let mut list: *mut sys::fi_info = std::ptr::null_mut();
        // SAFETY: valid hints; `list` receives a list we free below.
        let ret = unsafe {
            (api.getinfo)(
                api::VERSION,
                node.map_or(std::ptr::null(), CStr::as_ptr),
                std::ptr::null(),
                flags,
                hints,
                &mut list,
            )
        };
        // SAFETY: hints came from fi_dupinfo.
        unsafe { (api.freeinfo)(hints) };
        if ret != 0 || list.is_null() {
            return Err(if ret == 0 { -(sys::FI_ENODATA as i32) } else { ret });
        }
        // Keep the first (best) entry alone.
        // SAFETY: `list` is a valid list; fi_dupinfo copies one entry (next = NULL).
        let info = unsafe { (api.dupinfo)(list) };
        // SAFETY: `list` came from fi_getinfo and is not used after this.
        unsafe { (api.freeinfo)(list) };
        if info.is_null() {
            return Err(-(sys::FI_ENOMEM as i32));
        }
        Ok(info)
    }

    /// Opens the fabric and domain `info` describes (taking `info`).
    fn open_info(api: &'static Api, info: *mut sys::fi_info) -> Result<Arc<Domain>> {
        // SAFETY: `info` is a complete fi_info with its attr structs.
        let (provider, mr_mode, hmem, cq_data_size, max_msg_size) = unsafe {
            let fa = &*(*info).fabric_attr;
            let name = if fa.prov_name.is_null() {
                String::from("?")
            } else {
                CStr::from_ptr(fa.prov_name).to_string_lossy().into_owned()
            };
            let d = &*(*info).domain_attr;
            let hmem = (*info).caps & sys::FI_HMEM != 0;
            (
                name,
                d.mr_mode as u64,
                hmem,
                d.cq_data_size,
                (*(*info).ep_attr).max_msg_size,
            )
        };
        let mut domain = Domain {
            api,
            info,
            fabric: std::ptr::null_mut(),
            domain: std::ptr::null_mut(),
            provider,
            mr_mode,
            hmem,
            cq_data_size,
            max_msg_size: max_msg_size.clamp(4096, 1 << 30),
            next_key: AtomicU64::new(1),
        };
        // SAFETY: the attr struct belongs to `info`; `fabric` receives the new object
        // (closed by Drop).
        let ret = unsafe { (api.fabric)((*info).fabric_attr, &mut domain.fabric, std::ptr::null_mut()) } as isize;
        if ret != 0 {
            return Err(api.error("fi_fabric", ret));
        }
        // SAFETY: live fabric; `info` describes its domain; closed by Drop.
        let ret = unsafe { api::domain(domain.fabric, info, &mut domain.domain) };
        if ret != 0 {
            return Err(api.error("fi_domain", ret));
        }
        if domain.cq_data_size < 4 {
            return Err(Error::FabricUnavailable {
                reason: format!(
                    "provider {} carries {} bytes of immediate data; ringxfer needs at least 4",
                    domain.provider, domain.cq_data_size
                ),
            });
        }
        Ok(Arc::new(domain))
    }

    /// The `fi_info` the domain was opened with.
    pub(crate) fn info(&self) -> *mut sys::fi_info {
        self.info
    }

    /// What a registration allows: local use, and remote read and write.
    const ACCESS: u64 =
        (sys::FI_SEND | sys::FI_RECV | sys::FI_READ | sys::FI_WRITE | sys::FI_REMOTE_READ | sys::FI_REMOTE_WRITE)
            as u64;

    /// Whether remote addresses are virtual addresses (else offsets in the region).
    pub(crate) fn virt_addr(&self) -> bool {
        self.mr_mode & u64::from(sys::FI_MR_VIRT_ADDR) != 0
    }

    /// `fi_trywait` on `cq`: whether it is safe to block on its wait object now.
    pub(crate) fn trywait(&self, cq: *mut sys::fid_cq) -> bool {
        // SAFETY: live fabric; `cq` is a live CQ of this fabric's domain.
        unsafe { api::trywait(self.fabric, cq) == 0 }
    }

    /// Registers `len` bytes at `addr` for local use and remote read and write.
    pub(crate) fn register(self: &Arc<Domain>, addr: usize, len: usize) -> Result<Mr> {
        let access = Self::ACCESS;
        let requested_key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let mut mr: *mut sys::fid_mr = std::ptr::null_mut();
        // SAFETY: live domain; the caller keeps the memory registered while the Mr lives.
        let ret = unsafe { api::mr_reg(self.domain, addr as *const c_void, len, access, requested_key, &mut mr) };
        self.adopt_mr("fi_mr_reg", ret, mr)
    }

    /// Registers `len` bytes of CUDA device memory at `dev_ptr` on device `device`
    /// (`fi_mr_regattr` with `FI_HMEM_CUDA`) for local use and remote read and write.
    /// Refused when the domain has no `FI_HMEM`; libfabric itself refuses it when it
    /// was built without CUDA support.
    pub(crate) fn register_cuda(self: &Arc<Domain>, dev_ptr: u64, len: usize, device: i32) -> Result<Mr> {
        if !self.hmem {
            return Err(Error::FabricUnavailable {
                reason: format!("provider {} does not offer FI_HMEM (device memory)", self.provider),
            });
        }
        let iov = libc::iovec {
            iov_base: dev_ptr as *mut c_void,
            iov_len: len,
        };
        let attr = sys::fi_mr_attr {
            mr_iov: (&raw const iov).cast(),
            iov_count: 1,
            access: Self::ACCESS,
            offset: 0,
            requested_key: self.next_key.fetch_add(1, Ordering::Relaxed),
            context: std::ptr::null_mut(),
            auth_key_size: 0,
            auth_key: std::ptr::null_mut(),
            iface: sys::FI_HMEM_CUDA,
            device: sys::fi_mr_attr__bindgen_ty_1 { cuda: device },
        };
        let mut mr: *mut sys::fid_mr = std::ptr::null_mut();
        // SAFETY: live domain; `attr` and the iovec it points to outlive the call; the
        // caller keeps the device memory allocated while the Mr lives.
        let ret = unsafe { api::mr_regattr(self.domain, &attr, &mut mr) };
        self.adopt_mr("fi_mr_regattr(FI_HMEM_CUDA)", ret, mr)
    }

    /// The owned `Mr` of a registration call `what` that returned `ret` and `mr`.
    fn adopt_mr(self: &Arc<Domain>, what: &'static str, ret: isize, mr: *mut sys::fid_mr) -> Result<Mr> {
        if ret != 0 || mr.is_null() {
            return Err(self.api.error(what, ret));
        }
        // SAFETY: a registered MR; mem_desc and key are plain fields (fi_mr_desc,
        // fi_mr_key).
        let (desc, key) = unsafe { ((*mr).mem_desc as usize, (*mr).key) };
        Ok(Mr {
            domain: Arc::clone(self),
            mr,
            desc,
            key,
        })
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // SAFETY: opened in `open`, closed once here (children hold an Arc, so they are
        // gone); the info was fi_dupinfo'd.
        unsafe {
            if !self.domain.is_null() {
                close(self.api, "domain", &raw mut (*self.domain).fid);
            }
            if !self.fabric.is_null() {
                close(self.api, "fabric", &raw mut (*self.fabric).fid);
            }
            (self.api.freeinfo)(self.info);
        }
    }
}

/// A memory registration: its local descriptor and remote key. Closed on drop.
pub(crate) struct Mr {
    domain: Arc<Domain>,
    mr: *mut sys::fid_mr,
    /// `fi_mr_desc`: passed with local buffers (needed under `FI_MR_LOCAL`).
    pub(crate) desc: usize,
    /// `fi_mr_key`: what a peer names this region with.
    pub(crate) key: u64,
}

// SAFETY: an MR of a FI_THREAD_SAFE domain; closed only in Drop.
unsafe impl Send for Mr {}
// SAFETY: as above; shared access only reads `desc` and `key`.
unsafe impl Sync for Mr {}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: opened by `register`, closed once here, before the domain (we hold it).
        unsafe { close(self.domain.api, "mr", &raw mut (*self.mr).fid) };
    }
}

/// An RDM endpoint bound to its own address vector and completion queue.
pub(crate) struct Endpoint {
    pub(crate) ep: *mut sys::fid_ep,
    pub(crate) av: *mut sys::fid_av,
    pub(crate) cq: *mut sys::fid_cq,
    /// This endpoint's address (`fi_getname`), what peers insert in their AV.
    pub(crate) name: Vec<u8>,
    pub(crate) domain: Arc<Domain>,
    /// The CQ's wait object (`FI_WAIT_FD`): a descriptor that polls readable when the
    /// provider has something to progress (its sockets, its signals).
    pub(crate) wait_fd: Option<std::os::fd::RawFd>,
}

// SAFETY: objects of a FI_THREAD_SAFE domain; closed only in Drop.
unsafe impl Send for Endpoint {}
// SAFETY: as above.
unsafe impl Sync for Endpoint {}

impl Endpoint {
    /// Opens the endpoint, an AV of `av_count` entries and a CQ of `cq_size` entries.
    /// `name`, if given, is set as the endpoint's name before it is enabled (see
    /// `Fabric::open`: the shm provider's region is named after it). With `wait`, the
    /// CQ is asked for a wait descriptor (`FI_WAIT_FD`), and opened without one if the
    /// provider has none (`wait_fd` says which).
    pub(crate) fn open(
        domain: &Arc<Domain>,
        av_count: usize,
        cq_size: usize,
        name: Option<&CStr>,
        wait: bool,
    ) -> Result<Endpoint> {
        let api = domain.api;
        let mut e = Endpoint {
            ep: std::ptr::null_mut(),
            av: std::ptr::null_mut(),
            cq: std::ptr::null_mut(),
            name: Vec::new(),
            domain: Arc::clone(domain),
            wait_fd: None,
        };
        // SAFETY: zeroed attrs are valid "defaults" for every field not set.
        let mut av_attr: sys::fi_av_attr = unsafe { std::mem::zeroed() };
        av_attr.type_ = sys::FI_AV_TABLE;
        av_attr.count = av_count;
        // SAFETY: live domain; `e.av` is closed by Drop.
        let ret = unsafe { api::av_open(domain.domain, &mut av_attr, &mut e.av) };
        if ret != 0 {
            return Err(api.error("fi_av_open", ret));
        }
        // SAFETY: as above.
        let mut cq_attr: sys::fi_cq_attr = unsafe { std::mem::zeroed() };
        cq_attr.format = sys::FI_CQ_FORMAT_DATA;
        cq_attr.size = cq_size;
        if wait {
            cq_attr.wait_obj = sys::FI_WAIT_FD;
        }
        // SAFETY: live domain; `e.cq` is closed by Drop.
        let mut ret = unsafe { api::cq_open(domain.domain, &mut cq_attr, &mut e.cq) };
        if ret != 0 && wait {
            // No wait descriptors with this provider: a CQ without one.
            e.cq = std::ptr::null_mut();
            cq_attr.wait_obj = sys::FI_WAIT_NONE;
            // SAFETY: as above.
            ret = unsafe { api::cq_open(domain.domain, &mut cq_attr, &mut e.cq) };
        }
        if ret != 0 {
            return Err(api.error("fi_cq_open", ret));
        }
        if cq_attr.wait_obj == sys::FI_WAIT_FD {
            let mut fd: std::ffi::c_int = -1;
            // SAFETY: a live CQ opened with FI_WAIT_FD; `fd` is a c_int.
            let got = unsafe { api::cq_wait_fd(e.cq, &mut fd) };
            e.wait_fd = (got == 0 && fd >= 0).then_some(fd);
        }
        // SAFETY: live domain and info; `e.ep` is closed by Drop.
        let ret = unsafe { api::endpoint(domain.domain, domain.info(), &mut e.ep) };
        if ret != 0 {
            return Err(api.error("fi_endpoint", ret));
        }
        // SAFETY: live endpoint, AV and CQ of the same domain.
        let ret = unsafe { api::ep_bind(e.ep, &raw mut (*e.av).fid, 0) };
        if ret != 0 {
            return Err(api.error("fi_ep_bind(av)", ret));
        }
        // SAFETY: as above.
        let ret = unsafe { api::ep_bind(e.ep, &raw mut (*e.cq).fid, (sys::FI_TRANSMIT | sys::FI_RECV) as u64) };
        if ret != 0 {
            return Err(api.error("fi_ep_bind(cq)", ret));
        }
        if let Some(name) = name {
            let bytes = name.to_bytes_with_nul();
            // SAFETY: a bound endpoint not yet enabled; the provider copies the name.
            let ret = unsafe { api::setname(e.ep, bytes.as_ptr().cast_mut().cast(), bytes.len()) };
            if ret != 0 {
                return Err(api.error("fi_setname", ret));
            }
        }
        // SAFETY: bound endpoint.
        let ret = unsafe { api::enable(e.ep) };
        if ret != 0 {
            return Err(api.error("fi_enable", ret));
        }
        let mut name = vec![0u8; 256];
        let mut len = name.len();
        // SAFETY: enabled endpoint; `name` has `len` bytes.
        let ret = unsafe { api::getname(e.ep, name.as_mut_ptr().cast(), &mut len) };
        if ret != 0 {
            return Err(api.error("fi_getname", ret));
        }
        name.truncate(len);
        e.name = name;
        Ok(e)
    }

    /// Inserts a peer's address; its `fi_addr_t`.
    pub(crate) fn insert(&self, addr: &[u8]) -> Result<sys::fi_addr_t> {
        let mut out: sys::fi_addr_t = api::FI_ADDR_NOTAVAIL;
        // SAFETY: live AV; `addr` is an address of this provider's format (from the
        // peer's fi_getname; the provider rejects one it cannot parse).
        let ret = unsafe { api::av_insert(self.av, addr.as_ptr().cast(), &mut out) };
        if ret != 1 {
            return Err(self.domain.api.error("fi_av_insert", if ret == 0 { -22 } else { ret }));
        }
        Ok(out)
    }

    /// Removes an address from the AV (its connection state goes with it).
    pub(crate) fn remove(&self, mut addr: sys::fi_addr_t) -> Result<()> {
        // SAFETY: live AV; `addr` came from `insert`.
        let ret = unsafe { api::av_remove(self.av, &mut addr) };
        if ret != 0 {
            return Err(self.domain.api.error("fi_av_remove", ret));
        }
        Ok(())
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let api = self.domain.api;
        // SAFETY: each opened in `open` (or null if it failed before), closed once,
        // the endpoint before what it is bound to.
        unsafe {
            if !self.ep.is_null() {
                close(api, "endpoint", &raw mut (*self.ep).fid);
            }
            if !self.av.is_null() {
                close(api, "av", &raw mut (*self.av).fid);
            }
            if !self.cq.is_null() {
                close(api, "cq", &raw mut (*self.cq).fid);
            }
        }
    }
}
