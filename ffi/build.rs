//! Gives the shared library the SONAME it is installed under (`libringxfer.so.0`), so
//! programs linked against the installed copy find it by that name.

fn main() {
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libringxfer.so.{major}");
}
