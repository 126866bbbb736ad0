//! `EngineStats` as a flat dict (the ring's counters by their own names, the
//! fabric's with a `fabric_` prefix).

use pyo3::prelude::*;
use pyo3::types::PyDict;
use ringxfer::EngineStats;

pub(crate) fn to_dict<'py>(py: Python<'py>, s: &EngineStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let r = &s.ring;
    d.set_item("capacity", r.capacity)?;
    d.set_item("live", r.live)?;
    d.set_item("high_water", r.high_water)?;
    d.set_item("acquired", r.acquired)?;
    d.set_item("freed", r.freed)?;
    d.set_item("done", r.done)?;
    d.set_item("failed", r.failed)?;
    d.set_item("cancelled", r.cancelled)?;
    d.set_item("stale_completions", r.stale_completions)?;
    d.set_item("retired", r.retired)?;
    d.set_item("registrations", s.registrations)?;
    d.set_item("pins", s.pins)?;
    d.set_item("peers", s.peers)?;
    d.set_item("prepared_lists", s.prepared_lists)?;
    d.set_item("open_files", s.open_files)?;
    d.set_item("notifications_queued", s.notifications_queued)?;
    d.set_item("notifications_delivered", s.notifications_delivered)?;
    d.set_item("notifications_stale", s.notifications_stale)?;
    d.set_item("completions_queued", s.completions_queued)?;
    d.set_item("transport_held", s.transport_held)?;
    d.set_item("cuda_events", s.cuda_events)?;
    d.set_item("cuda_ipc_mappings", s.cuda_ipc_mappings)?;
    d.set_item("bytes", s.bytes)?;
    let f = &s.fabric;
    d.set_item("fabric_remote_writes", f.remote_writes)?;
    d.set_item("fabric_stale", f.stale)?;
    d.set_item("fabric_notifications", f.notifications)?;
    d.set_item("fabric_aborts", f.aborts)?;
    d.set_item("fabric_malformed", f.malformed)?;
    d.set_item("fabric_expired", f.expired)?;
    d.set_item("fabric_lost_peers", f.lost_peers)?;
    d.set_item("fabric_sleeps", f.sleeps)?;
    Ok(d)
}
