//! How a waiting caller (`wait`, `wait_any`) spends the time between its looks:
//! spin, then yield, then sleep — but never sleep while the transfers it waits for
//! end only when someone drives progress.
//!
//! Each look drives progress once. The fabric's tcp provider moves data only inside
//! progress calls (on both sides), so a waiter that slept there would stall its own
//! transfer for the length of the nap: with an initiator that has no progress
//! thread, `wait` keeps looking, yielding the core between looks (one core at most,
//! and other threads of the process still run). Transfers that end on their own
//! (copied in `post`, run by I/O workers, on the GPU) let the waiter sleep once it
//! has spun and yielded a while. What each mode costs:
//!
//! | phase | for | CPU |
//! |---|---|---|
//! | spin | `Config::wait_spin` (50 µs) | one core |
//! | yield | until `Config::wait_yield` (2 ms) has passed | one core, given up to any other runnable thread |
//! | yield (a transfer that needs the waiter's progress) | until the transfer ends or the timeout | as above |
//! | instead, with `FabricConfig::blocking`: sleep in the fabric's wait descriptor, 1 ms at most at a time | until the transfer ends or the timeout | a wake-up per provider event |
//! | sleep, 10 µs doubling to 500 µs | the rest | a few % of a core |

use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use super::Engine;
use crate::error::Result;

/// The longest a waiter blocks in a transport's wait descriptor between looks.
const BLOCK: Duration = Duration::from_millis(1);

impl Engine {
    /// Drives progress and calls `look` until it finds something (`Some`) or
    /// `timeout` passes (`None`), pausing between looks as the module docs say. The
    /// clock is read, and the waiter built, only once a look finds nothing: what is
    /// found at the first look costs neither.
    #[inline]
    pub(super) fn look_until<T>(
        &self,
        timeout: Duration,
        mut look: impl FnMut() -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let mut start = None;
        let mut waiter = None;
        loop {
            self.core.progress();
            if let Some(found) = look()? {
                return Ok(Some(found));
            }
            let waited = start.get_or_insert_with(Instant::now).elapsed();
            if waited >= timeout {
                return Ok(None);
            }
            let waiter = waiter.get_or_insert_with(|| {
                let needs_progress = self.core.transports.needs_caller_progress();
                let can_block = self.core.transports.can_block();
                Waiter::new(needs_progress, can_block, self.config.wait_spin, self.config.wait_yield)
            });
            if waiter.pause(waited, timeout - waited) {
                let _ = self.core.progress_blocking((timeout - waited).min(BLOCK));
            }
        }
    }
}

/// One waiter's state; see the module docs.
struct Waiter {
    needs_progress: bool,
    can_block: bool,
    spin: Duration,
    yield_for: Duration,
    backoff: Backoff,
    sleep: Duration,
}

impl Waiter {
    /// A waiter for transfers that end only under progress (`needs_progress`) or on
    /// their own, spinning for `spin` and yielding until `yield_for`.
    fn new(needs_progress: bool, can_block: bool, spin: Duration, yield_for: Duration) -> Waiter {
        Waiter {
            needs_progress,
            can_block,
            spin,
            yield_for,
            backoff: Backoff::new(),
            sleep: Duration::from_micros(10),
        }
    }

    /// Spends the time until the next look, having waited `waited`, `left` to go;
    /// `true` when the caller should block in the transports' wait object instead.
    #[inline]
    fn pause(&mut self, waited: Duration, left: Duration) -> bool {
        if waited < self.spin {
            // Each look reads the completion queues, and a transfer an I/O worker is
            // running usually ends within this: spinning keeps a yield's latency
            // (microseconds) off it.
            std::hint::spin_loop();
        } else if !self.backoff.is_completed() {
            self.backoff.snooze();
        } else if self.needs_progress && self.can_block {
            return true;
        } else if self.needs_progress || waited < self.yield_for {
            // Most transfers end within `yield_for` (a fabric window of them too), and
            // some end only if we go on looking: yielding keeps the latency of a
            // sleep-and-wake (tens of microseconds) off them.
            std::thread::yield_now();
        } else {
            std::thread::sleep(self.sleep.min(left));
            self.sleep = (self.sleep * 2).min(Duration::from_micros(500));
        }
        false
    }
}
