//! The fabric transport on real libfabric providers (`tcp` and `shm` on loopback).
//!
//! These tests need libfabric (`apt-get install libfabric1`). Without it they fail
//! with the install hint, unless `RINGXFER_SKIP_FABRIC=1` says to skip them.

use std::time::Duration;

use ringxfer::fabric::FabricConfig;
use ringxfer::{Config, Desc, Engine, Error, Op, Status};

const PROVIDERS: [&str; 2] = ["tcp", "shm"];

/// An engine with the fabric transport on `provider`, or `None` when the user asked
/// to skip fabric tests.
fn engine(name: &str, provider: &str, progress_thread: bool) -> Option<Engine> {
    let config = Config {
        name: name.into(),
        capacity: 256,
        fabric: Some(FabricConfig {
            provider: Some(provider.into()),
            progress_thread,
            ..FabricConfig::default()
        }),
        ..Config::default()
    };
    match Engine::new(config) {
        Ok(e) => Some(e),
        Err(e @ Error::FabricUnavailable { .. }) if std::env::var_os("RINGXFER_SKIP_FABRIC").is_some() => {
            eprintln!("skipped (RINGXFER_SKIP_FABRIC is set): {e}");
            None
        }
        Err(e) => panic!("fabric engine on {provider}: {e}"),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn write_and_read_with_notification_in_one_process() {
    for provider in PROVIDERS {
        let Some(a) = engine("a", provider, false) else { return };
        let Some(b) = engine("b", provider, true) else { return };
        let src = a.alloc_region(1 << 20).unwrap();
        let dst = b.alloc_region(1 << 20).unwrap();
        let data = pattern(1 << 20, 7);
        a.write_region(src, 0, &data).unwrap();
        let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();

        let h = a
            .prepare(
                Op::Write,
                &[Desc::new(src, 0, 1 << 20)],
                peer,
                &[Desc::new(dst, 0, 1 << 20)],
                Some(b"kv ready"),
            )
            .unwrap();
        a.post(h).unwrap();
        assert_eq!(a.wait(h, Duration::from_secs(10)).unwrap(), Status::Done, "{provider}");
        a.release(h).unwrap();
        // The notification is delivered only after every write landed.
        let mut note = [0u8; 256];
        let n = loop {
            if let Some(n) = b.pop_notification(&mut note).unwrap() {
                break n;
            }
        };
        assert_eq!(&note[..n.len], b"kv ready");
        assert_eq!(n.handle, h);
        let mut out = vec![0u8; 1 << 20];
        b.read_region(dst, 0, &mut out).unwrap();
        assert!(out == data, "{provider}: bytes differ after WRITE");

        // READ back into another part of a's region.
        let back = a.alloc_region(1 << 20).unwrap();
        let h = a
            .prepare(
                Op::Read,
                &[Desc::new(back, 0, 1 << 20)],
                peer,
                &[Desc::new(dst, 0, 1 << 20)],
                None,
            )
            .unwrap();
        a.post(h).unwrap();
        assert_eq!(a.wait(h, Duration::from_secs(10)).unwrap(), Status::Done, "{provider}");
        a.release(h).unwrap();
        a.read_region(back, 0, &mut out).unwrap();
        assert!(out == data, "{provider}: bytes differ after READ");
        a.check_quiescent().unwrap();
        let s = b.stats().fabric;
        assert_eq!(s.notifications, 1);
        assert_eq!(s.stale, 0);
    }
}
