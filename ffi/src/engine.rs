//! An engine's lifetime: the opaque `rx_engine`, `rx_engine_new` and `rx_engine_free`.

use ringxfer::{Config, Engine};

use crate::boundary::{guard, need, put};
use crate::config::{config_from, rx_config};
use crate::status::{rx_status, rx_status as S};

/// An engine. Opaque: made by `rx_engine_new`, freed by `rx_engine_free`.
pub struct rx_engine {
    _private: [u8; 0],
}

/// Creates an engine, allocating everything it will use, and writes it to `*out`.
/// `config` NULL means all defaults.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_engine_new(config: *const rx_config, out: *mut *mut rx_engine) -> rx_status {
    guard(|| {
        tri!(need(out));
        // SAFETY: the caller promises NULL or a readable rx_config.
        let c = match unsafe { config.as_ref() } {
            // SAFETY: the caller promises NULL or a NUL-terminated string in each of the
            // config's string fields.
            Some(cfg) => tri!(unsafe { config_from(cfg) }),
            None => Config::default(),
        };
        let engine = rx!(Engine::new(c));
        let ptr = into_raw(engine);
        // SAFETY: checked non-NULL above.
        unsafe { put(out, ptr) }
    })
}

/// Frees an engine: its regions, segments and inbox go with it. NULL is a no-op. The
/// engine must not be in use by another thread, and is dangling afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rx_engine_free(engine: *mut rx_engine) {
    let _ = guard(|| {
        if !engine.is_null() {
            crate::boundary::forget_engine();
            // SAFETY: the caller promises a pointer from rx_engine_new (`Arc::into_raw`),
            // freed once. A cluster still holding the engine keeps it alive.
            drop(unsafe { std::sync::Arc::from_raw(engine.cast::<Engine>().cast_const()) });
        }
        S::RX_OK
    });
}

/// The C view of an engine: an `Arc` the C caller owns until `rx_engine_free` (a
/// cluster joined with `rx_cluster_join` holds another).
fn into_raw(engine: Engine) -> *mut rx_engine {
    std::sync::Arc::into_raw(std::sync::Arc::new(engine))
        .cast_mut()
        .cast::<rx_engine>()
}

/// Hands an engine made in Rust to the C API, as if `rx_engine_new` had made it: for
/// tests and fuzzing that need a configuration C cannot express (the sim transport).
/// Free it with `rx_engine_free`. Cargo feature `testing`; not in the C header.
#[cfg(feature = "testing")]
pub fn engine_from(engine: Engine) -> *mut rx_engine {
    into_raw(engine)
}
