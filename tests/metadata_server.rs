//! The metadata server: a shared secret, clients served concurrently with a bound and
//! a timeout, and `GET /metrics`; `Engine::metrics` without allocating.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringxfer::{Config, Engine, Error, MAX_CLIENTS};

fn engine(name: &str, secret: Option<&str>) -> Engine {
    Engine::new(Config {
        name: name.into(),
        capacity: 16,
        metadata_secret: secret.map(Into::into),
        ..Config::default()
    })
    .unwrap()
}

fn refused(r: Result<ringxfer::PeerId, Error>) -> bool {
    matches!(
        r,
        Err(Error::Io {
            kind: std::io::ErrorKind::PermissionDenied,
            ..
        })
    )
}

#[test]
fn a_secret_is_asked_and_checked() {
    let a = engine("a", Some("s3cret"));
    let server = a.serve_metadata("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    let friend = engine("friend", Some("s3cret"));
    friend.fetch_peer(addr).expect("the same secret");
    let stranger = engine("stranger", None);
    assert!(refused(stranger.fetch_peer(addr)), "no secret");
    let wrong = engine("wrong", Some("guess"));
    assert!(refused(wrong.fetch_peer(addr)), "a wrong secret");
    assert!(refused(wrong.fetch_peer(addr)));
    assert_eq!(server.refused(), 3);
    assert_eq!(server.served(), 1);
    assert_eq!(stranger.stats().peers, 0);

    // A secret never shows in a logged Config.
    let config = Config {
        metadata_secret: Some("s3cret".into()),
        ..Config::default()
    };
    assert!(!format!("{config:?}").contains("s3cret"));
    // Nor is a blank one accepted.
    let blank = Engine::new(Config {
        metadata_secret: Some("two words".into()),
        ..Config::default()
    });
    assert!(matches!(
        blank,
        Err(Error::InvalidConfig {
            field: "metadata_secret",
            ..
        })
    ));
}

#[test]
fn clients_are_served_concurrently_with_a_bound() {
    let a = engine("bounded", None);
    let server = a.serve_metadata("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    let b = engine("b", None);
    // A client that says nothing does not hold up the next one.
    let silent = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    b.fetch_peer(addr).unwrap();
    assert!(start.elapsed() < Duration::from_secs(4), "served while another stalls");
    drop(silent);

    // With MAX_CLIENTS stalling, one more is closed unanswered (and counted) …
    let stalled: Vec<TcpStream> = (0..MAX_CLIENTS).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.busy() == 0 {
        assert!(Instant::now() < deadline, "the bound never turned a client away");
        let _ = b.fetch_peer(addr);
    }
    // … and once they go, clients are served again.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.fetch_peer(addr).is_err() {
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stalled_client_is_dropped_after_the_timeout() {
    let a = engine("timeout", None);
    let server = a.serve_metadata("127.0.0.1:0").unwrap();
    let mut silent = TcpStream::connect(server.local_addr()).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    let mut byte = [0u8; 1];
    // The server closes the connection once its timeout passes.
    assert_eq!(silent.read(&mut byte).unwrap_or(0), 0);
    let waited = start.elapsed();
    assert!(
        waited >= ringxfer::CLIENT_TIMEOUT - Duration::from_millis(100),
        "{waited:?}"
    );
    assert!(waited < ringxfer::CLIENT_TIMEOUT + Duration::from_secs(5), "{waited:?}");
}

/// An HTTP/1.0 GET of `/metrics`, with an optional bearer token; the response.
fn get_metrics(addr: std::net::SocketAddr, token: Option<&str>) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_are_served_and_written_without_allocating() {
    let a = engine("scraped \"one\"", Some("tok"));
    let region = a.alloc_region(4096).unwrap();
    let h = a
        .prepare(
            ringxfer::Op::Write,
            &[ringxfer::Desc::new(region, 0, 64)],
            a.local_peer(),
            &[ringxfer::Desc::new(region, 64, 64)],
            None,
        )
        .unwrap();
    let server = a.serve_metadata("127.0.0.1:0").unwrap();
    let denied = get_metrics(server.local_addr(), None);
    assert!(denied.starts_with("HTTP/1.0 401"), "{denied}");
    let ok = get_metrics(server.local_addr(), Some("tok"));
    assert!(ok.starts_with("HTTP/1.0 200 OK"), "{ok}");
    assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
    assert!(
        ok.contains("ringxfer_slots_live{engine=\"scraped \\\"one\\\"\"} 1"),
        "{ok}"
    );
    assert!(ok.contains("ringxfer_registrations{engine=\"scraped \\\"one\\\"\"} 1"));

    // Into a caller's buffer: too small says how much is needed.
    let mut small = [0u8; 64];
    let needed = match a.metrics(&mut small) {
        Err(Error::BufferTooSmall { needed, got: 64 }) => needed,
        other => panic!("{other:?}"),
    };
    let mut buf = vec![0u8; needed];
    assert_eq!(a.metrics(&mut buf).unwrap(), needed);
    let text = std::str::from_utf8(&buf).unwrap();
    // Every sample line is `name{labels} value`, every metric has HELP and TYPE.
    let mut names = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(names.insert(name.to_owned()), "{name} twice");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(series.starts_with("ringxfer_") && series.ends_with('}'), "{line}");
        value.parse::<u64>().unwrap();
    }
    assert!(names.len() >= 25, "{names:?}");
    assert!(text.contains("ringxfer_transfers_total{engine=\"scraped \\\"one\\\"\",outcome=\"done\"} 0"));
    a.release(h).unwrap();
}
