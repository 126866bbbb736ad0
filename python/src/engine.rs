//! `ringxfer._native.Engine`, `Transfer` and `MetadataServer`: the engine's API with
//! Python types. Handles, regions, peers and lists are ints (their raw values);
//! descriptors are `(region, offset, length)` tuples; statuses are the strings
//! `"RESERVED"`, `"POSTED"`, `"DONE"`, `"FAILED"`, `"CANCELLED"`.
//!
//! The hot-path calls (`prepare`, `post`, `status`, `wait`, `cancel`, `release`,
//! `post_list`, `notify`, `pop_notification`) allocate nothing on the Rust side:
//! descriptors are read into per-thread vectors that keep their capacity, and the
//! strings they return are interned. `wait`, `wait_any`, `fetch_peer` and
//! `shutdown` release the GIL.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};
use ringxfer::{CancelResult, Completion, Desc, Handle, ListId, Op, PeerId, RegionId, SenderId, Status};

use crate::config::{config, seconds, type_name};
use crate::errors::{Closed, IntoPy};

/// How long a `wait` without a timeout waits: a year (it still wakes for Ctrl-C).
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// A wait releases the GIL in slices this long, checking for signals between them.
const SLICE: Duration = Duration::from_millis(100);

thread_local! {
    /// Descriptors of the call in progress on this thread (local, remote); they keep
    /// their capacity, so after the first calls reading descriptors allocates nothing.
    static DESCS: RefCell<(Vec<Desc>, Vec<Desc>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// `post_list_indices`' indices, likewise.
    static INDICES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// A wait's `timeout` in seconds (`None`: [`FOREVER`]).
fn budget(timeout: Option<f64>) -> PyResult<Duration> {
    match timeout {
        None => Ok(FOREVER),
        Some(t) => Duration::try_from_secs_f64(t)
            .map_err(|_| PyValueError::new_err(format!("timeout: {t} is not a duration in seconds"))),
    }
}

/// Reads a sequence of `(region, offset, length)` into `out`.
fn read_descs(seq: &Bound<'_, PyAny>, out: &mut Vec<Desc>, side: &str) -> PyResult<()> {
    out.clear();
    let one = |item: Bound<'_, PyAny>| -> PyResult<Desc> {
        let (region, offset, len): (u64, u64, u64) = item.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "{side} descriptors: each is a (region, offset, length) tuple of non-negative ints, got {}",
                type_name(&item)
            ))
        })?;
        Ok(Desc::new(RegionId::from_raw(region), offset, len))
    };
    if let Ok(list) = seq.cast::<PyList>() {
        for item in list.iter() {
            out.push(one(item)?);
        }
    } else if let Ok(tuple) = seq.cast::<PyTuple>() {
        // One descriptor given bare, or a tuple of them.
        if tuple.len() == 3 && tuple.get_item(0)?.extract::<u64>().is_ok() {
            out.push(one(tuple.clone().into_any())?);
        } else {
            for item in tuple.iter() {
                out.push(one(item)?);
            }
        }
    } else {
        let items = seq.try_iter().map_err(|_| {
            PyTypeError::new_err(format!(
                "{side} descriptors: expected a list of (region, offset, length) tuples, got {}",
                type_name(seq)
            ))
        })?;
        for item in items {
            out.push(one(item?)?);
        }
    }
    Ok(())
}

/// `"WRITE"`/`"READ"` (either case) or `ringxfer.WRITE`/`READ` (0/1).
pub(crate) fn op(value: &Bound<'_, PyAny>) -> PyResult<Op> {
    let py = value.py();
    if let Ok(s) = value.cast::<PyString>() {
        // Interned constants first: `ringxfer.WRITE` and literals in the caller's
        // code are the same object, and compare by pointer.
        let is = |name: &Bound<'_, PyString>| s.is(name) || s.as_any().eq(name).unwrap_or(false);
        if is(intern!(py, "WRITE")) || is(intern!(py, "write")) {
            return Ok(Op::Write);
        }
        if is(intern!(py, "READ")) || is(intern!(py, "read")) {
            return Ok(Op::Read);
        }
    } else if let Ok(n) = value.extract::<u8>() {
        match n {
            0 => return Ok(Op::Write),
            1 => return Ok(Op::Read),
            _ => {}
        }
    }
    Err(PyValueError::new_err(format!(
        "operation: expected \"WRITE\" or \"READ\", got {}",
        value.repr().map_or_else(|_| "?".into(), |r| r.to_string())
    )))
}

/// A status as its interned name.
pub(crate) fn status_name(py: Python<'_>, s: Status) -> Bound<'_, PyString> {
    match s {
        Status::Reserved => intern!(py, "RESERVED"),
        Status::Posted => intern!(py, "POSTED"),
        Status::Done => intern!(py, "DONE"),
        Status::Failed(_) => intern!(py, "FAILED"),
        Status::Cancelled => intern!(py, "CANCELLED"),
    }
    .clone()
}

/// A notification payload: `bytes`, `bytearray` or `str` (UTF-8).
fn with_payload<T>(value: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> PyResult<T>) -> PyResult<T> {
    if let Ok(b) = value.cast::<PyBytes>() {
        return f(b.as_bytes());
    }
    if let Ok(b) = value.cast::<PyByteArray>() {
        return f(&b.to_vec());
    }
    if let Ok(s) = value.cast::<PyString>() {
        return f(s.to_cow()?.as_bytes());
    }
    Err(PyTypeError::new_err(format!(
        "expected bytes, bytearray or str, got {}",
        type_name(value)
    )))
}

/// The engine. See the module docs and `ringxfer/__init__.py` (which subclasses it).
#[pyclass(module = "ringxfer._native", subclass, weakref)]
pub struct Engine {
    /// `None` once closed. Dropped before `keep`: the engine waits for what is in
    /// flight before the memory it moves is let go of.
    inner: Option<Arc<ringxfer::Engine>>,
    /// Its membership of a cluster (`Engine(etcd=...)`, feature `etcd`): dropped
    /// before the engine can shut down (it holds the engine too).
    #[cfg(feature = "etcd")]
    cluster: Option<ringxfer::cluster::Cluster>,
    /// The objects whose memory registered regions name, by region: kept alive until
    /// the region is deregistered or the engine closed.
    keep: Mutex<HashMap<u64, Py<PyAny>>>,
}

impl Engine {
    #[inline]
    pub(crate) fn engine(&self) -> PyResult<&ringxfer::Engine> {
        match &self.inner {
            Some(e) => Ok(e),
            None => Err(Closed::new_err("the engine is closed")),
        }
    }

    /// The engine's cluster membership, if it joined one.
    #[cfg(feature = "etcd")]
    pub(crate) fn cluster(&self) -> PyResult<&ringxfer::cluster::Cluster> {
        self.engine()?;
        self.cluster
            .as_ref()
            .ok_or_else(|| crate::cluster::no_store("this engine joined no cluster: Engine(etcd={...})"))
    }

    pub(crate) fn shared(&self) -> PyResult<Arc<ringxfer::Engine>> {
        self.inner
            .clone()
            .ok_or_else(|| Closed::new_err("the engine is closed"))
    }

    fn keep(&self, region: RegionId, object: Option<Py<PyAny>>) {
        if let Some(object) = object {
            let mut keep = self.keep.lock().unwrap_or_else(|e| e.into_inner());
            keep.insert(region.to_raw(), object);
        }
    }

    fn prepare_inner(
        &self,
        op_: &Bound<'_, PyAny>,
        local: &Bound<'_, PyAny>,
        peer: u32,
        remote: &Bound<'_, PyAny>,
        notif: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Handle> {
        let engine = self.engine()?;
        let op = op(op_)?;
        DESCS.with_borrow_mut(|(l, r)| {
            read_descs(local, l, "local")?;
            read_descs(remote, r, "remote")?;
            match notif.filter(|n| !n.is_none()) {
                None => engine.prepare(op, l, PeerId(peer), r, None).py(),
                Some(n) => with_payload(n, |bytes| engine.prepare(op, l, PeerId(peer), r, Some(bytes)).py()),
            }
        })
    }

    /// `wait` with the GIL released, in slices so Ctrl-C is noticed.
    pub(crate) fn wait_inner(&self, py: Python<'_>, handle: Handle, timeout: Option<f64>) -> PyResult<Status> {
        let engine = self.engine()?;
        // A transfer that has ended already (the local transport copies in `post`)
        // costs no release of the GIL.
        match engine.status(handle).py()? {
            Status::Reserved | Status::Posted => {}
            ended => return Ok(ended),
        }
        let total = budget(timeout)?;
        // The common case first: a transfer that ends within one slice costs one
        // release of the GIL and no clock reads here.
        let first = total.min(SLICE);
        match py.detach(|| engine.wait(handle, first)) {
            Err(ringxfer::Error::Timeout { .. }) if total > first => {}
            other => return other.py(),
        }
        let end = Instant::now() + (total - first);
        loop {
            py.check_signals()?;
            let left = end.saturating_duration_since(Instant::now());
            let slice = left.min(SLICE);
            match py.detach(|| engine.wait(handle, slice)) {
                Err(ringxfer::Error::Timeout { .. }) if !left.is_zero() => {}
                other => return other.py(),
            }
        }
    }
}

#[pymethods]
impl Engine {
    /// `Engine(**config)`: every `ringxfer::Config` field by name (durations in
    /// seconds; `fabric` and `cuda` as `True` or a dict of their options).
    #[new]
    #[pyo3(signature = (**config_))]
    fn new(py: Python<'_>, config_: Option<&Bound<'_, PyDict>>) -> PyResult<Engine> {
        // `etcd` is the cluster's, not the engine's: taken out before the rest.
        let (config_, etcd) = match config_ {
            Some(d) if d.contains("etcd")? => {
                let d = d.copy()?;
                let etcd = d.get_item("etcd")?.filter(|v| !v.is_none());
                d.del_item("etcd")?;
                (Some(d), etcd)
            }
            other => (other.cloned(), None),
        };
        #[cfg(not(feature = "etcd"))]
        crate::cluster::refuse(etcd.as_ref())?;
        let config = config(config_.as_ref())?;
        config.validate().py()?;
        let engine = Arc::new(py.detach(|| ringxfer::Engine::new(config)).py()?);
        Ok(Engine {
            #[cfg(feature = "etcd")]
            cluster: match etcd {
                Some(options) => {
                    let options = crate::cluster::etcd_config(&options)?;
                    let shared = Arc::clone(&engine);
                    Some(py.detach(|| ringxfer::cluster::Cluster::join(shared, options)).py()?)
                }
                None => None,
            },
            inner: Some(engine),
            keep: Mutex::new(HashMap::new()),
        })
    }

    /// The engine's name.
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.engine()?.config().name.clone())
    }

    /// Whether `close` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    /// The configuration the engine runs with (durations in seconds).
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.engine()?.config();
        let d = PyDict::new(py);
        d.set_item("name", &c.name)?;
        d.set_item("capacity", c.capacity)?;
        d.set_item("max_descs_per_xfer", c.max_descs_per_xfer)?;
        d.set_item("max_blocks_per_xfer", c.max_blocks_per_xfer)?;
        d.set_item("max_registrations", c.max_registrations)?;
        d.set_item("max_peers", c.max_peers)?;
        d.set_item("max_notif_bytes", c.max_notif_bytes)?;
        d.set_item("file_workers", c.file_workers)?;
        d.set_item("file_worker_poll", c.file_worker_poll.as_secs_f64())?;
        d.set_item("max_prepared_lists", c.max_prepared_lists)?;
        d.set_item("max_list_descs", c.max_list_descs)?;
        d.set_item("inbox_capacity", c.inbox_capacity)?;
        d.set_item("deadline", c.deadline.map(|d| d.as_secs_f64()))?;
        d.set_item("completion_queue", c.completion_queue)?;
        d.set_item("wait_spin", c.wait_spin.as_secs_f64())?;
        d.set_item("wait_yield", c.wait_yield.as_secs_f64())?;
        d.set_item("fabric", c.fabric.is_some())?;
        d.set_item("cuda", c.cuda.is_some())?;
        Ok(d)
    }

    // ---- memory -------------------------------------------------------------

    /// A zeroed region of `length` bytes owned by the engine (in a shared-memory
    /// segment peers on this host map). Returns its id.
    fn alloc_region(&self, length: usize) -> PyResult<u64> {
        Ok(self.engine()?.alloc_region(length).py()?.to_raw())
    }

    /// Registers host memory by address. Internal: `Engine.register` calls it with
    /// the object exporting the memory as `keep`, which is held until the region is
    /// deregistered or the engine closed. The caller vouches that `[addr, addr +
    /// length)` stays valid that long.
    #[pyo3(signature = (addr, length, keep=None))]
    fn _register_dram(&self, addr: usize, length: usize, keep: Option<Py<PyAny>>) -> PyResult<u64> {
        if addr == 0 {
            return Err(PyValueError::new_err("register: a null address"));
        }
        let engine = self.engine()?;
        // SAFETY: the caller (Engine.register, or a user of this internal method)
        // vouches that the memory stays valid until the region is deregistered or the
        // engine closed; `keep` holds its exporter that long, and `inner` (the engine)
        // is dropped before `keep`.
        let region = unsafe { engine.register_dram(addr as *mut u8, length) }.py()?;
        self.keep(region, keep);
        Ok(region.to_raw())
    }

    /// Registers GPU memory by device pointer (cuda transport). Internal, as
    /// `_register_dram`.
    #[pyo3(signature = (ptr, length, keep=None))]
    fn _register_vram(&self, ptr: u64, length: usize, keep: Option<Py<PyAny>>) -> PyResult<u64> {
        if ptr == 0 {
            return Err(PyValueError::new_err("register: a null device pointer"));
        }
        let engine = self.engine()?;
        // SAFETY: as in `_register_dram`: the allocation outlives the region.
        let region = unsafe { engine.register_vram(ptr, length) }.py()?;
        self.keep(region, keep);
        Ok(region.to_raw())
    }

    /// GPU memory allocated and owned by the engine (cuda transport).
    fn alloc_vram(&self, length: usize) -> PyResult<u64> {
        Ok(self.engine()?.alloc_vram(length).py()?.to_raw())
    }

    /// Registers a file; transfers to and from it run on the engine's I/O workers.
    #[pyo3(signature = (path, writable=false, create=false, length=None, sync=false))]
    fn register_file(
        &self,
        path: std::path::PathBuf,
        writable: bool,
        create: bool,
        length: Option<u64>,
        sync: bool,
    ) -> PyResult<u64> {
        let options = ringxfer::FileOptions {
            writable,
            create,
            len: length,
            sync,
        };
        Ok(self.engine()?.register_file(path, options).py()?.to_raw())
    }

    /// Deregisters a region (`Busy` while a transfer or prepared list holds it), and
    /// lets go of the object whose memory it named.
    fn deregister(&self, region: u64) -> PyResult<()> {
        self.engine()?.deregister(RegionId::from_raw(region)).py()?;
        let kept = {
            let mut keep = self.keep.lock().unwrap_or_else(|e| e.into_inner());
            keep.remove(&region)
        };
        drop(kept);
        Ok(())
    }

    /// `length` bytes of a region from `offset`, copied (control path).
    fn read_region<'py>(
        &self,
        py: Python<'py>,
        region: u64,
        offset: u64,
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let engine = self.engine()?;
        let mut out = vec![0u8; length];
        engine.read_region(RegionId::from_raw(region), offset, &mut out).py()?;
        Ok(PyBytes::new(py, &out))
    }

    /// Copies `data` (bytes, bytearray or str) into a region at `offset` (control path).
    fn write_region(&self, region: u64, offset: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let engine = self.engine()?;
        with_payload(data, |bytes| {
            engine.write_region(RegionId::from_raw(region), offset, bytes).py()
        })
    }

    // ---- peers --------------------------------------------------------------

    /// This engine's metadata blob, for a peer's `load_peer`.
    fn local_metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let blob = self.engine()?.local_metadata().py()?;
        Ok(PyBytes::new(py, &blob))
    }

    /// Loads a peer from its metadata blob; returns its id.
    fn load_peer(&self, blob: &[u8]) -> PyResult<u32> {
        Ok(self.engine()?.load_peer(blob).py()?.0)
    }

    /// Fetches a peer's metadata from its metadata server (`"host:port"`) and loads it.
    fn fetch_peer(&self, py: Python<'_>, addr: String) -> PyResult<u32> {
        let engine = self.engine()?;
        Ok(py.detach(|| engine.fetch_peer(addr.as_str())).py()?.0)
    }

    /// Serves this engine's metadata on `addr` (default: loopback, any port).
    #[pyo3(signature = (addr="127.0.0.1:0"))]
    fn serve_metadata(&self, addr: &str) -> PyResult<MetadataServer> {
        let server = self.engine()?.serve_metadata(addr).py()?;
        Ok(MetadataServer { server: Some(server) })
    }

    /// Unloads a peer (its transfers must have ended).
    fn unload_peer(&self, peer: u32) -> PyResult<()> {
        self.engine()?.unload_peer(PeerId(peer)).py()
    }

    /// The peer id that names this engine itself (transfers within the process, and
    /// to and from files and GPU memory).
    fn local_peer(&self) -> PyResult<u32> {
        Ok(self.engine()?.local_peer().0)
    }

    /// A loaded peer's name.
    fn peer_name(&self, peer: u32) -> PyResult<String> {
        self.engine()?.peer_name(PeerId(peer)).py()
    }

    /// The name of the engine a notification's sender id stands for, if known.
    fn sender_name(&self, sender: u32) -> PyResult<Option<String>> {
        Ok(self.engine()?.sender_name(SenderId(sender)))
    }

    // ---- the cluster (etcd) -------------------------------------------------

    /// Loads the engine registered as `name` in the cluster (`Engine(etcd=...)`)
    /// and follows it: restarts are reloaded, a departure makes it lost.
    fn fetch_peer_by_name(&self, py: Python<'_>, name: String) -> PyResult<u32> {
        crate::cluster::fetch_peer(self, py, &name)
    }

    /// A followed peer's current id (a new one after it restarted), without I/O.
    fn peer_by_name(&self, name: &str) -> PyResult<u32> {
        crate::cluster::peer(self, name)
    }

    /// The names registered in the cluster's namespace.
    fn list_peers(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        crate::cluster::list_peers(self, py)
    }

    /// What the cluster counted (registrations, reloads, restarts, lost, ...).
    fn cluster_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::cluster::stats(self, py)
    }

    // ---- transfers ----------------------------------------------------------

    /// Prepares a transfer: `op` ("WRITE" or "READ"), local and remote descriptor
    /// lists of equal total length, the peer, and an optional notification the peer
    /// receives when the data has landed. Returns the handle (an int).
    #[pyo3(signature = (op, local, peer, remote, notif=None))]
    fn prepare(
        &self,
        op: &Bound<'_, PyAny>,
        local: &Bound<'_, PyAny>,
        peer: u32,
        remote: &Bound<'_, PyAny>,
        notif: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        Ok(self.prepare_inner(op, local, peer, remote, notif)?.to_raw())
    }

    /// As `prepare`, returning a `Transfer` (a context manager releasing the handle).
    #[pyo3(signature = (op, local, peer, remote, notif=None))]
    fn transfer(
        slf: &Bound<'_, Self>,
        op: &Bound<'_, PyAny>,
        local: &Bound<'_, PyAny>,
        peer: u32,
        remote: &Bound<'_, PyAny>,
        notif: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Transfer> {
        let handle = slf.borrow().prepare_inner(op, local, peer, remote, notif)?;
        Ok(Transfer {
            engine: slf.clone().unbind(),
            handle,
            released: AtomicBool::new(false),
        })
    }

    /// Posts a prepared transfer.
    fn post(&self, handle: u64) -> PyResult<()> {
        self.engine()?.post(Handle::from_raw(handle)).py()
    }

    /// The transfer's status (never blocks).
    fn status<'py>(&self, py: Python<'py>, handle: u64) -> PyResult<Bound<'py, PyString>> {
        let s = self.engine()?.status(Handle::from_raw(handle)).py()?;
        Ok(status_name(py, s))
    }

    /// Why a transfer failed (`None` unless its status is `"FAILED"`).
    fn failure(&self, handle: u64) -> PyResult<Option<String>> {
        Ok(match self.engine()?.status(Handle::from_raw(handle)).py()? {
            Status::Failed(code) => Some(code.to_string()),
            _ => None,
        })
    }

    /// Waits until the transfer ends or `timeout` seconds pass (`Timeout`; the
    /// transfer goes on), with the GIL released; returns the final status.
    #[pyo3(signature = (handle, timeout=None))]
    fn wait<'py>(&self, py: Python<'py>, handle: u64, timeout: Option<f64>) -> PyResult<Bound<'py, PyString>> {
        let s = self.wait_inner(py, Handle::from_raw(handle), timeout)?;
        Ok(status_name(py, s))
    }

    /// Gives the transfer a deadline of its own, `timeout` seconds from now (`None`: none).
    #[pyo3(signature = (handle, timeout))]
    fn set_deadline(&self, handle: u64, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let timeout = match timeout {
            Some(t) if !t.is_none() => Some(seconds("timeout", t)?),
            _ => None,
        };
        self.engine()?.set_deadline(Handle::from_raw(handle), timeout).py()
    }

    /// Cancels a transfer: `"CANCELLED"` (it had not been posted), `"IN_FLIGHT"`
    /// (asked; it ends soon), or `"ALREADY_COMPLETE"`.
    fn cancel<'py>(&self, py: Python<'py>, handle: u64) -> PyResult<Bound<'py, PyString>> {
        Ok(match self.engine()?.cancel(Handle::from_raw(handle)).py()? {
            CancelResult::Cancelled => intern!(py, "CANCELLED"),
            CancelResult::InFlight => intern!(py, "IN_FLIGHT"),
            _ => intern!(py, "ALREADY_COMPLETE"),
        }
        .clone())
    }

    /// Releases a handle (its slot is freed now, or when the transfer in flight ends).
    fn release(&self, handle: u64) -> PyResult<()> {
        self.engine()?.release(Handle::from_raw(handle)).py()?;
        Ok(())
    }

    /// Drives progress of transports that need it; returns the completions it found.
    fn progress(&self) -> PyResult<usize> {
        Ok(self.engine()?.progress())
    }

    // ---- prepared lists -------------------------------------------------------

    /// Prepares descriptor lists once (validated and pinned) for many transfers.
    fn prepare_list(
        &self,
        op_: &Bound<'_, PyAny>,
        local: &Bound<'_, PyAny>,
        peer: u32,
        remote: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let engine = self.engine()?;
        let op = op(op_)?;
        DESCS.with_borrow_mut(|(l, r)| {
            read_descs(local, l, "local")?;
            read_descs(remote, r, "remote")?;
            Ok(engine.prepare_list(op, l, PeerId(peer), r).py()?.to_raw())
        })
    }

    /// Posts a whole prepared list as one transfer; returns its handle.
    #[pyo3(signature = (list, notif=None))]
    fn post_list(&self, list: u64, notif: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let engine = self.engine()?;
        let list = ListId::from_raw(list);
        match notif {
            Some(n) if !n.is_none() => with_payload(n, |b| engine.post_list(list, Some(b)).py()),
            _ => engine.post_list(list, None).py(),
        }
        .map(Handle::to_raw)
    }

    /// Posts the entries `indices` of a prepared list as one transfer.
    #[pyo3(signature = (list, indices, notif=None))]
    fn post_list_indices(
        &self,
        list: u64,
        indices: &Bound<'_, PyAny>,
        notif: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let engine = self.engine()?;
        let list = ListId::from_raw(list);
        INDICES.with_borrow_mut(|ix| {
            ix.clear();
            for i in indices.try_iter()? {
                let i = i?;
                ix.push(
                    i.extract()
                        .map_err(|_| PyTypeError::new_err(format!("indices: expected ints, got {}", type_name(&i))))?,
                );
            }
            match notif {
                Some(n) if !n.is_none() => with_payload(n, |b| engine.post_list_indices(list, ix, Some(b)).py()),
                _ => engine.post_list_indices(list, ix, None).py(),
            }
            .map(Handle::to_raw)
        })
    }

    /// Posts a prepared list again for `ringxfer.nixl`'s `transfer`: releases
    /// `previous` (0: none) if it has ended (`WrongState` while it is in flight), posts
    /// the list, and returns the new handle with its status: one call per repost.
    #[pyo3(signature = (list, previous, notif=None))]
    fn _repost<'py>(
        &self,
        py: Python<'py>,
        list: u64,
        previous: u64,
        notif: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(u64, Bound<'py, PyString>)> {
        let engine = self.engine()?;
        if previous != 0 {
            let h = Handle::from_raw(previous);
            if engine.status(h).py()? == Status::Posted {
                return Err(crate::errors::WrongState::new_err(
                    "the previous posting of this transfer is still in flight",
                ));
            }
            engine.release(h).py()?;
        }
        let list = ListId::from_raw(list);
        let h = match notif {
            Some(n) if !n.is_none() => with_payload(n, |b| engine.post_list(list, Some(b)).py()),
            _ => engine.post_list(list, None).py(),
        }?;
        let s = engine.status(h).py()?;
        Ok((h.to_raw(), status_name(py, s)))
    }

    /// Releases a prepared list (and the regions it pinned).
    fn release_list(&self, list: u64) -> PyResult<()> {
        self.engine()?.release_list(ListId::from_raw(list)).py()
    }

    // ---- notifications ----------------------------------------------------------

    /// Sends a notification (bytes, bytearray or str) to a peer.
    fn notify(&self, peer: u32, payload: &Bound<'_, PyAny>) -> PyResult<()> {
        let engine = self.engine()?;
        with_payload(payload, |b| engine.notify(PeerId(peer), b).py())
    }

    /// Pops one notification into `buf` (a bytearray the caller reuses, at least
    /// `max_notif_bytes` long): `(sender, length)`, or `None` when there is none.
    fn pop_notification(&self, buf: &Bound<'_, PyByteArray>) -> PyResult<Option<(u32, usize)>> {
        let engine = self.engine()?;
        // SAFETY: the GIL is held and no Python code runs while the slice lives, so
        // nothing resizes or reads the bytearray meanwhile.
        let out = unsafe { buf.as_bytes_mut() };
        Ok(engine.pop_notification(out).py()?.map(|n| (n.sender.0, n.len)))
    }

    /// Pops every waiting notification: a list of `(sender name, payload bytes)`.
    fn pop_notifications<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let engine = self.engine()?;
        let mut buf = vec![0u8; engine.config().max_notif_bytes.max(1)];
        let out = PyList::empty(py);
        while let Some(n) = engine.pop_notification(&mut buf).py()? {
            let name = engine.sender_name(n.sender);
            out.append((name, PyBytes::new(py, &buf[..n.len])))?;
        }
        Ok(out)
    }

    // ---- completions -----------------------------------------------------------

    /// Asks a prepared transfer to report its end to the completion queue, with `tag`.
    #[pyo3(signature = (handle, tag=0))]
    fn report_completion(&self, handle: u64, tag: u64) -> PyResult<()> {
        self.engine()?.report_completion(Handle::from_raw(handle), tag).py()
    }

    /// Up to `max` ended transfers that asked to report: `(handle, status, tag)`.
    #[pyo3(signature = (max=64))]
    fn poll_completions<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        let engine = self.engine()?;
        let mut buf = [Completion {
            handle: Handle::NULL,
            status: Status::Reserved,
            tag: 0,
        }; 64];
        let out = PyList::empty(py);
        let mut left = max;
        while left > 0 {
            let n = engine.poll_completions(&mut buf[..left.min(64)]);
            for c in &buf[..n] {
                out.append((c.handle.to_raw(), status_name(py, c.status), c.tag))?;
            }
            if n < left.min(64) {
                break;
            }
            left -= n;
        }
        Ok(out)
    }

    /// Waits (GIL released) until the completion queue holds an entry or `timeout`
    /// seconds pass; returns whether it does.
    #[pyo3(signature = (timeout=None))]
    fn wait_any(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let engine = self.engine()?;
        let total = budget(timeout)?;
        let end = Instant::now() + total;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let slice = left.min(SLICE);
            if py.detach(|| engine.wait_any(slice)).py()? || left.is_zero() {
                return engine.wait_any(Duration::ZERO).py();
            }
            py.check_signals()?;
        }
    }

    /// An eventfd readable while the completion queue holds entries (for `select`,
    /// `epoll`, or asyncio's `loop.add_reader`).
    fn completion_fd(&self) -> PyResult<i32> {
        self.engine()?.completion_fd().py()
    }

    // ---- ledger -----------------------------------------------------------------

    /// The engine's counters and what it holds now (a dict).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::stats::to_dict(py, &self.engine()?.stats())
    }

    /// Raises `NotQuiescent` (naming what is held) unless nothing is.
    fn check_quiescent(&self) -> PyResult<()> {
        self.engine()?.check_quiescent().py()
    }

    /// Shuts the engine down (waiting, GIL released, for what is in flight) and
    /// returns its final stats; later calls raise `Closed`. `Busy` while a
    /// `KvStore` still uses the engine. A second close returns `None`.
    fn close<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(shared) = self.inner.take() else {
            return Ok(None);
        };
        // Leave the cluster first (its thread holds the engine): the key goes.
        #[cfg(feature = "etcd")]
        if let Some(cluster) = self.cluster.take() {
            py.detach(move || drop(cluster));
        }
        let engine = match Arc::try_unwrap(shared) {
            Ok(engine) => engine,
            Err(shared) => {
                self.inner = Some(shared);
                return Err(crate::errors::Busy::new_err(
                    "the engine is still used by a KvStore: close the store first",
                ));
            }
        };
        let stats = py.detach(move || engine.shutdown());
        let kept = std::mem::take(&mut *self.keep.lock().unwrap_or_else(|e| e.into_inner()));
        drop(kept);
        Ok(Some(crate::stats::to_dict(py, &stats)?))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

/// A transfer's handle with its engine: `post`, `wait`, `status`, `cancel`,
/// `release`; as a context manager (and when garbage-collected) it releases the
/// handle if the caller did not.
#[pyclass(module = "ringxfer._native", frozen)]
pub struct Transfer {
    engine: Py<Engine>,
    handle: Handle,
    released: AtomicBool,
}

impl Transfer {
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(&Engine) -> PyResult<T>) -> PyResult<T> {
        let engine = self.engine.bind(py).borrow();
        f(&engine)
    }
}

#[pymethods]
impl Transfer {
    /// The raw handle (an int), for the engine's handle-taking methods.
    #[getter]
    fn handle(&self) -> u64 {
        self.handle.to_raw()
    }

    fn post(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |e| e.engine()?.post(self.handle).py())
    }

    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        let s = self.with(py, |e| e.engine()?.status(self.handle).py())?;
        Ok(status_name(py, s))
    }

    #[pyo3(signature = (timeout=None))]
    fn wait<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyString>> {
        let s = self.with(py, |e| e.wait_inner(py, self.handle, timeout))?;
        Ok(status_name(py, s))
    }

    fn failure(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.with(py, |e| e.failure(self.handle.to_raw()))
    }

    fn cancel<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        self.with(py, |e| e.cancel(py, self.handle.to_raw()))
    }

    /// Releases the handle (a second release raises `StaleHandle`).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |e| e.engine()?.release(self.handle).py())?;
        self.released.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.release_quietly(py);
        false
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let status = self
            .with(py, |e| e.engine()?.status(self.handle).py())
            .map_or_else(|_| "released".to_string(), |s| format!("{s:?}"));
        format!("<ringxfer.Transfer {} {status}>", self.handle)
    }
}

impl Transfer {
    fn release_quietly(&self, py: Python<'_>) {
        if !self.released.swap(true, Ordering::Relaxed) {
            let engine = self.engine.bind(py).try_borrow();
            if let Ok(engine) = engine
                && let Ok(e) = engine.engine()
            {
                let _ = e.release(self.handle);
            }
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if !self.released.load(Ordering::Relaxed) {
            Python::attach(|py| self.release_quietly(py));
        }
    }
}

/// A running metadata server (`Engine.serve_metadata`); `close()` or garbage
/// collection stops it.
#[pyclass(module = "ringxfer._native")]
pub struct MetadataServer {
    server: Option<ringxfer::MetadataServer>,
}

#[pymethods]
impl MetadataServer {
    /// `"host:port"` it listens on, for a peer's `fetch_peer`.
    #[getter]
    fn address(&self) -> PyResult<String> {
        match &self.server {
            Some(s) => Ok(s.local_addr().to_string()),
            None => Err(Closed::new_err("the metadata server is closed")),
        }
    }

    /// Requests answered, refused (bad secret or request) and turned away (busy).
    fn counters(&self) -> PyResult<(u64, u64, u64)> {
        match &self.server {
            Some(s) => Ok((s.served(), s.refused(), s.busy())),
            None => Err(Closed::new_err("the metadata server is closed")),
        }
    }

    fn close(&mut self, py: Python<'_>) {
        if let Some(s) = self.server.take() {
            py.detach(move || drop(s));
        }
    }
}
