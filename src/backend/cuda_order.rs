//! The order in which the cuda transport's transfers complete: per stream, the slots
//! whose events were recorded on it, oldest first.
//!
//! Work on one stream completes in the order it was enqueued, so `progress` asks the
//! driver about a stream's oldest transfer only, and stops at the first that is not
//! yet done: a call costs one event query per transfer that ended plus one per busy
//! stream, however many transfers are in flight (querying every in-flight event on
//! every call made `wait` on one of sixteen cost sixteen driver calls).
//!
//! Posting threads push in the order their `launch` runs, which may differ from the
//! order their events were recorded when two threads share a stream. Stopping at the
//! first incomplete transfer is still exact — every transfer is ended only by a query
//! of its own event — it can only end a later-recorded one a call later.

use std::sync::Mutex;

/// One FIFO of slot indices per stream, each sized at start for every slot that maps
/// to its stream (a slot is in at most one queue, once).
pub(crate) struct StreamOrder {
    queues: Box<[Mutex<Fifo>]>,
}

struct Fifo {
    slots: Box<[u32]>,
    head: usize,
    len: usize,
}

impl StreamOrder {
    /// Queues for `streams` streams and `capacity` slots (slot `i` on stream
    /// `i % streams`).
    pub(crate) fn new(streams: usize, capacity: usize) -> StreamOrder {
        let per_stream = capacity.div_ceil(streams.max(1)).max(1);
        StreamOrder {
            queues: (0..streams.max(1))
                .map(|_| {
                    Mutex::new(Fifo {
                        slots: vec![0; per_stream].into_boxed_slice(),
                        head: 0,
                        len: 0,
                    })
                })
                .collect(),
        }
    }

    /// Streams (queues).
    /// Copies queued on every stream and not yet seen complete.
    pub(crate) fn queued(&self) -> usize {
        self.queues.iter().map(|q| lock(q).len).sum()
    }

    pub(crate) fn streams(&self) -> usize {
        self.queues.len()
    }

    /// Bytes allocated at start.
    pub(crate) fn bytes(&self) -> usize {
        self.queues.iter().map(|q| lock(q).slots.len() * 4).sum()
    }

    /// Appends `slot` to `stream`'s queue. A slot is queued once while in flight, so
    /// a queue is never full; if it were (a bug), the slot is refused and false
    /// returned rather than another overwritten.
    pub(crate) fn push(&self, stream: usize, slot: u32) -> bool {
        let mut q = lock(&self.queues[stream]);
        if q.len == q.slots.len() {
            return false;
        }
        let at = (q.head + q.len) % q.slots.len();
        q.slots[at] = slot;
        q.len += 1;
        true
    }

    /// The oldest slot queued on `stream`.
    pub(crate) fn front(&self, stream: usize) -> Option<u32> {
        let q = lock(&self.queues[stream]);
        (q.len > 0).then(|| q.slots[q.head])
    }

    /// Removes `stream`'s oldest slot (the one `front` gave: only the progress
    /// thread pops).
    pub(crate) fn pop(&self, stream: usize) {
        let mut q = lock(&self.queues[stream]);
        if q.len > 0 {
            q.head = (q.head + 1) % q.slots.len();
            q.len -= 1;
        }
    }
}

fn lock(q: &Mutex<Fifo>) -> std::sync::MutexGuard<'_, Fifo> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::StreamOrder;

    #[test]
    fn each_stream_is_first_in_first_out_and_wraps() {
        let order = StreamOrder::new(2, 8);
        for round in 0..5u32 {
            for k in 0..4u32 {
                assert!(order.push(1, round * 10 + k));
            }
            assert!(!order.push(1, 99), "a queue holds its stream's slots only");
            for k in 0..4u32 {
                assert_eq!(order.front(1), Some(round * 10 + k));
                order.pop(1);
            }
            assert_eq!(order.front(1), None);
            assert_eq!(order.front(0), None);
        }
    }
}
