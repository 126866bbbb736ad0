//! After a panic inside the engine, it refuses new work with `Error::Poisoned`
//! (`RX_PANIC` in C) instead of going on with tables the panic may have left
//! half-updated; what is in flight can still be watched and released.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use ringxfer::ring::Status;
use ringxfer::{Config, Desc, Engine, Error, Op};

#[test]
fn a_panic_inside_the_engine_poisons_it() {
    let e = Engine::new(Config {
        name: "poison".into(),
        capacity: 16,
        ..Config::default()
    })
    .unwrap();
    let region = e.alloc_region(1 << 16).unwrap();
    let me = e.local_peer();
    let d = |at| Desc::new(region, at, 4096);
    let prepared = e.prepare(Op::Write, &[d(0)], me, &[d(8192)], None).unwrap();
    assert!(!e.is_poisoned());

    assert!(catch_unwind(AssertUnwindSafe(|| e.inject_panic())).is_err());
    assert!(e.is_poisoned(), "a panic with a lock held poisons the engine");

    // New work is refused, with a message that says what to do.
    let err = e.prepare(Op::Write, &[d(0)], me, &[d(8192)], None).unwrap_err();
    assert!(matches!(err, Error::Poisoned), "{err}");
    assert!(err.to_string().contains("make a new one"));
    assert!(matches!(e.post(prepared), Err(Error::Poisoned)));
    assert!(matches!(e.alloc_region(4096), Err(Error::Poisoned)));
    assert!(matches!(
        e.load_peer(&e.local_metadata().unwrap()),
        Err(Error::Poisoned)
    ));
    assert!(matches!(e.deregister(region), Err(Error::Poisoned)));
    // What the caller holds can still be looked at and given back.
    assert_eq!(e.status(prepared).unwrap(), Status::Reserved);
    e.release(prepared).unwrap();
    assert!(matches!(
        e.wait(prepared, Duration::from_millis(1)),
        Err(Error::StaleHandle { .. })
    ));
    e.check_quiescent().unwrap();
}

#[test]
fn poison_is_explicit_too() {
    let e = Engine::new(Config::default()).unwrap();
    e.poison();
    assert!(matches!(e.alloc_region(4096), Err(Error::Poisoned)));
}
