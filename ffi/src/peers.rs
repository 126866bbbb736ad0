//! Metadata and peers: this engine's metadata blob, loading a peer from its blob or
//! from its metadata server, and serving this engine's metadata over TCP.

use std::ffi::c_char;

use ringxfer::MetadataServer;

use crate::boundary::{c_str, engine, guard, need, put, slice, slice_mut};
use crate::engine::rx_engine;
use crate::status::{self, invalid, rx_status, rx_status as S};

/// A running metadata server (`rx_serve_metadata`); stops when freed.
pub struct rx_metadata_server {
    _private: [u8; 0],
}

/// A metadata server's address ("host:port") from C: NULL or not UTF-8 is
/// `RX_INVALID_ARGUMENT`.
///
/// # Safety
/// A non-NULL `addr` points to a NUL-terminated string that lives for `'a`.
unsafe fn address<'a>(addr: *const c_char) -> Result<&'a str, rx_status> {
    // SAFETY: the caller promises NULL or a NUL-terminated string.
    unsafe { c_str(addr, "addr is not UTF-8") }?.ok_or_else(|| invalid("addr is NULL"))
}

/// Copies this engine's metadata blob into `buf` and its length to `*out_len`. If `cap`
/// is too small the call returns `RX_BUFFER_TOO_SMALL` and — the one exception to
/// "outputs only on success" — writes the size needed to `*out_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_local_metadata(
    engine: *const rx_engine,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> rx_status {
    guard(|| {
        tri!(need(out_len));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        let blob = rx!(e.local_metadata());
        if blob.len() > cap {
            status::set_last_error(format_args!("metadata needs {} bytes, buffer has {cap}", blob.len()));
            // SAFETY: checked non-NULL.
            unsafe { out_len.write(blob.len()) };
            return S::RX_BUFFER_TOO_SMALL;
        }
        // SAFETY: the caller promises `cap` writable bytes.
        let out = tri!(unsafe { slice_mut(buf, cap) });
        out[..blob.len()].copy_from_slice(&blob);
        // SAFETY: checked non-NULL.
        unsafe { put(out_len, blob.len()) }
    })
}

/// Loads (or reloads) a peer from its metadata blob; its id goes to `*out_peer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_load_peer(
    engine: *const rx_engine,
    blob: *const u8,
    len: usize,
    out_peer: *mut u32,
) -> rx_status {
    guard(|| {
        tri!(need(out_peer));
        // SAFETY: see `engine` and `slice`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller's buffer contract (see `slice`).
        let blob = tri!(unsafe { slice(blob, len) });
        let peer = rx!(e.load_peer(blob));
        // SAFETY: checked non-NULL.
        unsafe { put(out_peer, peer.0) }
    })
}

/// Forgets a loaded peer: its id names nothing from now on (`RX_UNKNOWN_PEER`), and
/// what the engine holds to reach it (mappings, its inbox lane) is let go once no
/// transfer uses it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_unload_peer(engine: *const rx_engine, peer: u32) -> rx_status {
    guard(|| {
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        rx!(e.unload_peer(ringxfer::PeerId(peer)));
        rx_status::RX_OK
    })
}

/// Fetches a peer's metadata from its metadata server at `addr` ("host:port") and
/// loads it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_fetch_peer(engine: *const rx_engine, addr: *const c_char, out_peer: *mut u32) -> rx_status {
    guard(|| {
        tri!(need(out_peer));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller promises NULL or a NUL-terminated string.
        let addr = tri!(unsafe { address(addr) });
        let peer = rx!(e.fetch_peer(addr));
        // SAFETY: checked non-NULL.
        unsafe { put(out_peer, peer.0) }
    })
}

/// Serves this engine's metadata over TCP at `addr` (e.g. "127.0.0.1:0") until the
/// server is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_serve_metadata(
    engine: *const rx_engine,
    addr: *const c_char,
    out: *mut *mut rx_metadata_server,
) -> rx_status {
    guard(|| {
        tri!(need(out));
        // SAFETY: see `engine`.
        let e = tri!(unsafe { self::engine(engine) });
        // SAFETY: the caller promises NULL or a NUL-terminated string.
        let addr = tri!(unsafe { address(addr) });
        let server = rx!(e.serve_metadata(addr));
        let ptr = Box::into_raw(Box::new(server)).cast::<rx_metadata_server>();
        // SAFETY: checked non-NULL.
        unsafe { put(out, ptr) }
    })
}

/// Writes the server's "ip:port" (NUL-terminated) into `buf`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_metadata_server_addr(
    server: *const rx_metadata_server,
    buf: *mut c_char,
    cap: usize,
) -> rx_status {
    guard(|| {
        // SAFETY: the caller promises NULL or a live server from rx_serve_metadata.
        let Some(server) = (unsafe { server.cast::<MetadataServer>().as_ref() }) else {
            return invalid("server is NULL");
        };
        let mut text = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{}", server.local_addr()));
        let n = cursor.position() as usize;
        if n + 1 > cap {
            status::set_last_error(format_args!("the address needs {} bytes", n + 1));
            return S::RX_BUFFER_TOO_SMALL;
        }
        // SAFETY: the caller promises `cap` writable bytes.
        let out = tri!(unsafe { slice_mut(buf.cast::<u8>(), cap) });
        out[..n].copy_from_slice(&text[..n]);
        out[n] = 0;
        S::RX_OK
    })
}

/// Stops and frees a metadata server. NULL is a no-op.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_metadata_server_free(server: *mut rx_metadata_server) {
    let _ = guard(|| {
        if !server.is_null() {
            // SAFETY: the caller promises a pointer from rx_serve_metadata, freed once.
            drop(unsafe { Box::from_raw(server.cast::<MetadataServer>()) });
        }
        S::RX_OK
    });
}
