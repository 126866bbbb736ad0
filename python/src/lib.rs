//! `ringxfer._native`: the Rust half of the `ringxfer` Python package (pyo3). The
//! Python half (`python/ringxfer/`) adds buffer-protocol and GPU-array registration,
//! the `ringxfer.nixl` agent and the bench.
#![allow(unsafe_code)]

mod cluster;
mod config;
mod engine;
mod errors;
mod kv;
mod stats;

use pyo3::prelude::*;

/// The module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<engine::Engine>()?;
    m.add_class::<engine::Transfer>()?;
    m.add_class::<engine::MetadataServer>()?;
    m.add_class::<kv::KvStore>()?;
    m.add("WRITE", "WRITE")?;
    m.add("READ", "READ")?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("HAS_ETCD", cfg!(feature = "etcd"))?;
    Ok(())
}
