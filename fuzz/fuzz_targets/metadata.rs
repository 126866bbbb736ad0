//! Any bytes as a metadata blob: decoding never panics, and whatever decodes is
//! canonical — it re-encodes to the very same bytes and decodes to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringxfer::wire::metadata::Metadata;

fuzz_target!(|data: &[u8]| {
    let Ok(md) = Metadata::decode(data) else { return };
    let blob = md.encode().expect("a decoded blob is within every limit, so it encodes");
    assert_eq!(blob, data, "the encoding is canonical");
    assert_eq!(Metadata::decode(&blob), Ok(md));
    if let Some((_, shorter)) = data.split_last() {
        assert!(Metadata::decode(shorter).is_err(), "a valid blob cut short must not decode");
    }
});
