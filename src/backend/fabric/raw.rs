//! A raw libfabric RMA loop with no engine: the baseline `ringxfer-bench --backend
//! fabric` measures the engine against, on the same provider, in the same run.
//!
//! Two endpoints in this process, each in its own domain as two engines' are
//! (initiator and target, the target's completion queue drained by a thread of its
//! own, as an engine's progress thread does), two registered buffers, and a loop that keeps `window` transfers of `batch` operations
//! in flight: `fi_writedata` (with immediate data) or `fi_read`, and `fi_cq_read`.
//! No slots, no handles, no notifications: what is left is the provider's cost.

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::api;
use super::domain::{Domain, Endpoint};
use super::sys;
use crate::error::{Error, Result};
use crate::types::Op;

/// One measured run of the raw loop.
#[derive(Clone, Copy, Debug)]
pub struct RawRun {
    /// Wall time of the timed iterations.
    pub elapsed: Duration,
    /// Operations completed in them.
    pub operations: u64,
}

/// The two endpoints and buffers of a baseline, set up once and run many times.
pub struct RawRma {
    // Field order is drop order: endpoints, then registrations, then the buffers.
    initiator: Endpoint,
    _target: Arc<Endpoint>,
    src_mr: super::Mr,
    dst_mr: super::Mr,
    src: Vec<u8>,
    dst: Vec<u8>,
    dest: u64,
    stop: Arc<AtomicBool>,
    /// The drainer spins only while a run is on (so it takes no core from the engine
    /// measured between runs).
    running: Arc<AtomicBool>,
    drainer: Option<std::thread::JoinHandle<()>>,
}

impl RawRma {
    /// Opens the provider (`provider`, else libfabric's choice; `RINGXFER_FI_PROVIDER`
    /// wins as for engines) with buffers of `bytes` on each side.
    pub fn new(provider: Option<&str>, bytes: usize) -> Result<RawRma> {
        let config = super::FabricConfig {
            provider: provider.map(str::to_owned),
            ..super::FabricConfig::default()
        };
        // Two domains, as two engines have: with the tcp provider progress is per
        // domain, so one shared domain would let the initiator's CQ reads progress
        // the target too, which no pair of engines (or hosts) gets.
        let initiator_domain: Arc<Domain> = super::Fabric::open_domain(&config, false)?;
        let target_domain: Arc<Domain> = super::Fabric::open_domain(&config, false)?;
        // Named as the engine names its shm endpoints (see `Fabric::open`), so a
        // region a killed process left under this pid cannot block them.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let shm = initiator_domain.provider.starts_with("shm");
        let name = |side: &str| {
            let id = u64::from(std::process::id()) << 32
                | u64::from(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            std::ffi::CString::new(format!("ringxfer-{id:016x}-raw-{side}"))
                .ok()
                .filter(|_| shm)
        };
        let initiator = Endpoint::open(&initiator_domain, 4, 4096, name("initiator").as_deref(), false)?;
        let target = Arc::new(Endpoint::open(
            &target_domain,
            4,
            4096,
            name("target").as_deref(),
            false,
        )?);
        let dest = initiator.insert(&target.name)?;
        target.insert(&initiator.name)?;
        let src = vec![1u8; bytes.max(1)];
        let dst = vec![0u8; bytes.max(1)];
        let src_mr = initiator_domain.register(src.as_ptr() as usize, src.len())?;
        let dst_mr = target_domain.register(dst.as_ptr() as usize, dst.len())?;
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(false));
        let drainer = {
            let (target, stop, running) = (Arc::clone(&target), Arc::clone(&stop), Arc::clone(&running));
            std::thread::Builder::new()
                .name("raw-rma-target".into())
                .spawn(move || drain(&target, &stop, &running))
                .map_err(|e| Error::io("starting the raw baseline's target thread", &e))?
        };
        Ok(RawRma {
            initiator,
            _target: target,
            src_mr,
            dst_mr,
            src,
            dst,
            dest,
            stop,
            running,
            drainer: Some(drainer),
        })
    }

    /// Runs `iters` transfers of `batch` operations of `block` bytes (block × batch
    /// ≤ the buffers), `window` transfers in flight, after `warmup` untimed ones.
    pub fn run(&self, op: Op, block: usize, batch: usize, iters: u64, warmup: u64, window: usize) -> Result<RawRun> {
        self.running.store(true, Ordering::Relaxed);
        let run = self.run_loop(op, block, batch, iters, warmup, window);
        self.running.store(false, Ordering::Relaxed);
        run
    }

    fn run_loop(&self, op: Op, block: usize, batch: usize, iters: u64, warmup: u64, window: usize) -> Result<RawRun> {
        if block * batch > self.src.len() || block == 0 || batch == 0 || window == 0 {
            return Err(Error::InvalidDescriptor {
                reason: "block × batch exceeds the baseline's buffers",
            });
        }
        let ops_per = batch as u64;
        let max_ops = window as u64 * ops_per;
        let mut outstanding = 0u64;
        let mut completed = 0u64;
        let mut start = Instant::now();
        let virt = self.src_mr_virt();
        let remote_base = if virt { self.dst.as_ptr() as u64 } else { 0 };
        for i in 0..warmup + iters {
            if i == warmup {
                while outstanding > 0 {
                    outstanding -= self.reap()?;
                }
                completed = 0;
                start = Instant::now();
            }
            while outstanding + ops_per > max_ops {
                let n = self.reap()?;
                outstanding -= n;
                completed += n;
            }
            for j in 0..batch {
                let offset = j * block;
                loop {
                    // SAFETY: both buffers are registered and live as long as `self`;
                    // every operation completes before `run` returns (drained below).
                    let ret = unsafe {
                        let local = self.src.as_ptr().add(offset) as *mut c_void;
                        match op {
                            Op::Write => api::writedata(
                                self.initiator.ep,
                                local,
                                block,
                                self.src_mr.desc as *mut c_void,
                                i,
                                self.dest,
                                remote_base + offset as u64,
                                self.dst_mr.key,
                                std::ptr::null_mut(),
                            ),
                            Op::Read => api::read(
                                self.initiator.ep,
                                local,
                                block,
                                self.src_mr.desc as *mut c_void,
                                self.dest,
                                remote_base + offset as u64,
                                self.dst_mr.key,
                                std::ptr::null_mut(),
                            ),
                        }
                    };
                    if ret == 0 {
                        break;
                    }
                    if ret != api::EAGAIN {
                        return Err(self.initiator.domain.api.error("raw fi_writedata/fi_read", ret));
                    }
                    let n = self.reap()?;
                    outstanding -= n;
                    completed += n;
                }
                outstanding += 1;
            }
        }
        while outstanding > 0 {
            let n = self.reap()?;
            outstanding -= n;
            completed += n;
        }
        Ok(RawRun {
            elapsed: start.elapsed(),
            operations: completed,
        })
    }

    fn src_mr_virt(&self) -> bool {
        self.initiator.domain.virt_addr()
    }

    /// Reads the initiator's completions; how many.
    fn reap(&self) -> Result<u64> {
        // SAFETY: plain-old-data entries; all-zero is valid.
        let mut entries: [sys::fi_cq_data_entry; 16] = unsafe { std::mem::zeroed() };
        let mut sources = [api::FI_ADDR_NOTAVAIL; 16];
        // SAFETY: live CQ; arrays of 16.
        let n = unsafe { api::cq_readfrom(self.initiator.cq, entries.as_mut_ptr(), 16, sources.as_mut_ptr()) };
        if n > 0 {
            return Ok(n as u64);
        }
        if n == api::EAGAIN {
            return Ok(0);
        }
        // SAFETY: as above.
        let mut err: sys::fi_cq_err_entry = unsafe { std::mem::zeroed() };
        // SAFETY: live CQ.
        unsafe { api::cq_readerr(self.initiator.cq, &mut err) };
        Err(Error::Fabric {
            what: "raw baseline completion",
            code: err.err,
            message: self.initiator.domain.api.strerror(err.err),
        })
    }
}

impl Drop for RawRma {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.drainer.take() {
            let _ = t.join();
        }
    }
}

/// The target's side: reads its CQ (remote-write data) so manual progress runs.
fn drain(target: &Endpoint, stop: &AtomicBool, running: &AtomicBool) {
    // SAFETY: as in `reap`.
    let mut entries: [sys::fi_cq_data_entry; 16] = unsafe { std::mem::zeroed() };
    let mut sources = [api::FI_ADDR_NOTAVAIL; 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: live CQ; arrays of 16.
        let n = unsafe { api::cq_readfrom(target.cq, entries.as_mut_ptr(), 16, sources.as_mut_ptr()) };
        if n == -(sys::FI_EAVAIL as isize) {
            // SAFETY: as above.
            let mut err: sys::fi_cq_err_entry = unsafe { std::mem::zeroed() };
            // SAFETY: live CQ.
            unsafe { api::cq_readerr(target.cq, &mut err) };
        }
        if n <= 0 {
            if running.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}
