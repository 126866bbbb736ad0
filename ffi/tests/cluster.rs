//! The cluster from C (`rx_cluster_*`, feature `etcd`) against an etcd server of the
//! test's own: join, find a peer by name, a duplicate name, bad arguments, and an
//! engine freed before its cluster.

#![cfg(feature = "etcd")]

use std::ffi::CString;
use std::ptr;

use ringxfer_ffi::*;

#[path = "../../tests/support/skip.rs"]
mod skip;

#[path = "../../tests/support/etcd_server.rs"]
mod etcd_server;
use etcd_server::Etcd;

fn engine(name: &CString) -> *mut rx_engine {
    let mut cfg = std::mem::MaybeUninit::<rx_config>::uninit();
    // SAFETY: a writable rx_config.
    assert_eq!(unsafe { rx_config_default(cfg.as_mut_ptr()) }, rx_status::RX_OK);
    // SAFETY: initialised by rx_config_default.
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.name = name.as_ptr();
    let mut e = ptr::null_mut();
    // SAFETY: a valid config whose name outlives the call.
    assert_eq!(unsafe { rx_engine_new(&cfg, &mut e) }, rx_status::RX_OK);
    e
}

#[test]
fn engines_join_and_find_each_other_by_name_from_c() {
    let Some(etcd) = Etcd::start() else { return };
    let endpoints = CString::new(etcd.client_url.clone()).unwrap();
    let ns = CString::new("/c").unwrap();
    let config = rx_etcd_config {
        endpoints: endpoints.as_ptr(),
        namespace_: ns.as_ptr(),
        ttl_ms: 2000,
        timeout_ms: 1000,
    };
    let (na, nb) = (CString::new("a").unwrap(), CString::new("b").unwrap());
    let (a, b) = (engine(&na), engine(&nb));
    let (mut ca, mut cb) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: live engines, a valid config, writable outputs (for every call below).
    unsafe {
        assert_eq!(rx_cluster_join(a, &config, &mut ca), rx_status::RX_OK);
        assert_eq!(rx_cluster_join(b, &config, &mut cb), rx_status::RX_OK);
        let mut peer = u32::MAX;
        assert_eq!(rx_cluster_fetch_peer(ca, nb.as_ptr(), &mut peer), rx_status::RX_OK);
        let mut again = u32::MAX;
        assert_eq!(rx_cluster_peer(ca, nb.as_ptr(), &mut again), rx_status::RX_OK);
        assert_eq!(again, peer);

        // A second live "b", someone nobody registered, bad arguments.
        let b2 = engine(&nb);
        let mut c2 = ptr::null_mut();
        assert_eq!(rx_cluster_join(b2, &config, &mut c2), rx_status::RX_NAME_TAKEN);
        assert!(c2.is_null());
        rx_engine_free(b2);
        let nobody = CString::new("nobody").unwrap();
        assert_eq!(
            rx_cluster_fetch_peer(ca, nobody.as_ptr(), &mut peer),
            rx_status::RX_METADATA_STORE
        );
        assert_eq!(
            rx_cluster_peer(ca, nobody.as_ptr(), &mut peer),
            rx_status::RX_UNKNOWN_PEER
        );
        assert_eq!(
            rx_cluster_fetch_peer(ca, ptr::null(), &mut peer),
            rx_status::RX_INVALID_ARGUMENT
        );
        assert_eq!(
            rx_cluster_fetch_peer(ptr::null(), nb.as_ptr(), &mut peer),
            rx_status::RX_INVALID_ARGUMENT
        );
        assert_eq!(
            rx_cluster_join(ptr::null_mut(), &config, &mut c2),
            rx_status::RX_INVALID_ARGUMENT
        );
        let unreachable = CString::new("127.0.0.1:1").unwrap();
        let bad = rx_etcd_config {
            endpoints: unreachable.as_ptr(),
            timeout_ms: 300,
            ..config
        };
        assert_eq!(rx_cluster_join(a, &bad, &mut c2), rx_status::RX_METADATA_STORE);

        // An engine freed before its cluster lives on until the cluster goes.
        rx_engine_free(b);
        assert_eq!(rx_cluster_peer(ca, nb.as_ptr(), &mut again), rx_status::RX_OK);
        rx_cluster_free(cb);
        rx_cluster_free(ca);
        rx_cluster_free(ptr::null_mut());
        rx_engine_free(a);
    }
}
