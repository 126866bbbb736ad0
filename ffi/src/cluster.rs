//! Cluster metadata on etcd from C (see `ringxfer::cluster` and `docs/cluster.md`):
//! `rx_cluster_join` registers an engine by name, `rx_cluster_fetch_peer` finds a
//! peer by name and follows it, `rx_cluster_peer` gives its current id,
//! `rx_cluster_free` leaves. In a build without this crate's `etcd` feature every
//! call answers `RX_UNSUPPORTED`.

use std::ffi::c_char;

#[cfg(feature = "etcd")]
use crate::boundary::put;
use crate::boundary::{c_str as text, guard, need};
use crate::engine::rx_engine;
use crate::status::{invalid, rx_status, rx_status as S};

/// Where a cluster's metadata lives. Zero and NULL fields take the defaults.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rx_etcd_config {
    /// Comma-separated etcd endpoints, `host:port` or `http://host:port`; NULL:
    /// "127.0.0.1:2379".
    pub endpoints: *const c_char,
    /// The key prefix engines register under; NULL: "/ringxfer".
    pub namespace_: *const c_char,
    /// The registration lease's time to live in milliseconds (whole seconds, 1 s to
    /// 1 h); 0: 10 s.
    pub ttl_ms: u32,
    /// How long one request to etcd may take, in milliseconds; 0: 2 s.
    pub timeout_ms: u32,
}

/// An engine's membership of a cluster. Opaque: made by `rx_cluster_join`, freed by
/// `rx_cluster_free` (before the engine's `rx_engine_free`; an engine freed first
/// lives on until its cluster is freed).
pub struct rx_cluster {
    _private: [u8; 0],
}

#[cfg(feature = "etcd")]
mod on {
    use std::sync::Arc;
    use std::time::Duration;

    use ringxfer::Engine;
    use ringxfer::cluster::{Cluster, EtcdConfig};

    use super::{rx_cluster, rx_etcd_config, text};
    use crate::engine::rx_engine;
    use crate::status::{invalid, rx_status};

    pub(super) unsafe fn join(
        engine: *mut rx_engine,
        config: Option<&rx_etcd_config>,
    ) -> Result<*mut rx_cluster, rx_status> {
        if engine.is_null() {
            return Err(invalid("engine is NULL"));
        }
        let mut c = EtcdConfig::default();
        if let Some(cfg) = config {
            // SAFETY: the caller promises NULL or NUL-terminated strings.
            if let Some(e) = unsafe { text(cfg.endpoints, "endpoints is not UTF-8") }? {
                c.endpoints = e.split(',').map(|s| s.trim().to_owned()).collect();
            }
            // SAFETY: as above.
            if let Some(ns) = unsafe { text(cfg.namespace_, "namespace is not UTF-8") }? {
                c.namespace = ns.to_owned();
            }
            if cfg.ttl_ms != 0 {
                c.ttl = Duration::from_millis(u64::from(cfg.ttl_ms));
            }
            if cfg.timeout_ms != 0 {
                c.timeout = Duration::from_millis(u64::from(cfg.timeout_ms));
            }
        }
        let raw = engine.cast::<Engine>().cast_const();
        // SAFETY: `rx_engine_new` made the engine with `Arc::into_raw` and the caller
        // promises it is live: one more strong count, then an `Arc` that owns it.
        let shared = unsafe {
            Arc::increment_strong_count(raw);
            Arc::from_raw(raw)
        };
        match Cluster::join(shared, c) {
            Ok(cluster) => Ok(Box::into_raw(Box::new(cluster)).cast::<rx_cluster>()),
            Err(e) => Err(crate::status::fail(&e)),
        }
    }

    pub(super) unsafe fn cluster<'a>(c: *const rx_cluster) -> Result<&'a Cluster, rx_status> {
        // SAFETY: the caller's contract: NULL or a live cluster from `rx_cluster_join`.
        unsafe { c.cast::<Cluster>().as_ref() }.ok_or_else(|| invalid("cluster is NULL"))
    }

    pub(super) unsafe fn free(c: *mut rx_cluster) {
        // SAFETY: the caller promises a pointer from rx_cluster_join, freed once.
        drop(unsafe { Box::from_raw(c.cast::<Cluster>()) });
    }
}

/// Registers `engine` under its name (`rx_config::name`) in the cluster `config`
/// describes (NULL: defaults) and writes the membership to `*out`.
/// `RX_NAME_TAKEN` if another live engine has the name; `RX_METADATA_STORE` if etcd
/// cannot be reached.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_cluster_join(
    engine: *mut rx_engine,
    config: *const rx_etcd_config,
    out: *mut *mut rx_cluster,
) -> rx_status {
    guard(|| {
        tri!(need(out));
        #[cfg(feature = "etcd")]
        {
            // SAFETY: the caller promises NULL or a readable rx_etcd_config, and a
            // live engine.
            let cluster = tri!(unsafe { on::join(engine, config.as_ref()) });
            // SAFETY: checked non-NULL.
            unsafe { put(out, cluster) }
        }
        #[cfg(not(feature = "etcd"))]
        {
            let _ = (engine, config);
            crate::status::unsupported("this build has no etcd support (cargo feature `etcd` of ringxfer-ffi)")
        }
    })
}

/// Loads the engine registered as `name` and follows it (restarts reloaded, a
/// departure makes it lost); writes its peer id to `*out_peer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_cluster_fetch_peer(
    cluster: *const rx_cluster,
    name: *const c_char,
    out_peer: *mut u32,
) -> rx_status {
    // SAFETY: the caller's contract, passed on.
    unsafe { by_name(cluster, name, out_peer, Lookup::Fetch) }
}

/// A followed peer's current id (a new one after it restarted), without asking the
/// store: `RX_PEER_LOST` while it is lost, `RX_UNKNOWN_PEER` if it is not followed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_cluster_peer(
    cluster: *const rx_cluster,
    name: *const c_char,
    out_peer: *mut u32,
) -> rx_status {
    // SAFETY: the caller's contract, passed on.
    unsafe { by_name(cluster, name, out_peer, Lookup::Current) }
}

/// Which of the two name lookups.
#[derive(Clone, Copy)]
enum Lookup {
    Fetch,
    Current,
}

/// A peer id by name, into `*out_peer`.
unsafe fn by_name(cluster: *const rx_cluster, name: *const c_char, out_peer: *mut u32, how: Lookup) -> rx_status {
    guard(|| {
        tri!(need(out_peer));
        // SAFETY: the caller promises NULL or a NUL-terminated string.
        let Some(name) = tri!(unsafe { text(name, "name is not UTF-8") }) else {
            return invalid("name is NULL");
        };
        #[cfg(feature = "etcd")]
        {
            // SAFETY: see `on::cluster`.
            let c = tri!(unsafe { on::cluster(cluster) });
            let peer = rx!(match how {
                Lookup::Fetch => c.fetch_peer(name),
                Lookup::Current => c.peer(name),
            });
            // SAFETY: checked non-NULL.
            unsafe { put(out_peer, peer.0) }
        }
        #[cfg(not(feature = "etcd"))]
        {
            let _ = (cluster, name, how);
            crate::status::unsupported("this build has no etcd support (cargo feature `etcd` of ringxfer-ffi)")
        }
    })
}

/// Leaves the cluster (the registration is revoked) and frees the membership. NULL
/// is a no-op.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_cluster_free(cluster: *mut rx_cluster) {
    let _ = guard(|| {
        #[cfg(feature = "etcd")]
        if !cluster.is_null() {
            // SAFETY: the caller promises a pointer from rx_cluster_join, freed once.
            unsafe { on::free(cluster) };
        }
        #[cfg(not(feature = "etcd"))]
        let _ = cluster;
        S::RX_OK
    });
}
