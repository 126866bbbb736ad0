//! Any bytes as a metadata blob: decoding never panics, and whatever decodes is
//! canonical — it re-encodes to the very same bytes and decodes to an equal value.
//!
//! Each input is tried twice: as a whole blob (exercising the header checks), and as a
//! body behind a correct header (exercising the body parser, which a fuzzer could not
//! otherwise reach past the checksum).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringxfer::wire::metadata::{MAGIC, Metadata, VERSION};

/// CRC-32 (IEEE, reflected), bit by bit: the checksum the format specifies.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// `body` behind a correct header.
fn seal(body: &[u8]) -> Option<Vec<u8>> {
    let total = u32::try_from(body.len().checked_add(16)?).ok()?;
    let mut blob = MAGIC.to_vec();
    blob.extend_from_slice(&VERSION.to_le_bytes());
    blob.extend_from_slice(&0u16.to_le_bytes());
    blob.extend_from_slice(&total.to_le_bytes());
    blob.extend_from_slice(&crc32(body).to_le_bytes());
    blob.extend_from_slice(body);
    Some(blob)
}

fn check(data: &[u8]) {
    let Ok(md) = Metadata::decode(data) else { return };
    let blob = md
        .encode()
        .expect("a decoded blob is within every limit, so it encodes");
    assert_eq!(blob, data, "the encoding is canonical");
    assert_eq!(Metadata::decode(&blob), Ok(md));
    if let Some((_, shorter)) = data.split_last() {
        assert!(
            Metadata::decode(shorter).is_err(),
            "a valid blob cut short must not decode"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(sealed) = seal(data) {
        check(&sealed);
    }
});
