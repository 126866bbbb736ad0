//! Any bytes a client sends the metadata server (an engine with a shared secret),
//! over a real connection: the server never panics or hangs, and answers exactly
//! what the request earns — the engine's metadata only for the protocol line with
//! the right secret, the metrics only for `GET /metrics` with the right bearer
//! token, a refusal (counted) for everything else — and keeps serving.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringxfer::{Config, Engine, MetadataServer};

const SECRET: &str = "s3cret";

struct Served {
    engine: Engine,
    server: MetadataServer,
}

fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        let engine = Engine::new(Config {
            name: "fuzz-metadata".into(),
            capacity: 4,
            metadata_secret: Some(SECRET.into()),
            ..Config::default()
        })
        .unwrap();
        let server = engine.serve_metadata("127.0.0.1:0").unwrap();
        Served { engine, server }
    })
}

fuzz_target!(|request: &[u8]| {
    let s = served();
    let mut conn = TcpStream::connect(s.server.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server reads at most 32 lines' worth; a peer may close early on a flood.
    let _ = conn.write_all(request);
    let _ = conn.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    if let Err(e) = conn.read_to_end(&mut reply) {
        assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "the server stalled: {e}"
        );
        return;
    }
    // What the server reads: one line of at most 1024 bytes, which must be UTF-8.
    let head = &request[..request.len().min(1024)];
    let line = match head.iter().position(|&b| b == b'\n') {
        Some(end) => &head[..end],
        None => head,
    };
    let line = std::str::from_utf8(line).ok().map(|l| l.trim_end_matches(['\r', '\n']));
    let earns_metadata = line
        .and_then(|l| l.strip_prefix("RINGXFER-METADATA 1"))
        .is_some_and(|rest| rest.trim() == SECRET);
    if earns_metadata {
        // The right secret: the engine's metadata, which a peer can load.
        assert!(reply.len() >= 4, "no reply to the right secret");
        let len = u32::from_le_bytes(reply[..4].try_into().unwrap()) as usize;
        assert_eq!(len, reply.len() - 4);
        assert!(s.engine.local_metadata().unwrap() == reply[4..]);
    } else if line.is_some_and(|l| l.starts_with("GET /metrics")) {
        if !reply.is_empty() {
            assert!(
                reply.starts_with(b"HTTP/1.0 "),
                "metrics reply: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
    } else if !reply.is_empty() {
        // Anything else is refused, never answered with the metadata.
        assert_eq!(
            reply,
            u32::MAX.to_le_bytes(),
            "request {:?}",
            String::from_utf8_lossy(request)
        );
    }
});
