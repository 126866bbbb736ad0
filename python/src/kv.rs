//! `ringxfer._native.KvStore`: string keys to value blocks in files, with the shape
//! of SGLang HiCache's storage interface (`set`, `get`, `batch_set`, `batch_get`,
//! `exists`, `remove`). Values move between registered memory (a `(region, offset,
//! length)` descriptor) and the store's files through the engine.

use std::sync::Mutex;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use ringxfer::{Desc, KvConfig, RegionId};

use crate::config::type_name;
use crate::engine::Engine;
use crate::errors::{Closed, IntoPy};

fn desc(value: &Bound<'_, PyAny>) -> PyResult<Desc> {
    let (region, offset, len): (u64, u64, u64) = value.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "a value is a (region, offset, length) tuple of ints, got {}",
            type_name(value)
        ))
    })?;
    Ok(Desc::new(RegionId::from_raw(region), offset, len))
}

/// The store. Holds its engine until closed (the engine cannot close before it).
#[pyclass(module = "ringxfer._native")]
pub struct KvStore {
    store: Mutex<Option<ringxfer::KvStore<'static>>>,
}

impl KvStore {
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(&ringxfer::KvStore<'static>) -> PyResult<T> + Send) -> PyResult<T>
    where
        T: Send,
    {
        py.detach(|| {
            let guard = self.store.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(s) => f(s),
                None => Err(Closed::new_err("the key-value store is closed")),
            }
        })
    }
}

#[pymethods]
impl KvStore {
    /// Creates (or reuses) `files` files of `blocks_per_file` blocks of
    /// `block_size` bytes under `dir`, registered with `engine`.
    #[new]
    #[pyo3(signature = (engine, dir, *, files=1, blocks_per_file=1024, block_size=65536, max_key_len=256, sync=false, timeout=30.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        engine: PyRef<'_, Engine>,
        dir: std::path::PathBuf,
        files: usize,
        blocks_per_file: u64,
        block_size: u64,
        max_key_len: usize,
        sync: bool,
        timeout: f64,
    ) -> PyResult<KvStore> {
        let shared = engine.shared()?;
        let config = KvConfig {
            dir,
            files,
            blocks_per_file,
            block_size,
            max_key_len,
            sync,
            timeout: crate::config::seconds("timeout", &timeout.into_pyobject(py)?.into_any())?,
        };
        let store = py.detach(|| ringxfer::KvStore::create_shared(shared, config)).py()?;
        Ok(KvStore {
            store: Mutex::new(Some(store)),
        })
    }

    /// Stores the bytes `value` names under `key` (replacing an older value).
    fn set(&self, py: Python<'_>, key: String, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = desc(value)?;
        self.with(py, |s| s.set(&key, value).py())
    }

    /// Reads the value of `key` into the memory `out` names; its length, or `None`.
    fn get(&self, py: Python<'_>, key: String, out: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
        let out = desc(out)?;
        self.with(py, |s| s.get(&key, out).py())
    }

    /// `set` for each `(key, value)`.
    fn batch_set(&self, py: Python<'_>, items: Vec<(String, Bound<'_, PyAny>)>) -> PyResult<()> {
        let items = items
            .iter()
            .map(|(k, v)| Ok((k.as_str(), desc(v)?)))
            .collect::<PyResult<Vec<_>>>()?;
        self.with(py, |s| s.batch_set(&items).py())
    }

    /// `get` for each `(key, out)`: a list of lengths (`None` where absent).
    fn batch_get(&self, py: Python<'_>, items: Vec<(String, Bound<'_, PyAny>)>) -> PyResult<Vec<Option<u64>>> {
        let items = items
            .iter()
            .map(|(k, v)| Ok((k.as_str(), desc(v)?)))
            .collect::<PyResult<Vec<_>>>()?;
        self.with(py, |s| {
            let mut lens = vec![None; items.len()];
            s.batch_get(&items, &mut lens).py()?;
            Ok(lens)
        })
    }

    fn exists(&self, py: Python<'_>, key: String) -> PyResult<bool> {
        self.with(py, |s| Ok(s.exists(&key)))
    }

    /// Removes `key`; whether it was there.
    fn remove(&self, py: Python<'_>, key: String) -> PyResult<bool> {
        self.with(py, |s| Ok(s.remove(&key)))
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| Ok(s.len()))
    }

    /// How many values fit.
    #[getter]
    fn capacity(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| Ok(s.capacity()))
    }

    /// Deregisters the files and lets go of the engine.
    fn close(&self, py: Python<'_>) {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner()).take();
        py.detach(move || drop(store));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }
}
