//! Any `u64` from C or the wire: decoding never panics, and a handle rebuilt from its
//! parts is the same handle whenever the parts are in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringxfer::ring::{Handle, SlotRing};

fuzz_target!(|raw: u64| {
    let h = Handle::from_raw(raw);
    let _ = (h.to_string(), format!("{h:?}"));
    match Handle::new(h.index(), h.generation()) {
        Some(rebuilt) => assert_eq!(rebuilt, h),
        None => assert_eq!(h.generation(), 0, "only generation 0 is out of range"),
    }
    // Whatever the value, a ring rejects it without touching anything.
    let ring: SlotRing<u8> = SlotRing::new(4).unwrap();
    assert!(ring.status(h).is_err());
    assert!(!ring.complete(h, ringxfer::ring::Outcome::Done));
    assert_eq!(ring.stats().live, 0);
});
