//! The fabric transport's wire formats: the endpoint description in a peer's
//! metadata and the control messages (HELLO, WELCOME, NOTIFY, ABORT). Arbitrary
//! bytes never panic, never read past their end, and what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringxfer::fabric::fuzz_control(data);
});
