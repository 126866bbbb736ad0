//! The counters in Prometheus' text exposition format ([`Engine::metrics`]), written
//! into the caller's buffer: a serving binary scrapes them without the engine
//! allocating (and the metadata server answers `GET /metrics` with them).

use std::fmt::Write;

use super::Engine;
use super::stats::EngineStats;
use crate::error::{Error, Result};

/// A `fmt::Write` into a byte buffer that keeps counting past its end, so a short
/// buffer learns the length it needs.
struct Text<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end <= self.buf.len() {
            self.buf[self.len..end].copy_from_slice(s.as_bytes());
        }
        self.len = end;
        Ok(())
    }
}

impl Text<'_> {
    /// One metric: its help and type lines, then one sample per `(labels, value)`.
    fn metric(&mut self, engine: &str, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        let _ = writeln!(self, "# HELP ringxfer_{name} {help}");
        let _ = writeln!(self, "# TYPE ringxfer_{name} {kind}");
        for (labels, value) in samples {
            let _ = write!(self, "ringxfer_{name}{{engine=\"");
            self.escaped(engine);
            let _ = writeln!(self, "\"{labels}}} {value}");
        }
    }

    /// A label value with `\`, `"` and newlines escaped.
    fn escaped(&mut self, value: &str) {
        for c in value.chars() {
            let _ = match c {
                '\\' => self.write_str("\\\\"),
                '"' => self.write_str("\\\""),
                '\n' => self.write_str("\\n"),
                c => self.write_char(c),
            };
        }
    }
}

impl Engine {
    /// Writes every counter of [`stats`](Engine::stats) into `buf` in Prometheus'
    /// text exposition format (version 0.0.4), each sample labelled with the engine's
    /// name, and returns the length written. Nothing is allocated. A buffer too small
    /// is `Error::BufferTooSmall` with the length needed (about 4 KiB, more with the
    /// fabric); nothing useful is left in it.
    pub fn metrics(&self, buf: &mut [u8]) -> Result<usize> {
        write(&self.config.name, &self.stats(), buf)
    }
}

/// [`Engine::metrics`] of engine `name` whose counters are `stats`.
pub(crate) fn write(name: &str, stats: &EngineStats, buf: &mut [u8]) -> Result<usize> {
    let mut t = Text { buf, len: 0 };
    write_all(&mut t, name, stats);
    if t.len > t.buf.len() {
        return Err(Error::BufferTooSmall {
            needed: t.len,
            got: t.buf.len(),
        });
    }
    Ok(t.len)
}

fn write_all(t: &mut Text<'_>, e: &str, s: &EngineStats) {
    let r = &s.ring;
    let f = &s.fabric;
    t.metric(
        e,
        "slots",
        "gauge",
        "Transfer slots, fixed at Engine::new.",
        &[("", r.capacity as u64)],
    );
    t.metric(
        e,
        "slots_live",
        "gauge",
        "Slots held now (prepared, in flight, or ended and not released).",
        &[("", r.live as u64)],
    );
    t.metric(
        e,
        "slots_high_water",
        "gauge",
        "Most slots ever held at once.",
        &[("", r.high_water as u64)],
    );
    t.metric(
        e,
        "slots_acquired_total",
        "counter",
        "Slots taken by prepare.",
        &[("", r.acquired)],
    );
    t.metric(e, "slots_freed_total", "counter", "Slots given back.", &[("", r.freed)]);
    t.metric(
        e,
        "transfers_total",
        "counter",
        "Transfers ended, by outcome.",
        &[
            (",outcome=\"done\"", r.done),
            (",outcome=\"failed\"", r.failed),
            (",outcome=\"cancelled\"", r.cancelled),
        ],
    );
    t.metric(
        e,
        "stale_completions_total",
        "counter",
        "Completions of transfers already released, rejected by generation.",
        &[("", r.stale_completions)],
    );
    t.metric(
        e,
        "slots_retired_total",
        "counter",
        "Slots retired with their generations spent.",
        &[("", r.retired)],
    );
    t.metric(
        e,
        "registrations",
        "gauge",
        "Memory and file registrations alive.",
        &[("", s.registrations as u64)],
    );
    t.metric(
        e,
        "region_holds",
        "gauge",
        "Regions held by transfers and prepared lists.",
        &[("", s.pins)],
    );
    t.metric(e, "peers", "gauge", "Peers loaded.", &[("", s.peers as u64)]);
    t.metric(
        e,
        "prepared_lists",
        "gauge",
        "Prepared descriptor lists alive.",
        &[("", s.prepared_lists as u64)],
    );
    t.metric(
        e,
        "open_files",
        "gauge",
        "File descriptors held by file registrations.",
        &[("", s.open_files as u64)],
    );
    t.metric(
        e,
        "notifications_queued",
        "gauge",
        "Notifications waiting in the inbox.",
        &[("", s.notifications_queued as u64)],
    );
    t.metric(
        e,
        "completions_queued",
        "gauge",
        "Completions reported and waiting to be polled.",
        &[("", s.completions_queued as u64)],
    );
    t.metric(
        e,
        "notifications_delivered_total",
        "counter",
        "Notifications popped.",
        &[("", s.notifications_delivered)],
    );
    t.metric(
        e,
        "notifications_stale_total",
        "counter",
        "Notifications dropped as duplicates or stale.",
        &[("", s.notifications_stale)],
    );
    t.metric(
        e,
        "fabric_remote_writes_total",
        "counter",
        "Remote writes into this engine matched to a sender slot.",
        &[("", f.remote_writes)],
    );
    t.metric(
        e,
        "fabric_stale_total",
        "counter",
        "Fabric arrivals of an older generation, dropped.",
        &[("", f.stale)],
    );
    t.metric(
        e,
        "fabric_unattributed_total",
        "counter",
        "Fabric arrivals naming no sender or slot.",
        &[("", f.unattributed)],
    );
    t.metric(
        e,
        "fabric_notifications_total",
        "counter",
        "Notifications received over the fabric.",
        &[("", f.notifications)],
    );
    t.metric(
        e,
        "fabric_aborts_total",
        "counter",
        "Fabric notifications withdrawn by their failed transfer.",
        &[("", f.aborts)],
    );
    t.metric(
        e,
        "fabric_senders",
        "gauge",
        "Fabric senders known.",
        &[("", f.senders as u64)],
    );
    t.metric(
        e,
        "fabric_malformed_total",
        "counter",
        "Malformed fabric control messages.",
        &[("", f.malformed)],
    );
    t.metric(
        e,
        "fabric_expired_total",
        "counter",
        "Fabric transfers failed at their deadline.",
        &[("", f.expired)],
    );
    t.metric(
        e,
        "fabric_lost_peers_total",
        "counter",
        "Fabric peers found lost.",
        &[("", f.lost_peers)],
    );
    t.metric(
        e,
        "fabric_sleeps_total",
        "counter",
        "Sleeps in the fabric provider's wait descriptor.",
        &[("", f.sleeps)],
    );
    t.metric(
        e,
        "cuda_events",
        "gauge",
        "CUDA events alive (one per slot).",
        &[("", s.cuda_events as u64)],
    );
    t.metric(
        e,
        "cuda_ipc_mappings",
        "gauge",
        "Peers' GPU allocations mapped into this process.",
        &[("", s.cuda_ipc_mappings as u64)],
    );
    t.metric(
        e,
        "cuda_batch",
        "gauge",
        "1 where GPU runs are posted with cuMemcpyBatchAsync.",
        &[("", u64::from(s.cuda_batch))],
    );
    t.metric(
        e,
        "bytes",
        "gauge",
        "Bytes the engine holds (fixed at start, plus regions it allocated).",
        &[("", s.bytes)],
    );
}

#[cfg(test)]
mod tests {
    use super::Text;

    #[test]
    fn a_short_buffer_learns_the_length_it_needs() {
        let mut small = [0u8; 8];
        let mut t = Text {
            buf: &mut small,
            len: 0,
        };
        t.metric("a\"b", "x", "gauge", "help", &[("", 7)]);
        let needed = t.len;
        let mut big = vec![0u8; needed];
        let mut t = Text { buf: &mut big, len: 0 };
        t.metric("a\"b", "x", "gauge", "help", &[("", 7)]);
        assert_eq!(t.len, needed);
        let text = std::str::from_utf8(&big).unwrap();
        assert_eq!(
            text,
            "# HELP ringxfer_x help\n# TYPE ringxfer_x gauge\nringxfer_x{engine=\"a\\\"b\"} 7\n"
        );
    }
}
