//! The cuda transport without a GPU.
//!
//! - With no driver (this machine), `Engine::new` with CUDA on returns
//!   `CudaUnavailable`, never a panic.
//! - With the fake driver (`tests/cuda_fake/libcuda.c`, built here with gcc and found
//!   through `LD_LIBRARY_PATH` by cudarc's normal dynamic loading), the test re-runs
//!   itself as a child (`fake_driver_child`): events are created once per slot and
//!   never again over 100,000 transfers, injected record / copy / query failures end
//!   their transfer FAILED with the CUDA code and leave the slot and its event
//!   reusable, and the bytes arrive in the fake device memory.

#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ringxfer::ring::FailSource;
use ringxfer::{Config, CudaConfig, Desc, Engine, Error, Op, Status};

#[path = "support/child.rs"]
mod child;
#[path = "support/counting.rs"]
mod counting;
#[path = "support/skip.rs"]
mod skip;

// Counts every thread's allocations: the hot path through the cuda transport must
// make none.
#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const CAPACITY: usize = 64;

fn config() -> Config {
    Config {
        name: "gpu".into(),
        capacity: CAPACITY,
        cuda: Some(CudaConfig {
            // Set by gpu_vmm_regions_map_across_processes for the processes it runs.
            vmm: std::env::var_os("RINGXFER_TEST_VMM").is_some(),
            ..CudaConfig::default()
        }),
        ..Config::default()
    }
}

#[test]
fn no_driver_is_a_typed_error_not_a_panic() {
    if std::env::var_os("RINGXFER_FAKE_CUDA").is_some() {
        return; // the child runs with the fake driver on its library path
    }
    match Engine::new(config()) {
        Err(Error::CudaUnavailable { reason }) => assert!(reason.contains("libcuda"), "{reason}"),
        Ok(_) => panic!("a CUDA engine came up on a machine with no CUDA driver"),
        Err(e) => panic!("expected CudaUnavailable, got {e}"),
    }
    // The rest of the engine is unaffected.
    let e = Engine::new(Config::default()).unwrap();
    assert!(matches!(e.alloc_vram(4096), Err(Error::CudaUnavailable { .. })));
}

/// Builds the fake driver into a fresh directory as `libcuda.so`, one directory per
/// child: the tests run in parallel, and one removing a shared directory pulled the
/// library from under the other's child.
fn build_fake_driver(child: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringxfer-fake-cuda-{}-{child}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_fake/libcuda.c");
    let status = Command::new("gcc")
        .args([
            "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", "-o",
        ])
        .arg(dir.join("libcuda.so"))
        .arg(&source)
        .status()
        .expect("gcc (apt-get install gcc) builds the fake CUDA driver");
    assert!(status.success(), "building the fake driver failed");
    dir
}

#[test]
fn with_the_fake_driver() {
    run_child("fake_driver_child");
}

#[test]
fn gpu_memory_and_the_fabric_with_the_fake_driver() {
    run_child("fabric_child");
}

/// Runs the ignored test `child` in a child process with the fake driver.
fn run_child(child: &str) {
    run_child_with(child, &[]);
}

/// [`run_child`] with more environment variables for the child.
fn run_child_with(child: &str, env: &[(&str, &str)]) {
    if std::env::var_os("RINGXFER_FAKE_CUDA").is_some() {
        return;
    }
    let dir = build_fake_driver(&format!("{child}{}", env.len()));
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child, "--ignored", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .env("LD_LIBRARY_PATH", &dir)
        .env("RINGXFER_FAKE_CUDA", dir.join("libcuda.so"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the fake-driver child {child} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}\n{stderr}"
    );
    // A child that skipped (no libfabric) says so here too, where it is seen.
    skip::forward_skips(&stderr);
}

/// The fake driver's control functions, found in the same library cudarc loaded.
struct Fake {
    _lib: libloading::Library,
    live: unsafe extern "C" fn() -> i64,
    created: unsafe extern "C" fn() -> i64,
    host_pins: unsafe extern "C" fn() -> i64,
    fail: unsafe extern "C" fn(i32, i64),
    ipc_open: unsafe extern "C" fn() -> i64,
    ipc_opened: unsafe extern "C" fn() -> i64,
    vmm_imports: unsafe extern "C" fn() -> i64,
    copies: unsafe extern "C" fn() -> i64,
    batched: unsafe extern "C" fn() -> i64,
    calls: unsafe extern "C" fn(*const std::ffi::c_char) -> i64,
    calls_reset: unsafe extern "C" fn(),
    set_polls: unsafe extern "C" fn(i32),
    hold: unsafe extern "C" fn(i32),
}

impl Fake {
    fn open() -> Fake {
        let path = std::env::var_os("RINGXFER_FAKE_CUDA").unwrap();
        // SAFETY: the fake driver's constructor-free library, already loaded by cudarc.
        let lib = unsafe { libloading::Library::new(path) }.unwrap();
        // SAFETY: the symbols' types are the fake's C prototypes.
        unsafe {
            Fake {
                live: *lib.get(b"fake_cuda_events_live\0").unwrap(),
                created: *lib.get(b"fake_cuda_events_created\0").unwrap(),
                host_pins: *lib.get(b"fake_cuda_host_pins\0").unwrap(),
                fail: *lib.get(b"fake_cuda_fail\0").unwrap(),
                ipc_open: *lib.get(b"fake_cuda_ipc_open\0").unwrap(),
                ipc_opened: *lib.get(b"fake_cuda_ipc_opened\0").unwrap(),
                vmm_imports: *lib.get(b"fake_cuda_vmm_imports\0").unwrap(),
                copies: *lib.get(b"fake_cuda_copies\0").unwrap(),
                batched: *lib.get(b"fake_cuda_batched\0").unwrap(),
                calls: *lib.get(b"fake_cuda_calls\0").unwrap(),
                calls_reset: *lib.get(b"fake_cuda_calls_reset\0").unwrap(),
                set_polls: *lib.get(b"fake_cuda_set_polls\0").unwrap(),
                hold: *lib.get(b"fake_cuda_hold\0").unwrap(),
                _lib: lib,
            }
        }
    }
    fn live(&self) -> i64 {
        // SAFETY: a plain getter.
        unsafe { (self.live)() }
    }
    fn host_pins(&self) -> i64 {
        // SAFETY: a plain getter.
        unsafe { (self.host_pins)() }
    }
    /// IPC mappings open in this process, and opened since load.
    fn ipc(&self) -> (i64, i64) {
        // SAFETY: plain getters.
        unsafe { ((self.ipc_open)(), (self.ipc_opened)()) }
    }
    /// VMM allocations imported from file descriptors since load.
    fn vmm_imports(&self) -> i64 {
        // SAFETY: a plain getter.
        unsafe { (self.vmm_imports)() }
    }
    /// Copies launched since load.
    fn copies(&self) -> i64 {
        // SAFETY: a plain getter.
        unsafe { (self.copies)() }
    }
    /// Copies made inside batch calls since load.
    fn batched(&self) -> i64 {
        // SAFETY: a plain getter.
        unsafe { (self.batched)() }
    }
    /// Calls of the driver entry point `name` (of all of them for "") since the last
    /// `reset_calls`.
    fn calls(&self, name: &std::ffi::CStr) -> i64 {
        // SAFETY: a NUL-terminated name; the fake only reads it.
        unsafe { (self.calls)(name.as_ptr()) }
    }
    fn reset_calls(&self) {
        // SAFETY: a plain setter.
        unsafe { (self.calls_reset)() }
    }
    /// Queries an event reads NOT_READY before it completes (0: done at once).
    fn set_polls(&self, polls: i32) {
        // SAFETY: a plain setter.
        unsafe { (self.set_polls)(polls) }
    }
    /// While on, no recorded event completes.
    fn hold(&self, on: bool) {
        // SAFETY: a plain setter.
        unsafe { (self.hold)(on as i32) }
    }
    fn created(&self) -> i64 {
        // SAFETY: a plain getter.
        unsafe { (self.created)() }
    }
    /// Makes the next call of `what` fail (1 record, 2 copy, 3 query).
    fn fail_next(&self, what: i32) {
        // SAFETY: a plain setter.
        unsafe { (self.fail)(what, 1) }
    }
}

#[test]
#[ignore = "run by with_the_fake_driver, with the fake libcuda.so on LD_LIBRARY_PATH"]
fn fake_driver_child() {
    let e = Engine::new(config()).unwrap();
    let fake = Fake::open();
    // One event per slot, made at start.
    assert_eq!(fake.live(), CAPACITY as i64);
    assert_eq!(e.stats().cuda_events, CAPACITY);
    let created_at_start = fake.created();

    let host = e.alloc_region(1 << 20).unwrap();
    let back = e.alloc_region(1 << 20).unwrap();
    let gpu = e.alloc_vram(1 << 20).unwrap();
    // Host regions are page-locked for the GPU while registered.
    assert_eq!(fake.host_pins(), 2);
    let extra = e.alloc_region(4096).unwrap();
    assert_eq!(fake.host_pins(), 3);
    e.deregister(extra).unwrap();
    assert_eq!(fake.host_pins(), 2);
    let me = e.local_peer();
    let pattern: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + 3) as u8).collect();
    e.write_region(host, 0, &pattern).unwrap();
    // VRAM is not readable as host memory, nor reachable by peers or files.
    let mut probe = [0u8; 8];
    assert!(matches!(
        e.read_region(gpu, 0, &mut probe),
        Err(Error::InvalidDescriptor { .. })
    ));
    // Nor in a transfer that pairs other descriptors with a file.
    let path = std::env::temp_dir().join(format!("ringxfer-cuda-mix-{}", std::process::id()));
    let options = ringxfer::FileOptions {
        writable: true,
        create: true,
        len: Some(4096),
        sync: false,
    };
    let file = e.register_file(&path, options).unwrap();
    let mixed = e.prepare(
        Op::Write,
        &[Desc::new(gpu, 0, 64), Desc::new(host, 0, 64)],
        e.local_peer(),
        &[Desc::new(host, 64, 64), Desc::new(file, 0, 64)],
        None,
    );
    assert!(matches!(mixed, Err(Error::InvalidDescriptor { .. })), "{mixed:?}");
    e.deregister(file).unwrap();
    let _ = std::fs::remove_file(&path);

    let run = |op: Op, local: Desc, remote: Desc| -> Status {
        let h = e.prepare(op, &[local], me, &[remote], None).unwrap();
        e.post(h).unwrap();
        let s = e.wait(h, Duration::from_secs(10)).unwrap();
        e.release(h).unwrap();
        s
    };

    // H2D then D2H: the bytes went through the (fake) device.
    assert_eq!(
        run(Op::Write, Desc::new(host, 0, 1 << 20), Desc::new(gpu, 0, 1 << 20)),
        Status::Done
    );
    assert_eq!(
        run(Op::Read, Desc::new(back, 0, 1 << 20), Desc::new(gpu, 0, 1 << 20)),
        Status::Done
    );
    let mut out = vec![0u8; 1 << 20];
    e.read_region(back, 0, &mut out).unwrap();
    assert!(out == pattern, "bytes arrive in device memory and come back");

    // D2D within the device, then back to check.
    let gpu2 = e.alloc_vram(1 << 20).unwrap();
    let h = e
        .prepare(
            Op::Write,
            &[Desc::new(gpu, 4096, 8192)],
            me,
            &[Desc::new(gpu2, 0, 8192)],
            None,
        )
        .unwrap();
    e.post(h).unwrap();
    assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
    e.release(h).unwrap();
    assert_eq!(
        run(Op::Read, Desc::new(back, 0, 8192), Desc::new(gpu2, 0, 8192)),
        Status::Done
    );
    e.read_region(back, 0, &mut out[..8192]).unwrap();
    assert_eq!(&out[..8192], &pattern[4096..4096 + 8192]);

    // Block transfers: scattered host pages to GPU pages (one copy per run of pages
    // contiguous on both sides), and back; contiguous ones in one copy.
    let ids: Vec<u32> = (0..64).map(|k| (k * 37) % 256).collect();
    let sorted: Vec<u32> = (0..64).collect();
    // With the batch API (the fake has it): the runs of a transfer go in one call.
    assert!(e.stats().cuda_batch);
    let blocks = |op: Op, region, host_ids: &[u32], gpu_ids: &[u32]| -> (Status, i64, i64) {
        let before = (fake.copies(), fake.batched());
        let local = [ringxfer::Blocks::indexed(region, 0, 4096, 4096, host_ids)];
        let remote = [ringxfer::Blocks::indexed(gpu, 0, 4096, 4096, gpu_ids)];
        let h = e.prepare_blocks(op, &local, me, &remote, None).unwrap();
        e.post(h).unwrap();
        let s = e.wait(h, Duration::from_secs(10)).unwrap();
        e.release(h).unwrap();
        (s, fake.copies() - before.0, fake.batched() - before.1)
    };
    assert_eq!(blocks(Op::Write, host, &ids, &sorted), (Status::Done, 0, 64));
    assert_eq!(blocks(Op::Read, back, &ids, &sorted), (Status::Done, 0, 64));
    assert_eq!(
        blocks(Op::Read, back, &sorted, &sorted),
        (Status::Done, 1, 0),
        "one run, one plain copy"
    );
    e.read_region(back, 0, &mut out).unwrap();
    for (k, &id) in ids.iter().enumerate() {
        let (at, page) = (k * 4096, id as usize * 4096);
        assert_eq!(
            out[at..at + 4096],
            pattern[page..page + 4096],
            "page {id} → GPU block {k} → back"
        );
    }
    fake.fail_next(4);
    match blocks(Op::Write, host, &ids, &sorted).0 {
        Status::Failed(code) => {
            assert_eq!(code.source(), FailSource::Transport(ringxfer::TransportId::CUDA));
            assert_eq!(code.value(), 1, "the batch call's CUDA code (CUDA_ERROR_INVALID_VALUE)");
        }
        other => panic!("a failed batch call ended its block transfer {other:?}"),
    }
    assert_eq!(
        blocks(Op::Write, host, &ids, &sorted),
        (Status::Done, 0, 64),
        "the slot is reused"
    );

    // 100,000 transfers, a window of them in flight: not one event more, and not one
    // allocation.
    let mut in_flight = std::collections::VecDeque::with_capacity(CAPACITY);
    let allocations_before = counting::allocations();
    for i in 0..100_000u64 {
        let off = (i % 256) * 4096;
        let op = if i % 2 == 0 { Op::Write } else { Op::Read };
        let h = e
            .prepare(
                op,
                &[Desc::new(host, off, 4096)],
                me,
                &[Desc::new(gpu, off, 4096)],
                None,
            )
            .unwrap();
        e.post(h).unwrap();
        in_flight.push_back(h);
        if in_flight.len() == CAPACITY / 2 {
            let h = in_flight.pop_front().unwrap();
            assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
            e.release(h).unwrap();
        }
    }
    // Drained in place: dropping the deque would free its buffer (a count of its own).
    while let Some(h) = in_flight.pop_front() {
        assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
        e.release(h).unwrap();
    }
    let allocations = counting::allocations() - allocations_before;
    assert_eq!(allocations, 0, "allocations over 100,000 cuda transfers");
    assert_eq!(fake.created(), created_at_start, "no event created on the hot path");
    assert_eq!(fake.live(), CAPACITY as i64);

    // Injected failures: each ends its transfer FAILED with the CUDA code (never
    // DONE from an unrecorded event), and the next transfer on the slots works.
    for (what, name) in [(1, "cuEventRecord"), (2, "cuMemcpy*Async"), (3, "cuEventQuery")] {
        fake.fail_next(what);
        match run(Op::Write, Desc::new(host, 0, 4096), Desc::new(gpu, 0, 4096)) {
            Status::Failed(code) => assert_eq!(
                code.source(),
                FailSource::Transport(ringxfer::TransportId::CUDA),
                "{name}"
            ),
            other => panic!("a failed {name} ended the transfer {other:?}"),
        }
        for _ in 0..CAPACITY {
            assert_eq!(
                run(Op::Write, Desc::new(host, 0, 4096), Desc::new(gpu, 0, 4096)),
                Status::Done,
                "after {name}"
            );
        }
    }
    assert_eq!(fake.created(), created_at_start);
    let s = e.stats();
    assert_eq!(s.ring.failed, 4);
    e.check_quiescent().unwrap();
    drop(e);
    assert_eq!(fake.live(), 0, "every event destroyed with the engine");
    assert_eq!(fake.host_pins(), 0, "every host pin undone with its region");
}

#[test]
fn driver_calls_with_the_fake_driver() {
    run_child("driver_calls_child");
}

/// Driver calls, counted per entry point by the fake driver, in steady state (the
/// GPU is done by the first query: `set_polls(0)`): a one-descriptor transfer makes
/// two calls to post (the copy, the record) and one to complete (the query); a
/// 64-block transfer makes two to post (one batch call, the record), 65 without the
/// batch API; a progress turn with sixteen transfers in flight and none done asks
/// only each stream's oldest, not all sixteen.
#[test]
#[ignore = "run by driver_calls_with_the_fake_driver, with the fake libcuda.so on LD_LIBRARY_PATH"]
fn driver_calls_child() {
    let e = Engine::new(config()).unwrap();
    let fake = Fake::open();
    fake.set_polls(0);
    let host = e.alloc_region(1 << 20).unwrap();
    let gpu = e.alloc_vram(1 << 20).unwrap();
    let me = e.local_peer();
    let page = |k: u64| (Desc::new(host, k * 4096, 4096), Desc::new(gpu, k * 4096, 4096));
    let prepare = |k: u64| {
        let (l, r) = page(k);
        e.prepare(Op::Write, &[l], me, &[r], None).unwrap()
    };
    // Warm: the first call on this thread makes the context current.
    let h = prepare(0);
    e.post(h).unwrap();
    assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
    e.release(h).unwrap();

    let all = c"";
    let h = prepare(1);
    fake.reset_calls();
    e.post(h).unwrap();
    assert_eq!(fake.calls(all), 2, "post: the copy and the record");
    assert_eq!(fake.calls(c"cuMemcpyHtoDAsync_v2"), 1);
    assert_eq!(fake.calls(c"cuEventRecord"), 1);
    fake.reset_calls();
    assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
    assert_eq!(fake.calls(all), 1, "completion: one query");
    e.release(h).unwrap();
    e.progress();
    assert_eq!(fake.calls(all), 1, "progress with nothing in flight asks nothing");

    // Steady state, a window of 16 in flight: three calls per transfer.
    let mut window = std::collections::VecDeque::with_capacity(16);
    fake.reset_calls();
    for i in 0..1000u64 {
        let h = prepare(i % 256);
        e.post(h).unwrap();
        window.push_back(h);
        if window.len() == 16 {
            let h = window.pop_front().unwrap();
            assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
            e.release(h).unwrap();
        }
    }
    while let Some(h) = window.pop_front() {
        assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
        e.release(h).unwrap();
    }
    assert_eq!(fake.calls(c"cuEventQuery"), 1000, "one query per transfer");
    assert_eq!(fake.calls(all), 3000);
    assert_eq!(fake.calls(c"cuCtxGetCurrent") + fake.calls(c"cuCtxSetCurrent"), 0);

    // Sixteen in flight, none done: a progress turn (and a wait that times out) asks
    // each stream's oldest only.
    let streams = CudaConfig::default().streams as i64;
    fake.hold(true);
    let handles: Vec<_> = (0..16).map(prepare).collect();
    for &h in &handles {
        e.post(h).unwrap();
    }
    fake.reset_calls();
    assert_eq!(e.progress(), 0);
    assert_eq!(fake.calls(all), streams, "one query per stream, not one per transfer");
    fake.reset_calls();
    assert!(matches!(e.wait(handles[5], Duration::ZERO), Err(Error::Timeout { .. })));
    assert_eq!(fake.calls(all), streams);
    fake.hold(false);
    fake.reset_calls();
    assert_eq!(e.wait(handles[5], Duration::from_secs(10)).unwrap(), Status::Done);
    for &h in &handles {
        assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
        e.release(h).unwrap();
    }
    assert_eq!(fake.calls(all), 16, "one query per transfer that ended");

    // 64 scattered blocks: one batch call and the record; without the batch API, one
    // copy per block.
    let ids: Vec<u32> = (0..64).map(|k| (k * 37) % 256).collect();
    let sorted: Vec<u32> = (0..64).collect();
    let post_blocks = |e: &Engine, host, gpu| {
        let local = [ringxfer::Blocks::indexed(host, 0, 4096, 4096, &ids)];
        let remote = [ringxfer::Blocks::indexed(gpu, 0, 4096, 4096, &sorted)];
        let h = e
            .prepare_blocks(Op::Write, &local, e.local_peer(), &remote, None)
            .unwrap();
        fake.reset_calls();
        e.post(h).unwrap();
        let posted = fake.calls(all);
        assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
        e.release(h).unwrap();
        posted
    };
    assert_eq!(
        post_blocks(&e, host, gpu),
        2,
        "64 blocks: one batch call and the record"
    );
    assert_eq!(fake.calls(c"cuMemcpyBatchAsync_v2"), 1);
    let unbatched = Engine::new(Config {
        name: "gpu-unbatched".into(),
        cuda: Some(CudaConfig {
            batch: false,
            ..CudaConfig::default()
        }),
        ..config()
    })
    .unwrap();
    assert!(!unbatched.stats().cuda_batch);
    let (host2, gpu2) = (
        unbatched.alloc_region(1 << 20).unwrap(),
        unbatched.alloc_vram(1 << 20).unwrap(),
    );
    assert_eq!(
        post_blocks(&unbatched, host2, gpu2),
        65,
        "one copy per block, then the record"
    );
    assert_eq!(fake.calls(c"cuMemcpyBatchAsync_v2"), 0);
    drop(unbatched);

    // A GPU copy cannot be recalled: cancel says so (in flight), and the transfer
    // ends with its event. A stream that never completes fails it at its deadline;
    // its slot stays the transport's until the event does complete.
    fake.hold(true);
    let h = prepare(2);
    e.post(h).unwrap();
    assert_eq!(e.cancel(h).unwrap(), ringxfer::ring::CancelResult::InFlight);
    assert_eq!(e.status(h).unwrap(), Status::Posted);
    fake.hold(false);
    assert_eq!(e.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
    e.release(h).unwrap();
    fake.hold(true);
    let h = prepare(3);
    e.set_deadline(h, Some(Duration::from_millis(20))).unwrap();
    e.post(h).unwrap();
    assert_eq!(
        e.wait(h, Duration::from_secs(10)).unwrap(),
        Status::Failed(ringxfer::ring::FailCode::TIMEOUT)
    );
    assert_eq!(e.release(h).unwrap(), ringxfer::ring::Released::Detached);
    assert_eq!(e.stats().ring.live, 1, "the event still holds the slot");
    fake.hold(false);
    let start = std::time::Instant::now();
    while e.stats().ring.live != 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the event never let go");
        e.progress();
    }
    e.check_quiescent().unwrap();

    // An engine dropped with copies whose events never complete: the drop waits a
    // bounded time, fails them with SHUTDOWN and destroys every event of its own.
    let doomed = Engine::new(Config {
        name: "gpu-doomed".into(),
        ..config()
    })
    .unwrap();
    let (h2, g2) = (
        doomed.alloc_region(1 << 16).unwrap(),
        doomed.alloc_vram(1 << 16).unwrap(),
    );
    fake.hold(true);
    for k in 0..8u64 {
        let h = doomed
            .prepare(
                Op::Write,
                &[Desc::new(h2, k * 4096, 4096)],
                doomed.local_peer(),
                &[Desc::new(g2, k * 4096, 4096)],
                None,
            )
            .unwrap();
        doomed.post(h).unwrap();
        if k % 2 == 0 {
            doomed.release(h).unwrap();
        }
    }
    let start = std::time::Instant::now();
    drop(doomed);
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    fake.hold(false);
    assert_eq!(
        fake.live(),
        CAPACITY as i64,
        "the doomed engine's events are gone, e's remain"
    );

    fake.set_polls(2);
    e.check_quiescent().unwrap();
}

/// GPU memory and the fabric (`FI_HMEM`), on the providers here: tcp offers no
/// `FI_HMEM`, and shm offers it but this libfabric has no CUDA support built in, so
/// GPU memory stays off the fabric with the reason said — never a `memcpy` from a
/// device pointer — and host memory still moves over the same engines.
#[test]
#[ignore = "run by gpu_memory_and_the_fabric_with_the_fake_driver, with the fake libcuda.so on LD_LIBRARY_PATH"]
fn fabric_child() {
    use ringxfer::fabric::FabricConfig;
    for provider in ["tcp", "shm"] {
        let engine = |name: &str| {
            skip::fabric_engine(Config {
                name: format!("{name}-{provider}"),
                fabric: Some(FabricConfig {
                    provider: Some(provider.into()),
                    progress_thread: true,
                    ..FabricConfig::default()
                }),
                ..config()
            })
        };
        // Without libfabric: a skip line (repeated by the parent), or a failure with
        // RINGXFER_REQUIRE_FABRIC set.
        let Some(initiator) = engine("initiator") else { return };
        let Some(target) = engine("target") else { return };
        let host = initiator.alloc_region(1 << 16).unwrap();
        let gpu = initiator.alloc_vram(1 << 16).unwrap();
        let target_host = target.alloc_region(1 << 16).unwrap();
        let target_gpu = target.alloc_vram(1 << 16).unwrap();
        let peer = initiator.load_peer(&target.local_metadata().unwrap()).unwrap();

        // Local GPU memory as a fabric transfer's source: refused, with why.
        match initiator.prepare(
            Op::Write,
            &[Desc::new(gpu, 0, 4096)],
            peer,
            &[Desc::new(target_host, 0, 4096)],
            None,
        ) {
            Err(Error::NotOnFabric { region, reason }) => {
                assert_eq!(region, gpu.to_raw());
                let expected = if provider == "tcp" { "FI_HMEM" } else { "fi_mr_regattr" };
                assert!(reason.contains(expected), "{provider}: {reason}");
                eprintln!("{provider}: GPU memory refused: {reason}");
            }
            other => panic!("{provider}: GPU memory to a fabric peer: {other:?}"),
        }
        // The peer's GPU memory is not published, so it cannot be named either.
        let to_gpu = initiator.prepare(
            Op::Write,
            &[Desc::new(host, 0, 4096)],
            peer,
            &[Desc::new(target_gpu, 0, 4096)],
            None,
        );
        assert!(
            matches!(to_gpu, Err(Error::UnknownRegion { .. })),
            "{provider}: {to_gpu:?}"
        );

        // Host memory still moves between the same engines (the domain opened with
        // FI_HMEM asked for, where the provider has it).
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 1) as u8).collect();
        initiator.write_region(host, 0, &data).unwrap();
        let h = initiator
            .prepare(
                Op::Write,
                &[Desc::new(host, 0, 4096)],
                peer,
                &[Desc::new(target_host, 0, 4096)],
                None,
            )
            .unwrap();
        initiator.post(h).unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            match initiator.status(h).unwrap() {
                s if s.is_terminal() => break s,
                _ if start.elapsed() > Duration::from_secs(10) => panic!("{provider}: no completion"),
                _ => std::thread::yield_now(),
            }
        };
        assert_eq!(status, Status::Done, "{provider}");
        initiator.release(h).unwrap();
        let mut got = vec![0u8; 4096];
        target.read_region(target_host, 0, &mut got).unwrap();
        assert!(got == data, "{provider}: bytes arrived");
        // And GPU memory still moves locally, through the cuda transport.
        let h = initiator
            .prepare(
                Op::Write,
                &[Desc::new(host, 0, 4096)],
                initiator.local_peer(),
                &[Desc::new(gpu, 0, 4096)],
                None,
            )
            .unwrap();
        initiator.post(h).unwrap();
        assert_eq!(initiator.wait(h, Duration::from_secs(10)).unwrap(), Status::Done);
        initiator.release(h).unwrap();
    }
}

/// GPU memory across processes on one node, with the fake driver: an exporter child
/// publishes its GPU regions' IPC handles; this process (the importer) maps each
/// distinct handle once at `load_peer`, keeps unchanged ones across a reload, opens
/// only new ones, refuses exports from another node or device, and closes everything
/// when the engine goes.
#[test]
fn gpu_regions_map_across_processes() {
    run_child("ipc_importer_child");
}

/// The same, with every engine's `alloc_vram` made with the VMM API
/// (`CudaConfig::vmm`): exported as file descriptors, fetched with `pidfd_getfd`,
/// imported and mapped once each.
#[test]
fn gpu_vmm_regions_map_across_processes() {
    run_child_with("ipc_importer_child", &[("RINGXFER_TEST_VMM", "1")]);
}

/// GPU memory the exporter allocated itself with the VMM API and registered
/// (`register_vram`): exported as a descriptor where it was created shareable that
/// way, mapped once here, bytes moved both ways; memory not created shareable is not
/// published; deregistering withdraws the export, and the exporter's memory stays
/// its own (it unmaps and frees it after its engine is gone).
#[test]
fn gpu_caller_vmm_memory_maps_across_processes() {
    run_child("ipc_caller_vmm_child");
}

#[test]
#[ignore = "run by gpu_caller_vmm_memory_maps_across_processes, in a process with the fake driver"]
fn ipc_caller_vmm_child() {
    use ringxfer::RegionId;
    use std::io::Write;

    let fake = Fake::open();
    let (mut exporter, mut input, mut out) = child::spawn_test("ipc_exporter_child");
    let _ = exporter_said(&mut out);
    writeln!(input, "caller").unwrap();
    let ids: Vec<u64> = child::read_tagged(&mut out, "caller ")
        .split(' ')
        .map(|w| w.parse().unwrap())
        .collect();
    let (shared, unshared) = (RegionId::from_raw(ids[0]), RegionId::from_raw(ids[1]));
    let blob = child::unhex(&child::read_tagged(&mut out, "md "));

    let e = Engine::new(config()).unwrap();
    let peer = e.load_peer(&blob).unwrap();
    // Its two alloc_vram regions (IPC handles) and the shareable caller allocation.
    assert_eq!(e.stats().cuda_ipc_mappings, 3);
    assert_eq!(fake.ipc(), (3, 3));
    assert_eq!(fake.vmm_imports(), 1);

    let src = e.alloc_region(64 << 10).unwrap();
    let back = e.alloc_region(64 << 10).unwrap();
    let pattern: Vec<u8> = (0..64u32 << 10).map(|i| (i * 13 + i / 4096) as u8).collect();
    e.write_region(src, 0, &pattern).unwrap();
    let all = |r| [Desc::new(r, 0, 64 << 10)];
    for (op, local) in [(Op::Write, src), (Op::Read, back)] {
        let h = e.prepare(op, &all(local), peer, &all(shared), None).unwrap();
        e.post(h).unwrap();
        assert_eq!(e.wait(h, Duration::from_secs(5)).unwrap(), Status::Done);
        e.release(h).unwrap();
    }
    let mut got = vec![0u8; 64 << 10];
    e.read_region(back, 0, &mut got).unwrap();
    assert!(got == pattern, "the caller's VMM memory, written and read back");
    // The unshareable allocation was not published: no peer can reach it.
    assert!(e.prepare(Op::Write, &all(src), peer, &all(unshared), None).is_err());

    // Withdrawn by its owner: a reload closes its mapping.
    writeln!(input, "dereg {}", shared.to_raw()).unwrap();
    assert_eq!(child::read_tagged(&mut out, "dereg "), "ok");
    writeln!(input, "md").unwrap();
    let now = child::unhex(&child::read_tagged(&mut out, "md "));
    assert_eq!(e.load_peer(&now).unwrap(), peer);
    assert_eq!(e.stats().cuda_ipc_mappings, 2);
    assert_eq!(fake.ipc(), (2, 3));
    writeln!(input, "quit").unwrap();
    drop(input);
    assert!(exporter.wait().unwrap().success(), "the exporter's own memory");
    e.unload_peer(peer).unwrap();
    e.check_quiescent().unwrap();
}

/// Moves bytes through the mappings of the exporter's memory: host and GPU memory
/// here to and from its GPU regions and its shared-memory region, one descriptor and
/// a scattered batch, with notifications; a withdrawn region fails `REGION_GONE`; a
/// region a copy is using cannot be deregistered; and the copies allocate nothing.
fn ipc_transfers(
    e: &Engine,
    peer: ringxfer::PeerId,
    ids: &[u64],
    input: &mut std::process::ChildStdin,
    out: &mut std::io::BufReader<std::process::ChildStdout>,
) {
    use ringxfer::{FailCode, RegionId};
    use std::io::Write;

    let (small, big, dram) = (
        RegionId::from_raw(ids[0]),
        RegionId::from_raw(ids[1]),
        RegionId::from_raw(ids[2]),
    );
    let src = e.alloc_region(1 << 20).unwrap();
    let back = e.alloc_region(1 << 20).unwrap();
    let vram = e.alloc_vram(1 << 20).unwrap();
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    e.write_region(src, 0, &pattern).unwrap();
    let run = |op, local: &[Desc], remote: &[Desc], notif: Option<&[u8]>| {
        let h = e.prepare(op, local, peer, remote, notif).unwrap();
        e.post(h).unwrap();
        let status = e.wait(h, Duration::from_secs(5)).unwrap();
        e.release(h).unwrap();
        status
    };
    let check_back = |len: usize, what: &str| {
        let mut got = vec![0u8; len];
        e.read_region(back, 0, &mut got).unwrap();
        assert!(got == pattern[..len], "{what}: the bytes read back differ");
        e.write_region(back, 0, &vec![0u8; len]).unwrap();
    };

    // Host memory here → the peer's GPU memory, 1 MiB and 4 KiB, then back.
    let one = |r: RegionId, len: u64| [Desc::new(r, 0, len)];
    assert_eq!(
        run(Op::Write, &one(src, 1 << 20), &one(big, 1 << 20), Some(b"wrote 1M")),
        Status::Done
    );
    assert_eq!(
        run(Op::Read, &one(back, 1 << 20), &one(big, 1 << 20), None),
        Status::Done
    );
    check_back(1 << 20, "host -> peer GPU -> host, 1 MiB");
    assert_eq!(run(Op::Write, &one(src, 4096), &one(small, 4096), None), Status::Done);
    assert_eq!(run(Op::Read, &one(back, 4096), &one(small, 4096), None), Status::Done);
    check_back(4096, "host -> peer GPU -> host, 4 KiB");

    // GPU memory here → the peer's host (shared-memory) region and GPU region.
    let own = e.local_peer();
    let h = e
        .prepare(Op::Write, &one(src, 1 << 20), own, &one(vram, 1 << 20), None)
        .unwrap();
    e.post(h).unwrap();
    assert_eq!(e.wait(h, Duration::from_secs(5)).unwrap(), Status::Done);
    e.release(h).unwrap();
    assert_eq!(
        run(Op::Write, &one(vram, 65536), &one(dram, 65536), Some(b"wrote dram")),
        Status::Done
    );
    assert_eq!(run(Op::Read, &one(back, 65536), &one(dram, 65536), None), Status::Done);
    check_back(65536, "GPU -> peer host -> host");
    assert_eq!(
        run(Op::Write, &one(vram, 1 << 20), &one(big, 1 << 20), None),
        Status::Done
    );
    assert_eq!(
        run(Op::Read, &one(back, 1 << 20), &one(big, 1 << 20), None),
        Status::Done
    );
    check_back(1 << 20, "GPU -> peer GPU -> host");

    // A scattered batch: 64 blocks of 4 KiB to reversed places, and back in order.
    let blocks: Vec<u64> = (0..64).collect();
    let local: Vec<Desc> = blocks.iter().map(|&i| Desc::new(src, i * 4096, 4096)).collect();
    let remote: Vec<Desc> = blocks.iter().map(|&i| Desc::new(big, (63 - i) * 8192, 4096)).collect();
    let home: Vec<Desc> = blocks.iter().map(|&i| Desc::new(back, i * 4096, 4096)).collect();
    assert_eq!(run(Op::Write, &local, &remote, Some(b"batch")), Status::Done);
    assert_eq!(run(Op::Read, &home, &remote, None), Status::Done);
    check_back(64 * 4096, "a scattered batch of 64");

    // The notifications arrived, each after its bytes.
    writeln!(input, "pop").unwrap();
    assert_eq!(child::read_tagged(out, "notes "), "wrote 1M,wrote dram,batch");

    // No allocation per transfer, on any thread.
    let before = counting::allocations();
    for _ in 0..1000 {
        assert_eq!(run(Op::Write, &one(src, 4096), &one(big, 4096), None), Status::Done);
    }
    assert_eq!(counting::allocations() - before, 0, "allocations over 1,000 transfers");

    // A region the peer is copying into cannot be deregistered; after it, it can.
    let h = e
        .prepare(Op::Write, &one(src, 4096), peer, &one(big, 4096), None)
        .unwrap();
    e.post(h).unwrap();
    writeln!(input, "dereg {}", big.to_raw()).unwrap();
    assert_eq!(child::read_tagged(out, "dereg "), "busy");
    assert_eq!(e.wait(h, Duration::from_secs(5)).unwrap(), Status::Done);
    e.release(h).unwrap();
    writeln!(input, "dereg {}", small.to_raw()).unwrap();
    assert_eq!(child::read_tagged(out, "dereg "), "ok");
    // A copy into the withdrawn region fails, and lands nowhere.
    assert_eq!(
        run(Op::Write, &one(src, 4096), &one(small, 4096), None),
        Status::Failed(FailCode::REGION_GONE)
    );
    assert_eq!(e.stats().ring.live, 0);
    e.check_quiescent().unwrap();
}

#[test]
#[ignore = "run by gpu_regions_map_across_processes, in a process with the fake driver"]
fn ipc_exporter_child() {
    let e = Engine::new(config()).unwrap();
    let mut regions = vec![e.alloc_vram(4096).unwrap(), e.alloc_vram(1 << 20).unwrap()];
    let dram = e.alloc_region(1 << 20).unwrap();
    let lines = child::stdin_lines();
    // The harness printed "test ipc_exporter_child ... " without a newline.
    println!();
    println!("ids {} {} {}", regions[0].to_raw(), regions[1].to_raw(), dram.to_raw());
    println!("md {}", child::hex(&e.local_metadata().unwrap()));
    let mut note = [0u8; 256];
    // GPU memory this process allocated itself and registered.
    let mut caller = Vec::new();
    while let Ok(line) = lines.recv() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("caller") => {
                let mut ids = Vec::new();
                for shareable in [true, false] {
                    let (ptr, len) = caller_vmm::alloc(64 << 10, shareable);
                    // SAFETY: live device memory of this process, freed below only
                    // after the engine is gone.
                    ids.push(unsafe { e.register_vram(ptr, len) }.unwrap().to_raw());
                    caller.push((ptr, len));
                }
                println!("caller {} {}", ids[0], ids[1]);
                println!("md {}", child::hex(&e.local_metadata().unwrap()));
            }
            Some("more") => {
                regions.push(e.alloc_vram(64 << 10).unwrap());
                println!("md {}", child::hex(&e.local_metadata().unwrap()));
            }
            Some("md") => println!("md {}", child::hex(&e.local_metadata().unwrap())),
            Some("pop") => {
                let mut notes = Vec::new();
                while let Some(n) = e.pop_notification(&mut note).unwrap() {
                    notes.push(String::from_utf8_lossy(&note[..n.len]).into_owned());
                }
                println!("notes {}", notes.join(","));
            }
            Some("dereg") => {
                let id = ringxfer::RegionId::from_raw(words.next().unwrap().parse().unwrap());
                match e.deregister(id) {
                    Ok(()) => {
                        regions.retain(|&r| r != id);
                        println!("dereg ok");
                    }
                    Err(Error::Busy { .. }) => println!("dereg busy"),
                    Err(other) => println!("dereg {other}"),
                }
            }
            _ => break,
        }
    }
    for r in regions {
        e.deregister(r).unwrap();
    }
    drop(e);
    // The engine neither unmapped nor freed the memory it was only lent.
    for (ptr, len) in caller {
        caller_vmm::free(ptr, len);
    }
}

/// GPU memory an application allocates itself with the VMM API (as PyTorch's
/// expandable segments do), shareable as a file descriptor or not.
mod caller_vmm {
    use cudarc::driver::sys;

    fn ok(r: sys::CUresult, what: &str) {
        assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "{what}");
    }

    /// `len` bytes (a multiple of the fake's 64 KiB granularity) mapped read-write.
    pub fn alloc(len: usize, shareable: bool) -> (u64, usize) {
        // SAFETY: a plain C struct; all-zero is its documented default.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        if shareable {
            prop.requestedHandleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        }
        prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        let access = sys::CUmemAccessDesc {
            location: prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        let (mut handle, mut ptr) = (0, 0);
        // SAFETY: valid pointers; the engine made the driver ready in this process.
        unsafe {
            ok(sys::cuMemCreate(&mut handle, len, &prop, 0), "cuMemCreate");
            ok(sys::cuMemAddressReserve(&mut ptr, len, 0, 0, 0), "cuMemAddressReserve");
            ok(sys::cuMemMap(ptr, len, 0, handle, 0), "cuMemMap");
            ok(sys::cuMemSetAccess(ptr, len, &access, 1), "cuMemSetAccess");
            ok(sys::cuMemRelease(handle), "cuMemRelease");
        }
        (ptr, len)
    }

    /// Unmaps and frees memory from [`alloc`]: fails if someone else unmapped it.
    pub fn free(ptr: u64, len: usize) {
        // SAFETY: mapped by `alloc`, unmapped once.
        unsafe {
            ok(sys::cuMemUnmap(ptr, len), "cuMemUnmap of the caller's memory");
            ok(sys::cuMemAddressFree(ptr, len), "cuMemAddressFree");
        }
    }
}

#[test]
#[ignore = "run by gpu_regions_map_across_processes, in a process with the fake driver"]
fn ipc_importer_child() {
    use ringxfer::wire::metadata::{BackendKind, Metadata};
    use std::io::Write;

    let fake = Fake::open();
    let (mut exporter, mut input, mut out) = child::spawn_test("ipc_exporter_child");
    let (ids, blob) = exporter_said(&mut out);

    let e = Engine::new(config()).unwrap();
    let pinned = fake.host_pins();
    let peer = e.load_peer(&blob).unwrap();
    // The peer's shared-memory region is page-locked here for GPU copies.
    assert_eq!(fake.host_pins(), pinned + 1);
    // Two allocations exported: two mappings, in the ledger and in the driver.
    assert_eq!(e.stats().cuda_ipc_mappings, 2);
    assert_eq!(fake.ipc(), (2, 2));
    // With the VMM API they came as descriptors (else as legacy IPC handles).
    let vmm = std::env::var_os("RINGXFER_TEST_VMM").is_some();
    assert_eq!(fake.vmm_imports(), if vmm { 2 } else { 0 });
    // A reload with nothing changed opens nothing.
    assert_eq!(e.load_peer(&blob).unwrap(), peer);
    assert_eq!(fake.ipc(), (2, 2));
    // A new region: only its allocation is opened, the same peer id is kept.
    writeln!(input, "more").unwrap();
    let grown = child::unhex(&child::read_tagged(&mut out, "md "));
    assert_eq!(e.load_peer(&grown).unwrap(), peer);
    assert_eq!(fake.ipc(), (3, 3));
    assert_eq!(e.stats().cuda_ipc_mappings, 3);

    // Exports this engine cannot use are refused at load, with the reason, and map
    // nothing (a failed reload leaves the peer as it was): another node, another
    // device, a malformed export.
    let mut md = Metadata::decode(&grown).unwrap();
    let at = md.backends.iter().position(|b| b.kind == BackendKind::Cuda).unwrap();
    let good = md.backends[at].conn.clone();
    // The export: version, node id (16 bytes), device UUID (16), count, entries.
    let another_node = |c: &mut Vec<u8>| c[1] ^= 0xff;
    let another_device = |c: &mut Vec<u8>| c[17] ^= 0xff;
    let truncated = |c: &mut Vec<u8>| c.truncate(c.len() - 1);
    // The first entry (after the 37-byte header): id, offset, then its length.
    let beyond = |c: &mut Vec<u8>| c[37 + 16..37 + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    type Spoil<'a> = &'a dyn Fn(&mut Vec<u8>);
    let cases: [(&str, Spoil); 4] = [
        ("another node", &another_node),
        ("does not use", &another_device),
        ("malformed", &truncated),
        ("out of range", &beyond),
    ];
    for (reason, spoil) in cases {
        let mut conn = good.clone();
        spoil(&mut conn);
        md.backends[at].conn = conn;
        match e.load_peer(&md.encode().unwrap()) {
            Err(Error::PeerUnreachable { reason: r, .. }) => assert!(r.contains(reason), "{r}"),
            other => panic!("expected PeerUnreachable ({reason}), got {other:?}"),
        }
        assert_eq!(fake.ipc(), (3, 3), "{reason}");
    }
    assert_eq!(e.stats().cuda_ipc_mappings, 3);
    assert_eq!(e.peer_name(peer).unwrap(), "gpu");
    // On another device of the node that this one reaches (the fake's second device,
    // with peer access): accepted, and nothing is opened again.
    let mut conn = good.clone();
    conn[17..33].copy_from_slice(b"rxfake-gpu-0001\0");
    md.backends[at].conn = conn;
    assert_eq!(e.load_peer(&md.encode().unwrap()).unwrap(), peer);
    assert_eq!(fake.ipc(), (3, 3));
    assert_eq!(e.load_peer(&grown).unwrap(), peer);

    ipc_transfers(&e, peer, &ids, &mut input, &mut out);

    // An initiator killed while its copy into the exporter's GPU region holds a pin
    // leaves the exporter nothing held: its deregister is Busy while that process
    // lives, and goes through once it is gone.
    let big = ringxfer::RegionId::from_raw(ids[1]);
    writeln!(input, "md").unwrap();
    let now = child::unhex(&child::read_tagged(&mut out, "md "));
    let (mut doomed, mut doomed_in, mut doomed_out) = child::spawn_test("ipc_doomed_initiator_child");
    writeln!(doomed_in, "{} {}", big.to_raw(), child::hex(&now)).unwrap();
    assert_eq!(child::read_tagged(&mut doomed_out, "posted"), "");
    writeln!(input, "dereg {}", big.to_raw()).unwrap();
    assert_eq!(child::read_tagged(&mut out, "dereg "), "busy");
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    writeln!(input, "dereg {}", big.to_raw()).unwrap();
    assert_eq!(child::read_tagged(&mut out, "dereg "), "ok");

    // The peer's process ends: transfers to its GPU memory fail PEER_LOST (the
    // liveness check runs at most once a millisecond), and move nothing.
    writeln!(input, "quit").unwrap();
    drop(input);
    assert!(exporter.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(5));
    let src = e.alloc_region(4096).unwrap();
    let h = post_page(&e, Op::Write, src, peer, big);
    assert_eq!(
        e.wait(h, Duration::from_secs(5)).unwrap(),
        Status::Failed(ringxfer::FailCode::PEER_LOST)
    );
    e.release(h).unwrap();
    assert_eq!(
        e.stats().cuda_ipc_mappings,
        3,
        "held until the peer is unloaded or replaced"
    );

    // The exporter restarts (same name, a new engine): loading it takes the dead
    // one's entry under a new id (the new process hands out the same region ids, so
    // nothing made for the dead one may reach it) and closes the dead one's mappings.
    let (mut exporter, mut input, mut out) = child::spawn_test("ipc_exporter_child");
    let (ids, blob) = exporter_said(&mut out);
    let dead = peer;
    let peer = e.load_peer(&blob).unwrap();
    assert_ne!(peer, dead);
    assert_eq!(peer.0 & 0xfff, dead.0 & 0xfff, "the dead one's entry");
    assert!(matches!(e.peer_name(dead), Err(Error::UnknownPeer { .. })));
    assert_eq!(e.stats().peers, 1);
    assert_eq!(e.stats().cuda_ipc_mappings, 2);
    assert_eq!(fake.ipc(), (2, 5));
    let big = ringxfer::RegionId::from_raw(ids[1]);
    let back = e.alloc_region(4096).unwrap();
    e.write_region(src, 0, &[0x5a; 4096]).unwrap();
    for (op, local) in [(Op::Write, src), (Op::Read, back)] {
        let h = post_page(&e, op, local, peer, big);
        assert_eq!(e.wait(h, Duration::from_secs(5)).unwrap(), Status::Done);
        e.release(h).unwrap();
    }
    let mut got = [0u8; 4096];
    e.read_region(back, 0, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0x5a), "the restarted peer's GPU memory");

    // Unloading the peer closes its mappings; its id names nothing any more.
    e.unload_peer(peer).unwrap();
    assert_eq!(e.stats().cuda_ipc_mappings, 0);
    assert_eq!(fake.ipc(), (0, 5));
    assert!(matches!(
        e.prepare(
            Op::Write,
            &[Desc::new(src, 0, 4096)],
            peer,
            &[Desc::new(big, 0, 4096)],
            None
        ),
        Err(Error::UnknownPeer { .. })
    ));
    assert!(matches!(e.unload_peer(peer), Err(Error::UnknownPeer { .. })));
    // Loaded again, it gets a new id: the old one stays stale.
    let again = e.load_peer(&blob).unwrap();
    assert_ne!(again, peer);
    assert!(matches!(e.peer_name(peer), Err(Error::UnknownPeer { .. })));
    writeln!(input, "quit").unwrap();
    drop(input);
    assert!(exporter.wait().unwrap().success());
    e.check_quiescent().unwrap();

    // The engine's drop closes every mapping and unlocks every page.
    drop(e);
    assert_eq!(fake.ipc(), (0, 7));
    assert_eq!(fake.host_pins(), 0);
}

/// What an `ipc_exporter_child` prints first: its region ids and its metadata.
fn exporter_said(out: &mut std::io::BufReader<std::process::ChildStdout>) -> (Vec<u64>, Vec<u8>) {
    let ids = child::read_tagged(out, "ids ")
        .split(' ')
        .map(|w| w.parse().unwrap())
        .collect();
    (ids, child::unhex(&child::read_tagged(out, "md ")))
}

/// Prepares and posts one 4 KiB transfer between the first pages of `local` and of
/// the peer's `remote`.
fn post_page(
    e: &Engine,
    op: Op,
    local: ringxfer::RegionId,
    peer: ringxfer::PeerId,
    remote: ringxfer::RegionId,
) -> ringxfer::Handle {
    let h = e
        .prepare(
            op,
            &[Desc::new(local, 0, 4096)],
            peer,
            &[Desc::new(remote, 0, 4096)],
            None,
        )
        .unwrap();
    e.post(h).unwrap();
    h
}

/// An initiator that dies holding a pin in the exporter's registration table: it
/// posts a copy into the exporter's GPU region and never lets the copy end (nothing
/// calls progress), then waits to be killed.
#[test]
#[ignore = "run by gpu_regions_map_across_processes, in a process with the fake driver"]
fn ipc_doomed_initiator_child() {
    let line = child::stdin_lines().recv().unwrap();
    let (region, blob) = line.split_once(' ').unwrap();
    let target = ringxfer::RegionId::from_raw(region.parse().unwrap());
    let e = Engine::new(config()).unwrap();
    let peer = e.load_peer(&child::unhex(blob)).unwrap();
    let src = e.alloc_region(4096).unwrap();
    post_page(&e, Op::Write, src, peer, target);
    println!();
    println!("posted");
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(1);
}
