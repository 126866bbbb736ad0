//! Arbitrary operation sequences on a small ring, with any handle (issued, released
//! or forged): no panic, and the ring's books always balance.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringxfer::ring::{FailCode, FailSource, Handle, Outcome, SlotRing, Status};

fuzz_target!(|data: &[u8]| {
    let Some((&config, ops)) = data.split_first() else {
        return;
    };
    let capacity = 1usize << (config & 3);
    let ring: SlotRing<u8> = SlotRing::with_generation_limit(capacity, 1 + u64::from(config >> 3)).unwrap();
    // Bit 2: the one-slot cache of the slot freed last in front of the free list.
    let ring = if config & 4 != 0 { ring.reuse_recent() } else { ring };
    let mut issued: Vec<Handle> = Vec::new();
    for pair in ops.chunks(2) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        let h = if op & 0x80 != 0 {
            Handle::from_raw(u64::from(arg) << 16 | u64::from(op))
        } else {
            issued
                .get(arg as usize % issued.len().max(1))
                .copied()
                .unwrap_or(Handle::NULL)
        };
        match op & 7 {
            0 => {
                if let Ok(h) = ring.acquire() {
                    assert!(!issued.contains(&h), "{h} issued twice");
                    issued.push(h);
                }
            }
            1 => drop(ring.post(h)),
            2 => drop(ring.complete(h, Outcome::Done)),
            3 => drop(ring.complete(h, Outcome::Failed(FailCode::new(FailSource::Errno, u32::from(arg))))),
            4 => drop(ring.complete(h, Outcome::Cancelled)),
            5 => drop(ring.cancel(h)),
            6 => drop(ring.release(h)),
            _ => {
                if let Ok(Status::Failed(code)) = ring.status(h) {
                    assert_eq!(code.source(), FailSource::Errno);
                }
            }
        }
        let s = ring.stats();
        assert_eq!(s.live as u64, s.acquired - s.freed);
        assert!(s.live <= capacity && s.high_water <= capacity);
        assert!(s.done + s.failed + s.cancelled <= s.acquired);
    }
    // Drain: end every transfer and release it; the ring must come back whole.
    for &h in &issued {
        let _ = ring.complete(h, Outcome::Done);
        let _ = ring.release(h);
        let _ = ring.complete(h, Outcome::Done);
    }
    let s = ring.stats();
    assert_eq!(s.live, 0, "{s:?}");
    assert_eq!(s.acquired, s.freed);
});
