//! Metadata over TCP: [`MetadataServer`] serves an engine's blob, [`fetch_metadata`]
//! reads one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Core;
use crate::error::{Error, Result};

/// Serves an engine's metadata over TCP; stops when dropped. See
/// [`Engine::serve_metadata`](crate::Engine::serve_metadata).
pub struct MetadataServer {
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetadataServer {
    /// Serves the metadata of the engine whose core is `core` (held weakly: the
    /// server does not keep a dropped engine's transports open).
    pub(super) fn start(core: Weak<Core>, name: &str, addr: impl std::net::ToSocketAddrs) -> Result<MetadataServer> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| Error::io("binding the metadata server", &e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("binding the metadata server", &e))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("ringxfer-md-{name}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    // A peer that goes away mid-reply only loses its own reply.
                    let blob = core.upgrade().map(|core| core.metadata());
                    if let Some(Ok(blob)) = blob {
                        use std::io::Write;
                        let _ = conn
                            .write_all(&(blob.len() as u32).to_le_bytes())
                            .and_then(|()| conn.write_all(&blob));
                    }
                }
            })
            .map_err(|e| Error::io("starting the metadata server thread", &e))?;
        Ok(MetadataServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one metadata blob from a [`MetadataServer`].
pub fn fetch_metadata(addr: impl std::net::ToSocketAddrs) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut conn =
        std::net::TcpStream::connect(addr).map_err(|e| Error::io("connecting to the metadata server", &e))?;
    let timeout = Some(Duration::from_secs(10));
    let _ = (conn.set_read_timeout(timeout), conn.set_write_timeout(timeout));
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)
        .map_err(|e| Error::io("reading the metadata length", &e))?;
    let len = u32::from_le_bytes(len) as usize;
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
