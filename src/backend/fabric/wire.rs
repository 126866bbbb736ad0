//! The fabric transport's wire formats: the endpoint description in a peer's
//! metadata ([`FabricInfo`]), the immediate data a WRITE carries, and the control
//! messages (HELLO, WELCOME, NOTIFY, ABORT). The fuzz target drives
//! [`fuzz_control`] over them.
//!
//! A control message is a 32-byte header, little-endian: magic u32, kind u8, 1 byte
//! zero, sender tag u16, payload length u32, 4 bytes zero, handle u64, count u64; then
//! the payload.

use crate::ring::Handle;
use crate::wire::metadata::Reader;

const MAGIC: u32 = 0x5258_4631; // "RXF1"
pub(super) const HELLO: u8 = 1;
pub(super) const NOTIFY: u8 = 2;
pub(super) const ABORT: u8 = 3;
pub(super) const WELCOME: u8 = 4;
/// Where the sender's tag sits in 8-byte immediate data.
const TAG_SHIFT: u32 = 52;
pub(super) const HEADER: usize = 32;
/// engine id, capacity, name length, address length, name (≤ 255), address (≤ 256).
pub(super) const HELLO_MAX: usize = 8 + 4 + 2 + 2 + 255 + 256;

// ----- the endpoint description -----

/// What a peer's metadata says about its fabric endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FabricInfo {
    pub(crate) provider: String,
    pub(crate) address: Vec<u8>,
    pub(crate) capacity: u32,
    pub(crate) max_notif_bytes: u32,
    pub(crate) virt_addr: bool,
    /// (region id, remote key) of every memory region.
    pub(crate) keys: Vec<(u64, u64)>,
}

impl FabricInfo {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&self.max_notif_bytes.to_le_bytes());
        out.push(u8::from(self.virt_addr));
        out.extend_from_slice(&(self.provider.len() as u16).to_le_bytes());
        out.extend_from_slice(self.provider.as_bytes());
        out.extend_from_slice(&(self.address.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.address);
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for (id, key) in &self.keys {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&key.to_le_bytes());
        }
        out
    }

    /// Parses `conn`; `None` if malformed.
    pub(crate) fn decode(conn: &[u8]) -> Option<FabricInfo> {
        let mut r = Reader::new(conn);
        let capacity = r.u32().ok()?;
        let max_notif_bytes = r.u32().ok()?;
        let virt_addr = match r.u8().ok()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let n = r.u16().ok()? as usize;
        let provider = std::str::from_utf8(r.bytes(n).ok()?).ok()?.to_owned();
        let n = r.u16().ok()? as usize;
        let address = r.bytes(n).ok()?.to_vec();
        let count = r.u32().ok()? as usize;
        r.ensure_room(count, 16).ok()?;
        let keys = (0..count)
            .map(|_| Some((r.u64().ok()?, r.u64().ok()?)))
            .collect::<Option<Vec<_>>>()?;
        if !r.is_empty() || address.is_empty() || address.len() > 256 {
            return None;
        }
        Some(FabricInfo {
            provider,
            address,
            capacity,
            max_notif_bytes,
            virt_addr,
            keys,
        })
    }
}

// ----- immediate data -----

/// The immediate-data layout `cq_data_size` bytes allow: whether the sender's tag
/// fits, and how many generation bits are carried. 8 bytes: tag (12 bits),
/// generation (32), index (20); 4 bytes: generation (12) and index.
pub(super) fn immediate_layout(cq_data_size: usize) -> (bool, u32) {
    let tagged = cq_data_size >= 8;
    let gen_bits = if tagged {
        32
    } else {
        (cq_data_size as u32 * 8)
            .saturating_sub(crate::ring::INDEX_BITS)
            .min(32)
    };
    (tagged, gen_bits)
}

/// The immediate data a WRITE carries: the sender's `tag` at the receiver (if
/// `tagged`), the low `gen_bits` bits of the generation and the index.
pub(super) fn pack_immediate(handle: Handle, tag: u16, gen_bits: u32, tagged: bool) -> u64 {
    let generation = handle.generation() & ((1u64 << gen_bits) - 1);
    let tag = if tagged { u64::from(tag) << TAG_SHIFT } else { 0 };
    tag | generation << crate::ring::INDEX_BITS | u64::from(handle.index())
}

/// The sender tag in immediate data (meaningful only with tagged data).
pub(super) fn immediate_tag(data: u64) -> u64 {
    data >> TAG_SHIFT
}

/// (slot index, wire generation) of immediate data carrying `gen_bits` generation bits.
pub(super) fn unpack_immediate(data: u64, gen_bits: u32) -> (usize, u64) {
    let index = (data & ((1 << crate::ring::INDEX_BITS) - 1)) as usize;
    let generation = (data >> crate::ring::INDEX_BITS) & ((1u64 << gen_bits) - 1);
    (index, generation)
}

// ----- control messages -----

/// A control message's header.
pub(super) struct Header {
    pub(super) kind: u8,
    pub(super) tag: u16,
    pub(super) len: usize,
    pub(super) handle: u64,
    pub(super) count: u64,
}

/// Writes a control message into `buf` (`size` bytes); its length.
pub(super) fn write_message(
    buf: *mut u8,
    size: usize,
    kind: u8,
    tag: u16,
    handle: u64,
    count: u64,
    payload: &[u8],
) -> usize {
    let len = payload.len().min(size - HEADER);
    let mut header = [0u8; HEADER];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4] = kind;
    header[6..8].copy_from_slice(&tag.to_le_bytes());
    header[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    header[16..24].copy_from_slice(&handle.to_le_bytes());
    header[24..32].copy_from_slice(&count.to_le_bytes());
    // SAFETY: `buf` is a control buffer of `size` bytes owned by the caller (its slot,
    // or the HELLO buffer under its lock); HEADER + len ≤ size.
    unsafe {
        std::ptr::copy_nonoverlapping(header.as_ptr(), buf, HEADER);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), buf.add(HEADER), len);
    }
    HEADER + len
}

/// Parses the header of a received message of `len` bytes at `buf`.
pub(super) fn read_header(buf: *const u8, len: usize) -> Option<Header> {
    if len < HEADER {
        return None;
    }
    let mut header = [0u8; HEADER];
    // SAFETY: `buf` is a receive buffer of at least `len` ≥ HEADER bytes, written by
    // the provider before its completion was read.
    unsafe { std::ptr::copy_nonoverlapping(buf, header.as_mut_ptr(), HEADER) };
    let word = |r: std::ops::Range<usize>| header[r].iter().rev().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    let h = Header {
        kind: header[4],
        tag: word(6..8) as u16,
        len: word(8..12) as usize,
        handle: word(16..24),
        count: word(24..32),
    };
    (word(0..4) as u32 == MAGIC && HEADER + h.len <= len).then_some(h)
}

/// A HELLO's payload: the sender's engine id, ring capacity, name (its first 255
/// bytes) and endpoint address.
pub(super) fn hello_payload(engine_id: u64, capacity: usize, name: &str, addr: &[u8]) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(255)];
    let mut payload = Vec::with_capacity(HELLO_MAX);
    payload.extend_from_slice(&engine_id.to_le_bytes());
    payload.extend_from_slice(&(capacity as u32).to_le_bytes());
    payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
    payload.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    payload.extend_from_slice(name);
    payload.extend_from_slice(addr);
    payload
}

/// A parsed HELLO payload.
pub(super) struct Hello<'a> {
    pub(super) engine_id: u64,
    pub(super) capacity: usize,
    pub(super) name: String,
    pub(super) addr: &'a [u8],
}

/// Parses a HELLO payload; `None` if it is cut short.
pub(super) fn parse_hello(payload: &[u8]) -> Option<Hello<'_>> {
    let mut r = Reader::new(payload);
    let engine_id = r.u64().ok()?;
    let capacity = r.u32().ok()? as usize;
    let name_len = r.u16().ok()? as usize;
    let addr_len = r.u16().ok()? as usize;
    let name = String::from_utf8_lossy(r.bytes(name_len).ok()?).into_owned();
    let addr = r.bytes(addr_len).ok()?;
    Some(Hello {
        engine_id,
        capacity,
        name,
        addr,
    })
}

/// A WELCOME's payload: the receiver's engine id and the sender's tag there.
pub(super) fn welcome_payload(engine_id: u64, tag: u16) -> [u8; 10] {
    let mut payload = [0u8; 10];
    payload[..8].copy_from_slice(&engine_id.to_le_bytes());
    payload[8..].copy_from_slice(&tag.to_le_bytes());
    payload
}

/// Parses a WELCOME payload: (receiver engine id, our tag there).
pub(super) fn parse_welcome(payload: &[u8]) -> Option<(u64, u16)> {
    let engine = payload
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))?;
    let tag = payload.get(8..10).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
    Some((engine, tag))
}

/// Fuzzing entry point (not part of the API): parses `data` as a fabric endpoint
/// description and as a control message, checking that what parses round-trips and
/// stays inside the bytes it was given.
#[cfg(feature = "testing")]
pub fn fuzz_control(data: &[u8]) {
    if let Some(info) = FabricInfo::decode(data) {
        assert_eq!(FabricInfo::decode(&info.encode()), Some(info.clone()), "round trip");
        assert!(info.address.len() <= 256 && !info.address.is_empty());
    }
    if let Some(h) = read_header(data.as_ptr(), data.len()) {
        assert!(HEADER + h.len <= data.len(), "a header claims bytes it does not have");
        let mut copy = vec![0u8; data.len().max(HEADER)];
        let len = write_message(
            copy.as_mut_ptr(),
            copy.len(),
            h.kind,
            h.tag,
            h.handle,
            h.count,
            &data[HEADER..HEADER + h.len],
        );
        let again = read_header(copy.as_ptr(), len).expect("a written message parses");
        assert_eq!(
            (again.kind, again.tag, again.len, again.handle, again.count),
            (h.kind, h.tag, h.len, h.handle, h.count)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_rejects_garbage() {
        let info = FabricInfo {
            provider: "tcp;ofi_rxm".into(),
            address: vec![1, 2, 3, 4],
            capacity: 1024,
            max_notif_bytes: 256,
            virt_addr: true,
            keys: vec![(1 << 20 | 3, 77), (2 << 20 | 4, 78)],
        };
        let blob = info.encode();
        assert_eq!(FabricInfo::decode(&blob), Some(info));
        for cut in 0..blob.len() {
            assert_eq!(FabricInfo::decode(&blob[..cut]), None, "truncated at {cut}");
        }
        let mut long = blob.clone();
        long.push(0);
        assert_eq!(FabricInfo::decode(&long), None);
    }

    #[test]
    fn messages_round_trip_and_bad_headers_are_refused() {
        let mut buf = vec![0u8; 128];
        let len = write_message(buf.as_mut_ptr(), buf.len(), NOTIFY, 9, 42, 7, b"hello");
        assert_eq!(len, HEADER + 5);
        let h = read_header(buf.as_ptr(), len).unwrap();
        assert_eq!((h.kind, h.tag, h.len, h.handle, h.count), (NOTIFY, 9, 5, 42, 7));
        assert!(read_header(buf.as_ptr(), len - 1).is_none(), "payload cut short");
        buf[0] ^= 1;
        assert!(read_header(buf.as_ptr(), len).is_none(), "bad magic");
    }
}
