//! Any bytes as a value found under a cluster key: decoding never panics, whatever
//! decodes is exactly a header, the version and a metadata blob that decodes, and it
//! re-encodes to the same bytes.
//!
//! Each input is tried as a whole value (a foreign value, a cut header) and behind a
//! correct header (reaching the metadata blob's own checks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringxfer::wire::cluster_value::{MAGIC, decode, encode};
use ringxfer::wire::metadata::Metadata;

fn check(value: &[u8]) {
    let Ok((version, blob, md)) = decode(value) else { return };
    assert_eq!(&value[..4], MAGIC);
    assert_eq!(value[4..12], version.to_le_bytes());
    assert_eq!(blob, &value[12..]);
    assert_eq!(Metadata::decode(blob), Ok(md));
    assert_eq!(encode(version, blob), value, "the encoding is canonical");
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut value = MAGIC.to_vec();
    value.extend_from_slice(&7u64.to_le_bytes());
    value.extend_from_slice(data);
    check(&value);
});
