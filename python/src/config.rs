//! `Engine(**config)`: keyword arguments into a `ringxfer::Config`, every field by
//! its Rust name; durations in seconds (float). `Config::validate` then checks the
//! ranges with the same errors as in Rust (`InvalidConfig`).

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use ringxfer::fabric::FabricConfig;
use ringxfer::{Config, CudaConfig, Secret};

/// The keyword arguments `Engine` takes, for the error naming an unknown one.
const ENGINE_KEYS: &str = "name, capacity, max_descs_per_xfer, max_blocks_per_xfer, max_registrations, max_peers, \
     max_notif_bytes, file_workers, file_worker_poll, max_prepared_lists, max_list_descs, inbox_capacity, deadline, \
     completion_queue, wait_spin, wait_yield, fabric, cuda, metadata_secret";

/// Seconds (int or float, ≥ 0) into a `Duration`.
pub(crate) fn seconds(what: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let s: f64 = value
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{what}: expected seconds (a number), got {}", type_name(value))))?;
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("{what}: {s} is not a duration in seconds")))
}

pub(crate) fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string())
}

fn number<T: for<'a, 'py> FromPyObject<'a, 'py>>(key: &str, value: &Bound<'_, PyAny>) -> PyResult<T> {
    value.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{key}: expected a non-negative integer, got {}",
            type_name(value)
        ))
    })
}

fn flag(key: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    value
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{key}: expected True or False, got {}", type_name(value))))
}

fn text(key: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    value
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{key}: expected a str, got {}", type_name(value))))
}

/// `None`/`False`: off; `True`: on with defaults; a dict: on with those options.
fn section<'py>(key: &str, value: &Bound<'py, PyAny>) -> PyResult<Option<Option<Bound<'py, PyDict>>>> {
    if value.is_none() {
        return Ok(None);
    }
    if let Ok(on) = value.extract::<bool>() {
        return Ok(on.then_some(None));
    }
    match value.cast::<PyDict>() {
        Ok(d) => Ok(Some(Some(d.clone()))),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{key}: expected None, a bool or a dict of options, got {}",
            type_name(value)
        ))),
    }
}

fn fabric(options: Option<Bound<'_, PyDict>>) -> PyResult<FabricConfig> {
    let mut f = FabricConfig::default();
    for (k, v) in options.iter().flat_map(|d| d.iter()) {
        let key: String = k.extract()?;
        match key.as_str() {
            "provider" => {
                f.provider = if v.is_none() {
                    None
                } else {
                    Some(text("fabric.provider", &v)?)
                }
            }
            "node" => {
                f.node = if v.is_none() {
                    None
                } else {
                    Some(text("fabric.node", &v)?)
                }
            }
            "rx_buffers" => f.rx_buffers = number("fabric.rx_buffers", &v)?,
            "progress_thread" => f.progress_thread = flag("fabric.progress_thread", &v)?,
            "blocking" => f.blocking = flag("fabric.blocking", &v)?,
            "cq_data_bytes" => {
                f.cq_data_bytes = if v.is_none() {
                    None
                } else {
                    Some(number("fabric.cq_data_bytes", &v)?)
                }
            }
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unknown fabric option {other:?} (known: provider, node, rx_buffers, progress_thread, blocking, cq_data_bytes)"
                )));
            }
        }
    }
    Ok(f)
}

fn cuda(options: Option<Bound<'_, PyDict>>) -> PyResult<CudaConfig> {
    let mut c = CudaConfig::default();
    for (k, v) in options.iter().flat_map(|d| d.iter()) {
        let key: String = k.extract()?;
        match key.as_str() {
            "device" => c.device = number("cuda.device", &v)?,
            "streams" => c.streams = number("cuda.streams", &v)?,
            "stream" => {
                c.stream = if v.is_none() {
                    None
                } else {
                    Some(number("cuda.stream", &v)?)
                }
            }
            "pin_host" => c.pin_host = flag("cuda.pin_host", &v)?,
            "vmm" => c.vmm = flag("cuda.vmm", &v)?,
            "batch" => c.batch = flag("cuda.batch", &v)?,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unknown cuda option {other:?} (known: device, streams, stream, pin_host, vmm, batch)"
                )));
            }
        }
    }
    Ok(c)
}

/// The `Config` the keyword arguments describe (not yet validated).
pub(crate) fn config(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Config> {
    let mut c = Config::default();
    for (k, v) in kwargs.iter().flat_map(|d| d.iter()) {
        let key: String = k.extract()?;
        let v = &v;
        match key.as_str() {
            "name" => c.name = text("name", v)?,
            "capacity" => c.capacity = number("capacity", v)?,
            "max_descs_per_xfer" => c.max_descs_per_xfer = number("max_descs_per_xfer", v)?,
            "max_blocks_per_xfer" => c.max_blocks_per_xfer = number("max_blocks_per_xfer", v)?,
            "max_registrations" => c.max_registrations = number("max_registrations", v)?,
            "max_peers" => c.max_peers = number("max_peers", v)?,
            "max_notif_bytes" => c.max_notif_bytes = number("max_notif_bytes", v)?,
            "file_workers" => c.file_workers = number("file_workers", v)?,
            "file_worker_poll" => c.file_worker_poll = seconds("file_worker_poll", v)?,
            "max_prepared_lists" => c.max_prepared_lists = number("max_prepared_lists", v)?,
            "max_list_descs" => c.max_list_descs = number("max_list_descs", v)?,
            "inbox_capacity" => c.inbox_capacity = number("inbox_capacity", v)?,
            "deadline" => {
                c.deadline = if v.is_none() {
                    None
                } else {
                    Some(seconds("deadline", v)?)
                }
            }
            "completion_queue" => c.completion_queue = number("completion_queue", v)?,
            "wait_spin" => c.wait_spin = seconds("wait_spin", v)?,
            "wait_yield" => c.wait_yield = seconds("wait_yield", v)?,
            "fabric" => c.fabric = section("fabric", v)?.map(fabric).transpose()?,
            "cuda" => c.cuda = section("cuda", v)?.map(cuda).transpose()?,
            "metadata_secret" => {
                c.metadata_secret = if v.is_none() {
                    None
                } else {
                    Some(Secret(text("metadata_secret", v)?))
                }
            }
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unknown Engine option {other:?} (known: {ENGINE_KEYS})"
                )));
            }
        }
    }
    Ok(c)
}
