//! `include/ringxfer.h` is what cbindgen generates from this crate now: a stale
//! committed header fails here. `RINGXFER_BLESS=1` rewrites it instead.

use std::path::Path;

#[test]
fn the_committed_header_is_fresh() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write(&mut generated);
    let path = crate_dir.join("include/ringxfer.h");
    if std::env::var_os("RINGXFER_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "ffi/include/ringxfer.h is stale: run `RINGXFER_BLESS=1 cargo test -p ringxfer-ffi --test header` and commit it"
    );
}
