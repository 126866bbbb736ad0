//! Building an engine with the fabric transport in tests: libfabric missing is a
//! failure with the install hint, unless `RINGXFER_SKIP_FABRIC=1` says to skip.

use ringxfer::{Config, Engine, Error};

/// `Engine::new(config)`, or `None` (said on stderr) when libfabric is unavailable
/// and the user asked to skip fabric tests.
pub fn fabric_engine(config: Config) -> Option<Engine> {
    match Engine::new(config) {
        Ok(e) => Some(e),
        Err(e @ Error::FabricUnavailable { .. }) if std::env::var_os("RINGXFER_SKIP_FABRIC").is_some() => {
            eprintln!("skipped (RINGXFER_SKIP_FABRIC is set): {e}");
            None
        }
        Err(e) => panic!("fabric engine: {e}"),
    }
}
