//! Peer metadata whose local-transport info is arbitrary: `load_peer` must refuse it
//! with a typed error (or load a peer that really exists), never panic, never map a
//! file it should not, and leave the engine's ledger clean. The same bytes, read as a
//! cuda transport's GPU export (which `load_peer` decodes for a peer in another
//! process when both engines have the transport), must parse or be refused, never
//! panic, and round-trip when they parse.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringxfer::wire::metadata::{BackendInfo, BackendKind, Metadata};
use ringxfer::{Config, Engine};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(Config {
            name: "fuzz".into(),
            capacity: 16,
            ..Config::default()
        })
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let (pid, conn) = match data.split_first() {
        // Our own pid half the time, so the in-process path is reached too.
        Some((&b, rest)) if b & 1 == 0 => (std::process::id(), rest),
        Some((_, rest)) => (u32::from_le_bytes([rest.first().copied().unwrap_or(0), 1, 0, 0]), rest),
        None => return,
    };
    let md = Metadata {
        engine_name: "peer".into(),
        engine_id: u64::from(pid) << 32 | 7,
        process_id: pid,
        backends: vec![BackendInfo {
            kind: BackendKind::Local,
            conn: conn.get(..4096).unwrap_or(conn).to_vec(),
        }],
        regions: vec![],
    };
    ringxfer::fuzz_cuda_export(conn);
    let Ok(blob) = md.encode() else { return };
    let e = engine();
    let _ = e.load_peer(&blob);
    let s = e.stats();
    assert_eq!((s.ring.live, s.pins), (0, 0));
});
