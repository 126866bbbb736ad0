//! Every path of the slot ring's state machine, one test each.

use ringxfer::Error;
use ringxfer::ring::{CancelResult, FailCode, FailSource, Handle, Outcome, Released, SlotRing, Status};

fn ring(capacity: usize) -> SlotRing<u64> {
    SlotRing::new(capacity).unwrap()
}

#[test]
fn success_path_returns_the_slot_at_the_next_generation() {
    let r = ring(1);
    let h = r.acquire().unwrap();
    assert_eq!((h.index(), h.generation()), (0, 1));
    assert_eq!(r.status(h).unwrap(), Status::Reserved);
    r.post(h).unwrap();
    assert_eq!(r.status(h).unwrap(), Status::Posted);
    assert!(r.complete(h, Outcome::Done));
    assert_eq!(r.status(h).unwrap(), Status::Done);
    assert_eq!(r.release(h).unwrap(), Released::Freed);
    let next = r.acquire().unwrap();
    assert_eq!((next.index(), next.generation()), (0, 2));
    let s = r.stats();
    assert_eq!((s.live, s.acquired, s.freed, s.done, s.high_water), (1, 2, 1, 1, 1));
}

#[test]
fn full_ring_is_refused_at_once_and_recovers() {
    let r = ring(4);
    let hs: Vec<Handle> = (0..4).map(|_| r.acquire().unwrap()).collect();
    assert_eq!(r.acquire(), Err(Error::RingFull { capacity: 4 }));
    r.release(hs[2]).unwrap();
    let again = r.acquire().unwrap();
    assert_eq!(again.index(), hs[2].index());
    assert_eq!(again.generation(), hs[2].generation() + 1);
}

#[test]
fn free_slots_are_reused_in_fifo_order() {
    let r = ring(4);
    let order: Vec<u32> = (0..8)
        .map(|_| {
            let h = r.acquire().unwrap();
            r.release(h).unwrap();
            h.index()
        })
        .collect();
    assert_eq!(order, [0, 1, 2, 3, 0, 1, 2, 3]);
}

#[test]
fn a_released_handle_is_stale_everywhere() {
    let r = ring(2);
    let h = r.acquire().unwrap();
    r.release(h).unwrap();
    let stale = Error::StaleHandle { handle: h };
    assert_eq!(r.release(h), Err(stale.clone()), "double release");
    assert_eq!(r.post(h), Err(stale.clone()));
    assert_eq!(r.status(h), Err(stale.clone()));
    assert_eq!(r.cancel(h), Err(stale));
    assert!(!r.complete(h, Outcome::Done));
    assert_eq!(r.stats().stale_completions, 1);
    assert_eq!(r.stats().live, 0);
}

#[test]
fn a_stale_handle_never_touches_the_slots_next_transfer() {
    let r = ring(1);
    let old = r.acquire().unwrap();
    r.post(old).unwrap();
    assert!(r.complete(old, Outcome::Done));
    r.release(old).unwrap();
    let new = r.acquire().unwrap();
    assert_eq!(new.index(), old.index());
    r.post(new).unwrap();
    // A late completion and a late release of the old transfer must not reach the new one.
    assert!(!r.complete(old, Outcome::Failed(FailCode::TIMEOUT)));
    assert!(r.release(old).is_err());
    assert!(r.cancel(old).is_err());
    assert_eq!(r.status(new).unwrap(), Status::Posted);
    assert!(r.complete(new, Outcome::Done));
}

#[test]
fn forged_and_malformed_handles_are_rejected() {
    let r = ring(4);
    let h = r.acquire().unwrap();
    let newer = Handle::new(h.index(), h.generation() + 1).unwrap();
    assert_eq!(r.status(newer), Err(Error::StaleHandle { handle: newer }));
    assert!(!r.complete(newer, Outcome::Done));
    let never_acquired = Handle::new(3, 1).unwrap();
    assert_eq!(
        r.release(never_acquired),
        Err(Error::StaleHandle { handle: never_acquired })
    );
    let out_of_range = Handle::new(4, 1).unwrap();
    assert_eq!(
        r.post(out_of_range),
        Err(Error::InvalidHandle {
            handle: out_of_range,
            capacity: 4
        })
    );
    assert_eq!(
        r.status(Handle::NULL),
        Err(Error::InvalidHandle {
            handle: Handle::NULL,
            capacity: 4
        })
    );
    assert!(!r.complete(Handle::NULL, Outcome::Done));
    assert_eq!(r.status(h).unwrap(), Status::Reserved, "the real transfer is untouched");
    assert_eq!(r.stats().stale_completions, 2);
}

#[test]
fn posting_twice_or_completing_unposted_is_refused() {
    let r = ring(2);
    let h = r.acquire().unwrap();
    assert!(!r.complete(h, Outcome::Done), "a transfer not posted cannot complete");
    r.post(h).unwrap();
    assert!(matches!(r.post(h), Err(Error::WrongState { operation: "post", .. })));
    let msg = r.post(h).unwrap_err().to_string();
    assert!(msg.contains("cannot post transfer 0@1: it is posted"), "{msg}");
}

#[test]
fn release_while_posted_detaches_and_the_completion_frees() {
    let r = ring(2);
    let h = r.acquire().unwrap();
    r.post(h).unwrap();
    assert_eq!(r.release(h).unwrap(), Released::Detached);
    assert_eq!(r.stats().live, 1, "the transport may still touch the slot");
    assert_eq!(r.status(h), Err(Error::StaleHandle { handle: h }));
    assert_eq!(r.release(h), Err(Error::StaleHandle { handle: h }), "double release");
    assert!(r.complete(h, Outcome::Failed(FailCode::new(FailSource::Errno, 5))));
    let s = r.stats();
    assert_eq!((s.live, s.failed, s.freed), (0, 1, 1));
    assert!(!r.complete(h, Outcome::Done), "only one completion");
}

#[test]
fn cancel_by_state() {
    let r = ring(4);
    let reserved = r.acquire().unwrap();
    assert_eq!(r.cancel(reserved).unwrap(), CancelResult::Cancelled);
    assert_eq!(r.status(reserved).unwrap(), Status::Cancelled);
    assert!(r.post(reserved).is_err(), "a cancelled transfer cannot be posted");
    assert_eq!(r.cancel(reserved).unwrap(), CancelResult::AlreadyComplete);
    r.release(reserved).unwrap();

    let posted = r.acquire().unwrap();
    r.post(posted).unwrap();
    assert_eq!(r.cancel(posted).unwrap(), CancelResult::InFlight);
    assert_eq!(r.status(posted).unwrap(), Status::Posted, "only the transport ends it");
    assert!(r.complete(posted, Outcome::Cancelled));
    assert!(!r.complete(posted, Outcome::Done), "the racing real completion loses");
    r.release(posted).unwrap();
    let s = r.stats();
    assert_eq!((s.cancelled, s.done, s.stale_completions, s.live), (2, 0, 1, 0));
}

#[test]
fn failure_codes_survive_in_the_state_word() {
    let r = ring(2);
    for code in [
        FailCode::TIMEOUT,
        FailCode::PEER_LOST,
        FailCode::new(FailSource::Transport(ringxfer::TransportId::CUDA), 719),
    ] {
        let h = r.acquire().unwrap();
        r.post(h).unwrap();
        assert!(r.complete(h, Outcome::Failed(code)));
        assert_eq!(r.status(h).unwrap(), Status::Failed(code));
        r.release(h).unwrap();
    }
}

#[test]
fn slots_retire_at_the_last_generation_instead_of_wrapping() {
    let r: SlotRing<u64> = SlotRing::with_generation_limit(2, 3).unwrap();
    let mut issued = std::collections::HashSet::new();
    loop {
        match r.acquire() {
            Ok(h) => {
                assert!(h.generation() <= 3);
                assert!(issued.insert(h), "{h} issued twice");
                r.post(h).unwrap();
                r.release(h).unwrap(); // detached path
                assert!(r.complete(h, Outcome::Done));
            }
            Err(e) => {
                assert_eq!(e, Error::RingFull { capacity: 2 });
                break;
            }
        }
    }
    assert_eq!(issued.len(), 6, "3 generations × 2 slots");
    let s = r.stats();
    assert_eq!((s.retired, s.live, s.acquired, s.freed), (2, 0, 6, 6));
}

#[test]
fn a_panicking_initialiser_does_not_leak_the_slot() {
    let r: SlotRing<Vec<u8>> = SlotRing::new(1).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = r.acquire_with(|_| panic!("caller bug"));
    }));
    assert!(caught.is_err());
    assert_eq!(r.stats().live, 0);
    let h = r.acquire_with(|v| v.push(7)).unwrap();
    assert_eq!(
        h.generation(),
        1,
        "the abandoned acquire never produced a handle, so it burnt no generation"
    );
    // SAFETY: this test owns `h`, which stays reserved while the reference lives.
    assert_eq!(unsafe { r.context(h) }.unwrap(), &[7]);
}

#[test]
fn contexts_are_preallocated_and_reused() {
    let r: SlotRing<Vec<u8>> = SlotRing::with_contexts(2, |_| Vec::with_capacity(16)).unwrap();
    let h = r
        .acquire_with(|v| {
            v.clear();
            v.extend_from_slice(b"abc")
        })
        .unwrap();
    // SAFETY: this test is the only owner of the reserved handle.
    unsafe { r.context_mut(h) }.unwrap().push(b'd');
    r.post(h).unwrap();
    // SAFETY: posted, not released, and nobody mutates it meanwhile.
    assert_eq!(unsafe { r.context(h) }.unwrap(), b"abcd");
    // SAFETY: the call fails before creating a reference: the slot is not reserved.
    assert!(matches!(unsafe { r.context_mut(h) }, Err(Error::WrongState { .. })));
}

#[test]
fn bad_capacities_are_refused() {
    for capacity in [0, 3, 1000, (1 << 20) + 1, 1 << 21] {
        assert!(
            matches!(SlotRing::<u8>::new(capacity), Err(Error::InvalidCapacity { .. })),
            "{capacity}"
        );
    }
    assert!(SlotRing::<u8>::new(1 << 20).is_ok());
}

#[test]
fn a_failing_initialiser_gives_the_slot_back_untouched() {
    let r: SlotRing<u64> = SlotRing::new(1).unwrap();
    assert_eq!(
        r.acquire_try(|_| Err::<(), Error>(Error::RingFull { capacity: 0 })),
        Err(Error::RingFull { capacity: 0 })
    );
    let s = r.stats();
    assert_eq!((s.live, s.acquired, s.freed), (0, 1, 1));
    assert_eq!(r.acquire().unwrap().generation(), 1);
}

#[test]
fn unpost_takes_a_post_back_or_cancels_a_detached_one() {
    let r: SlotRing<u64> = SlotRing::new(2).unwrap();
    let h = r.acquire().unwrap();
    r.post(h).unwrap();
    assert!(r.unpost_with(h, |_| panic!("not freed")));
    assert_eq!(r.status(h).unwrap(), Status::Reserved);
    // Released while posted (detached): the unpost completes it CANCELLED and frees it.
    r.post(h).unwrap();
    assert_eq!(r.release(h).unwrap(), Released::Detached);
    let mut reclaimed = false;
    assert!(!r.unpost_with(h, |_| reclaimed = true));
    assert!(reclaimed);
    let s = r.stats();
    assert_eq!((s.live, s.cancelled), (0, 1));
}

#[test]
fn an_expired_transfer_reads_failed_but_stays_held_until_its_completion() {
    let ring = SlotRing::<u32>::new(4).unwrap();
    let h = ring.acquire().unwrap();
    assert!(!ring.expire(h, FailCode::TIMEOUT), "only a posted transfer expires");
    ring.post(h).unwrap();
    assert!(ring.expire(h, FailCode::TIMEOUT));
    assert_eq!(ring.status(h).unwrap(), Status::Failed(FailCode::TIMEOUT));
    assert_eq!(ring.cancel(h).unwrap(), CancelResult::AlreadyComplete);
    assert_eq!(
        ring.release(h).unwrap(),
        Released::Detached,
        "the transport still holds it"
    );
    assert_eq!(ring.stats().live, 1);
    assert!(ring.complete(h, Outcome::Done), "its late completion frees it");
    assert_eq!(ring.stats().live, 0);
    assert!(!ring.complete(h, Outcome::Done), "and only once");

    // Completed before its owner released it: FAILED with the expiry's code.
    let h = ring.acquire().unwrap();
    ring.post(h).unwrap();
    assert!(ring.expire(h, FailCode::PEER_LOST));
    assert!(ring.complete(h, Outcome::Done));
    assert_eq!(ring.status(h).unwrap(), Status::Failed(FailCode::PEER_LOST));
    assert_eq!(ring.release(h).unwrap(), Released::Freed);
    assert_eq!(ring.stats().live, 0);
}
