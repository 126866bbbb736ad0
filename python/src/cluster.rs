//! `Engine(etcd={...})` and the cluster calls (`fetch_peer_by_name`,
//! `peer_by_name`, `list_peers`, `cluster_stats`): `ringxfer::cluster` from Python,
//! in builds with the `etcd` feature; elsewhere they raise `MetadataStoreError`.

use pyo3::prelude::*;
#[cfg(not(feature = "etcd"))]
use pyo3::types::PyDict;

#[cfg(not(feature = "etcd"))]
use crate::engine::Engine;
use crate::errors::MetadataStoreError;

/// The error of a cluster call that has no store to ask.
pub(crate) fn no_store(why: &str) -> PyErr {
    MetadataStoreError::new_err(why.to_owned())
}

#[cfg(not(feature = "etcd"))]
const NO_FEATURE: &str =
    "this build of ringxfer has no etcd support: MATURIN_PEP517_ARGS=\"--features etcd\" pip install ./python";

/// Refuses `Engine(etcd=...)` in a build without the feature.
#[cfg(not(feature = "etcd"))]
pub(crate) fn refuse(etcd: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    match etcd {
        Some(_) => Err(crate::errors::InvalidConfig::new_err(format!("etcd: {NO_FEATURE}"))),
        None => Ok(()),
    }
}

#[cfg(feature = "etcd")]
mod on {
    use pyo3::exceptions::PyTypeError;
    use pyo3::prelude::*;
    use pyo3::types::PyDict;
    use ringxfer::cluster::EtcdConfig;

    use crate::config::{seconds, type_name};
    use crate::engine::Engine;
    use crate::errors::IntoPy;

    /// `etcd={"endpoints": [...] or "a,b", "namespace": ..., "ttl": s, "timeout": s}`.
    pub(crate) fn etcd_config(options: &Bound<'_, PyAny>) -> PyResult<EtcdConfig> {
        let d = options.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err(format!("etcd: expected a dict of options, got {}", type_name(options)))
        })?;
        let mut c = EtcdConfig::default();
        for (k, v) in d.iter() {
            let key: String = k.extract()?;
            match key.as_str() {
                "endpoints" => {
                    c.endpoints = match v.extract::<String>() {
                        Ok(s) => s.split(',').map(|e| e.trim().to_owned()).collect(),
                        Err(_) => v.extract().map_err(|_| {
                            PyTypeError::new_err("etcd.endpoints: expected a list of \"host:port\" strings")
                        })?,
                    }
                }
                "namespace" => {
                    c.namespace = v
                        .extract()
                        .map_err(|_| PyTypeError::new_err("etcd.namespace: expected a str"))?
                }
                "ttl" => c.ttl = seconds("etcd.ttl", &v)?,
                "timeout" => c.timeout = seconds("etcd.timeout", &v)?,
                other => {
                    return Err(PyTypeError::new_err(format!(
                        "unknown etcd option {other:?} (known: endpoints, namespace, ttl, timeout)"
                    )));
                }
            }
        }
        Ok(c)
    }

    pub(crate) fn fetch_peer(e: &Engine, py: Python<'_>, name: &str) -> PyResult<u32> {
        let c = e.cluster()?;
        Ok(py.detach(|| c.fetch_peer(name)).py()?.0)
    }

    pub(crate) fn peer(e: &Engine, name: &str) -> PyResult<u32> {
        Ok(e.cluster()?.peer(name).py()?.0)
    }

    pub(crate) fn list_peers(e: &Engine, py: Python<'_>) -> PyResult<Vec<String>> {
        let c = e.cluster()?;
        py.detach(|| c.list_peers()).py()
    }

    pub(crate) fn stats<'py>(e: &Engine, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = e.cluster()?.stats();
        let d = PyDict::new(py);
        d.set_item("registrations", s.registrations)?;
        d.set_item("republished", s.republished)?;
        d.set_item("reloads", s.reloads)?;
        d.set_item("restarts", s.restarts)?;
        d.set_item("lost", s.lost)?;
        d.set_item("malformed", s.malformed)?;
        d.set_item("disconnects", s.disconnects)?;
        d.set_item("connected", e.cluster()?.connected())?;
        Ok(d)
    }
}

#[cfg(feature = "etcd")]
pub(crate) use on::{etcd_config, fetch_peer, list_peers, peer, stats};

#[cfg(not(feature = "etcd"))]
pub(crate) fn fetch_peer(_: &Engine, _: Python<'_>, _: &str) -> PyResult<u32> {
    Err(no_store(NO_FEATURE))
}

#[cfg(not(feature = "etcd"))]
pub(crate) fn peer(_: &Engine, _: &str) -> PyResult<u32> {
    Err(no_store(NO_FEATURE))
}

#[cfg(not(feature = "etcd"))]
pub(crate) fn list_peers(_: &Engine, _: Python<'_>) -> PyResult<Vec<String>> {
    Err(no_store(NO_FEATURE))
}

#[cfg(not(feature = "etcd"))]
pub(crate) fn stats<'py>(_: &Engine, _: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    Err(no_store(NO_FEATURE))
}
