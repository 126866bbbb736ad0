//! Any `u64` from C or the wire, against a ring with live transfers: decoding never
//! panics, a handle rebuilt from its parts is the same handle, and a forged handle
//! reaches a transfer only if it is exactly that transfer's handle — every other
//! value (an old or future generation, another index, out of range) is refused by
//! status, cancel, complete and release without touching any live transfer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringxfer::ring::{CancelResult, Handle, Outcome, SlotRing, Status};

fuzz_target!(|input: (u8, u64)| {
    let (cycles, raw) = input;
    let h = Handle::from_raw(raw);
    let _ = (h.to_string(), format!("{h:?}"));
    match Handle::new(h.index(), h.generation()) {
        Some(rebuilt) => assert_eq!(rebuilt, h),
        None => assert_eq!(h.generation(), 0, "only generation 0 is out of range"),
    }
    // Move the generations on, then hold one posted transfer in every slot.
    let ring: SlotRing<u8> = SlotRing::new(4).unwrap();
    for _ in 0..cycles {
        let x = ring.acquire().unwrap();
        ring.release(x).unwrap();
    }
    let live: Vec<Handle> = (0..4)
        .map(|_| {
            let x = ring.acquire().unwrap();
            ring.post(x).unwrap();
            x
        })
        .collect();
    let is_live = live.contains(&h);
    assert_eq!(ring.status(h).is_ok(), is_live);
    assert_eq!(ring.cancel(h).ok() == Some(CancelResult::InFlight), is_live);
    assert_eq!(ring.complete(h, Outcome::Done), is_live);
    for x in &live {
        let expected = if *x == h { Status::Done } else { Status::Posted };
        assert_eq!(ring.status(*x).unwrap(), expected, "a live transfer changed");
    }
    // Released: only the matched one frees its slot; a second release is refused.
    assert_eq!(ring.release(h).is_ok(), is_live);
    assert!(ring.release(h).is_err());
    assert_eq!(ring.stats().live, 4 - usize::from(is_live));
    assert_eq!(ring.stats().stale_completions, u64::from(!is_live));
});
