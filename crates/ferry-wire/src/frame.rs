//! Frames: a fixed 16-byte header checked before anything is allocated, then a payload.
//!
//! ```text
//!  0      1      2      4          8          12         16
//!  +------+------+------+----------+----------+----------+---- payload (len bytes) ----+
//!  | type | flags| rsvd |   len    |   seq    |  crc32c  |                              |
//!  +------+------+------+----------+----------+----------+------------------------------+
//! ```
//! All integers little-endian. `crc32c` covers header bytes 0..12 and the payload, seeded with the
//! migration's channel key, so a frame copied from another migration or channel fails its check.
//! `seq` counts frames per channel from 0; a gap, repeat or reorder is an error.

use crate::WireError;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// Largest payload a peer may announce; anything bigger is refused before allocation.
pub const MAX_PAYLOAD: u32 = 16 << 20;

/// Flag of [`FrameType::Pages`] and [`FrameType::PageRun`] frames: the source's VM was paused when
/// they were sent, so they are on the downtime path (the destination stops treating its page
/// copy as background work). Receivers that do not know it ignore it.
pub const PAGES_PAUSED: u8 = 1;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Source to destination: version, features, migration identity.
    Hello = 1,
    /// Destination to source: accepted version and features, or a refusal.
    HelloAck = 2,
    /// Shape of the VM: RAM size, vCPUs.
    VmConfig = 3,
    /// A batch of encoded pages (see [`crate::codec`]).
    Pages = 4,
    /// End of a pre-copy round.
    RoundEnd = 5,
    /// Complete device and vCPU state (switch-over).
    DeviceState = 6,
    /// Source: everything for switch-over is sent (with the RAM digest).
    Complete = 7,
    /// Destination: state loaded, ready to run if told to.
    Ready = 8,
    /// Source: point of no return; the destination runs the VM now.
    Go = 9,
    /// Destination: the VM runs here.
    Running = 10,
    /// Destination to source (post-copy): pages the guest faulted on, served first.
    PageRequest = 11,
    /// Either side: the migration is abandoned, with a reason.
    Abort = 12,
    /// Destination (post-copy): every page has arrived; the source may let go of its copy.
    Done = 13,
    /// Post-copy: the guest now runs on the destination; only pages follow.
    PostcopyStart = 14,
    /// Before a switch to post-copy: pages whose copy at the destination is stale (drop them now).
    Discard = 15,
    /// Destination, resuming an interrupted post-copy: the pages it still lacks.
    Missing = 16,
    /// Consecutive whole pages, raw, in guest order (see [`crate::run`]): the large-page fast path.
    PageRun = 17,
    /// Source, on channel 0 after a `Hello` announcing 0 channels: how many channels it opens,
    /// chosen once the handshake has timed the link (u16). With channel scaling, also on every
    /// channel between rounds: how many of the channels carry the pages that follow (u16).
    Channels = 18,
}

impl FrameType {
    /// Parses the type byte.
    pub fn from_u8(v: u8) -> Result<Self, WireError> {
        use FrameType::*;
        Ok(match v {
            1 => Hello,
            2 => HelloAck,
            3 => VmConfig,
            4 => Pages,
            5 => RoundEnd,
            6 => DeviceState,
            7 => Complete,
            8 => Ready,
            9 => Go,
            10 => Running,
            11 => PageRequest,
            12 => Abort,
            13 => Done,
            14 => PostcopyStart,
            15 => Discard,
            16 => Missing,
            17 => PageRun,
            18 => Channels,
            other => return Err(WireError::UnknownFrameType(other)),
        })
    }
}

/// A parsed, length-checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame type.
    pub kind: FrameType,
    /// Type-specific flags.
    pub flags: u8,
    /// Payload length (at most [`MAX_PAYLOAD`]).
    pub len: u32,
    /// Per-channel sequence number.
    pub seq: u32,
    /// CRC32C of header bytes 0..12 and the payload, seeded with the channel key.
    pub crc: u32,
}

impl FrameHeader {
    /// Parses and bounds-checks a header; nothing is allocated from its length before this passes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        let kind = FrameType::from_u8(b[0])?;
        if b[2] != 0 || b[3] != 0 {
            return Err(WireError::Malformed("reserved header bytes are not zero"));
        }
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if len > MAX_PAYLOAD {
            return Err(WireError::TooLarge {
                len,
                max: MAX_PAYLOAD,
            });
        }
        Ok(Self {
            kind,
            flags: b[1],
            len,
            seq: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            crc: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        })
    }

    /// Checks the payload against the header's CRC and the expected sequence number.
    pub fn verify(
        &self,
        raw_header: &[u8; HEADER_LEN],
        payload: &[u8],
        key: u32,
        expect_seq: u32,
    ) -> Result<(), WireError> {
        if payload.len() != self.len as usize {
            return Err(WireError::Malformed(
                "payload length differs from the header",
            ));
        }
        let crc = crc32c::crc32c_append(crc_start(raw_header, key), payload);
        self.verify_crc(crc, expect_seq)
    }

    /// Checks a CRC computed by the caller (from [`crc_start`], over exactly `len` payload bytes)
    /// and the expected sequence number: for payloads read straight into their destination.
    pub fn verify_crc(&self, crc: u32, expect_seq: u32) -> Result<(), WireError> {
        if crc != self.crc {
            return Err(WireError::BadCrc {
                kind: self.kind,
                seq: self.seq,
            });
        }
        if self.seq != expect_seq {
            return Err(WireError::BadSequence {
                got: self.seq,
                want: expect_seq,
            });
        }
        Ok(())
    }
}

/// The CRC state after a frame's header bytes 0..12, seeded with the channel key; the payload
/// continues it (`crc32c_append`).
pub fn crc_start(raw_header: &[u8; HEADER_LEN], key: u32) -> u32 {
    crc32c::crc32c_append(key, &raw_header[..12])
}

/// Writes a header for `payload` into `out[..16]`.
pub fn encode_header(
    kind: FrameType,
    flags: u8,
    seq: u32,
    payload: &[u8],
    key: u32,
) -> Result<[u8; HEADER_LEN], WireError> {
    encode_header_parts(kind, flags, seq, &[payload], key)
}

/// Writes a header for the payload made of `parts` in order (sent with one vectored write, so the
/// parts need not be copied together first).
pub fn encode_header_parts(
    kind: FrameType,
    flags: u8,
    seq: u32,
    parts: &[&[u8]],
    key: u32,
) -> Result<[u8; HEADER_LEN], WireError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total)
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or(WireError::TooLarge {
            len: total.min(u32::MAX as usize) as u32,
            max: MAX_PAYLOAD,
        })?;
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind as u8;
    h[1] = flags;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&seq.to_le_bytes());
    let crc = parts
        .iter()
        .fold(crc_start(&h, key), |c, p| crc32c::crc32c_append(c, p));
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let payload = b"hello pages";
        let h = encode_header(FrameType::Pages, 3, 7, payload, 0xabc).unwrap();
        let p = FrameHeader::parse(&h).unwrap();
        assert_eq!(
            (p.kind, p.flags, p.len, p.seq),
            (FrameType::Pages, 3, payload.len() as u32, 7)
        );
        p.verify(&h, payload, 0xabc, 7).unwrap();
        assert!(matches!(
            p.verify(&h, b"hello pageZ", 0xabc, 7),
            Err(WireError::BadCrc { .. })
        ));
        assert!(
            matches!(
                p.verify(&h, payload, 0xabd, 7),
                Err(WireError::BadCrc { .. })
            ),
            "other channel key"
        );
        assert!(matches!(
            p.verify(&h, payload, 0xabc, 8),
            Err(WireError::BadSequence { .. })
        ));
    }

    #[test]
    fn a_header_over_parts_equals_one_over_their_concatenation() {
        let whole = encode_header(FrameType::PageRun, 0, 3, b"abcdefgh", 9).unwrap();
        let parts = encode_header_parts(FrameType::PageRun, 0, 3, &[b"abc", b"", b"defgh"], 9);
        assert_eq!(parts.unwrap(), whole);
    }

    #[test]
    fn hostile_headers_are_refused_before_allocation() {
        let mut h = encode_header(FrameType::Pages, 0, 0, b"", 0).unwrap();
        h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FrameHeader::parse(&h),
            Err(WireError::TooLarge { .. })
        ));
        h[0] = 200;
        assert!(matches!(
            FrameHeader::parse(&h),
            Err(WireError::UnknownFrameType(200))
        ));
    }
}
