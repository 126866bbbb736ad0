//! Metadata over TCP: [`MetadataServer`] serves an engine's blob (and its metrics),
//! [`fetch_metadata`] reads one.
//!
//! The exchange: the client sends one line, `RINGXFER-METADATA 1 <secret>` (`-` for
//! none); the server answers a 4-byte little-endian length and the blob, or the length
//! `u32::MAX` alone when the secret is wrong or missing. A line starting `GET /metrics`
//! is an HTTP request instead, answered with [`Engine::metrics`](crate::Engine::metrics)
//! (with a secret, its `Authorization: Bearer <secret>` header must match).
//!
//! The blob carries what a peer needs to write into this engine's regions (the
//! fabric's memory keys), so the server binds where it is told (bind loopback or a
//! private interface) and, with a secret (`Config::metadata_secret` or
//! `RINGXFER_METADATA_SECRET`), answers only a client presenting it. Each client is
//! served on a thread of its own, at most [`MAX_CLIENTS`] at once, with a
//! [`CLIENT_TIMEOUT`] for its request and reply.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Core;
use crate::error::{Error, Result};

/// Clients served at once; one more is closed unanswered (and counted).
pub const MAX_CLIENTS: usize = 16;
/// How long a client may take to send its request and read the reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line or header read.
const MAX_LINE: u64 = 1024;
/// The length word that says "refused".
const REFUSED: u32 = u32::MAX;
const PROTOCOL: &str = "RINGXFER-METADATA 1";

/// What a server counts.
#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    busy: AtomicU64,
    served: AtomicU64,
    active: AtomicUsize,
    /// Whether the first refusal was logged (later ones are counted only).
    logged: AtomicBool,
}

/// Serves an engine's metadata over TCP; stops when dropped. See
/// [`Engine::serve_metadata`](crate::Engine::serve_metadata).
pub struct MetadataServer {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetadataServer {
    /// Serves the metadata of the engine whose core is `core` (held weakly: the
    /// server does not keep a dropped engine's transports open), to clients that
    /// present `secret` if there is one.
    pub(super) fn start(
        core: Weak<Core>,
        name: &str,
        secret: Option<String>,
        addr: impl std::net::ToSocketAddrs,
    ) -> Result<MetadataServer> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| Error::io("binding the metadata server", &e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("binding the metadata server", &e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (stopping, count) = (Arc::clone(&stop), Arc::clone(&counters));
        let name = name.to_owned();
        let secret: Arc<Option<String>> = Arc::new(secret);
        let thread = std::thread::Builder::new()
            .name(format!("ringxfer-md-{name}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if count.active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                        count.active.fetch_sub(1, Ordering::AcqRel);
                        count.busy.fetch_add(1, Ordering::Relaxed);
                        continue; // closed unanswered
                    }
                    let client = Client {
                        core: core.clone(),
                        secret: Arc::clone(&secret),
                        counters: Arc::clone(&count),
                        name: name.clone(),
                    };
                    let spawned = std::thread::Builder::new()
                        .name("ringxfer-md-client".into())
                        .spawn(move || client.serve(conn));
                    if spawned.is_err() {
                        count.active.fetch_sub(1, Ordering::AcqRel);
                        count.busy.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .map_err(|e| Error::io("starting the metadata server thread", &e))?;
        Ok(MetadataServer {
            addr,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Clients refused for a wrong or missing secret.
    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// Clients closed unanswered because [`MAX_CLIENTS`] were being served.
    pub fn busy(&self) -> u64 {
        self.counters.busy.load(Ordering::Relaxed)
    }

    /// Requests answered (metadata or metrics).
    pub fn served(&self) -> u64 {
        self.counters.served.load(Ordering::Relaxed)
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One client's connection, served on its own thread.
struct Client {
    core: Weak<Core>,
    secret: Arc<Option<String>>,
    counters: Arc<Counters>,
    name: String,
}

impl Client {
    fn serve(self, conn: TcpStream) {
        let _ = (
            conn.set_read_timeout(Some(CLIENT_TIMEOUT)),
            conn.set_write_timeout(Some(CLIENT_TIMEOUT)),
        );
        // A client that goes away or stalls mid-exchange only loses its own reply.
        let _ = self.answer(conn);
        self.counters.active.fetch_sub(1, Ordering::AcqRel);
    }

    fn answer(&self, conn: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new((&conn).take(MAX_LINE * 32));
        let request = read_line(&mut reader)?;
        if request.starts_with("GET /metrics") {
            return self.metrics(&mut reader, &conn);
        }
        let given = request.strip_prefix(PROTOCOL).map(str::trim);
        let allowed = match (self.secret.as_deref(), given) {
            (_, None) => false, // not this protocol
            (None, Some(_)) => true,
            (Some(secret), Some(given)) => same(secret.as_bytes(), given.as_bytes()),
        };
        let mut out = &conn;
        if !allowed {
            self.refuse();
            return out.write_all(&REFUSED.to_le_bytes());
        }
        let Some(core) = self.core.upgrade() else { return Ok(()) };
        let Ok(blob) = core.metadata() else { return Ok(()) };
        drop(core);
        out.write_all(&(blob.len() as u32).to_le_bytes())?;
        out.write_all(&blob)?;
        self.counters.served.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `GET /metrics`: the headers (for `Authorization`), then the metrics.
    fn metrics(&self, reader: &mut impl BufRead, conn: &TcpStream) -> std::io::Result<()> {
        let mut authorised = self.secret.is_none();
        loop {
            let header = read_line(reader)?;
            if header.is_empty() {
                break;
            }
            if let (Some(secret), Some((key, value))) = (self.secret.as_deref(), header.split_once(':'))
                && key.trim().eq_ignore_ascii_case("authorization")
                && let Some(token) = value.trim().strip_prefix("Bearer ")
            {
                authorised |= same(secret.as_bytes(), token.trim().as_bytes());
            }
        }
        let mut out = conn;
        if !authorised {
            self.refuse();
            return out.write_all(b"HTTP/1.0 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
        }
        let Some(core) = self.core.upgrade() else {
            return out.write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        };
        let stats = core.stats();
        drop(core);
        let mut text = vec![0u8; 16 << 10];
        let len = match super::metrics::write(&self.name, &stats, &mut text) {
            Ok(len) => len,
            Err(Error::BufferTooSmall { needed, .. }) => {
                text.resize(needed, 0);
                super::metrics::write(&self.name, &stats, &mut text).unwrap_or(0)
            }
            Err(_) => 0,
        };
        write!(
            out,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {len}\r\n\r\n"
        )?;
        out.write_all(&text[..len])?;
        self.counters.served.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a refusal; the first is logged on stderr.
    fn refuse(&self) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        if !self.counters.logged.swap(true, Ordering::Relaxed) {
            eprintln!(
                "ringxfer: metadata server of {}: refused a client with a wrong or missing secret \
                 (later refusals are counted, not logged)",
                self.name
            );
        }
    }
}

/// One line, without its line ending (`\n` or `\r\n`); at most `MAX_LINE` bytes.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.take(MAX_LINE).read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Whether two secrets are equal, in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads one metadata blob from a [`MetadataServer`] that needs no secret.
pub fn fetch_metadata(addr: impl std::net::ToSocketAddrs) -> Result<Vec<u8>> {
    fetch_metadata_with(addr, None)
}

/// Reads one metadata blob from a [`MetadataServer`], presenting `secret`. A server
/// that refuses it is `Error::Io` of kind `PermissionDenied`.
pub fn fetch_metadata_with(addr: impl std::net::ToSocketAddrs, secret: Option<&str>) -> Result<Vec<u8>> {
    if secret.is_some_and(|s| s.is_empty() || s.contains(char::is_whitespace)) {
        return Err(Error::InvalidConfig {
            field: "metadata_secret",
            reason: "must be non-empty, without whitespace",
        });
    }
    let mut conn = TcpStream::connect(addr).map_err(|e| Error::io("connecting to the metadata server", &e))?;
    let timeout = Some(Duration::from_secs(10));
    let _ = (conn.set_read_timeout(timeout), conn.set_write_timeout(timeout));
    conn.write_all(format!("{PROTOCOL} {}\n", secret.unwrap_or("-")).as_bytes())
        .map_err(|e| Error::io("sending the metadata request", &e))?;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)
        .map_err(|e| Error::io("reading the metadata length", &e))?;
    let len = u32::from_le_bytes(len);
    if len == REFUSED {
        return Err(Error::Io {
            context: "fetching a peer's metadata",
            kind: std::io::ErrorKind::PermissionDenied,
            message: "the metadata server refused this engine's secret (metadata_secret, RINGXFER_METADATA_SECRET)"
                .into(),
        });
    }
    let len = len as usize;
    if len > crate::wire::metadata::MAX_BLOB_BYTES {
        return Err(crate::wire::metadata::MetadataError::TooLarge {
            what: "served metadata",
            len,
            max: crate::wire::metadata::MAX_BLOB_BYTES,
        }
        .into());
    }
    let mut blob = vec![0; len];
    conn.read_exact(&mut blob)
        .map_err(|e| Error::io("reading the metadata blob", &e))?;
    Ok(blob)
}
