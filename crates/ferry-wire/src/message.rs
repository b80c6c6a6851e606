//! Typed payloads of the control frames, with bounds-checked decoding.

use crate::WireError;

/// Bytes that open every migration stream (in the Hello frame).
pub const MAGIC: [u8; 8] = *b"FERRYMIG";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Oldest protocol version this build accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Largest number of pages one PageRequest may name.
pub const MAX_REQUEST_PAGES: usize = 4096;

/// Optional capabilities, negotiated as the intersection of both sides' bits.
pub mod features {
    /// Zero pages sent as a flag.
    pub const ZERO_PAGES: u64 = 1 << 0;
    /// Duplicate pages sent as references.
    pub const DEDUP: u64 = 1 << 1;
    /// XBZRLE delta pages.
    pub const XBZRLE: u64 = 1 << 2;
    /// LZ4 batch compression.
    pub const LZ4: u64 = 1 << 3;
    /// Zstandard batch compression.
    pub const ZSTD: u64 = 1 << 4;
    /// Post-copy (destination runs first, pages follow).
    pub const POSTCOPY: u64 = 1 << 5;
    /// Several parallel channels.
    pub const MULTI_CHANNEL: u64 = 1 << 6;
    /// Same host: guest RAM handed over as a file descriptor instead of copied.
    pub const FD_HANDOVER: u64 = 1 << 7;
    /// Runs of consecutive raw pages in [`crate::FrameType::PageRun`] frames, which the
    /// destination reads straight into guest RAM.
    pub const PAGE_RUNS: u64 = 1 << 9;
    /// The source may change how many channels carry pages between rounds (a
    /// [`crate::FrameType::Channels`] frame on every channel; crates/ferry-migrate/src/parallelism.rs).
    pub const CHANNEL_SCALING: u64 = 1 << 10;
    /// Everything this build implements.
    pub const ALL: u64 = ZERO_PAGES
        | DEDUP
        | XBZRLE
        | LZ4
        | ZSTD
        | POSTCOPY
        | MULTI_CHANNEL
        | FD_HANDOVER
        | PAGE_RUNS
        | CHANNEL_SCALING;
    /// Not a capability but an intent: this connection finishes an interrupted post-copy (same
    /// migration id) instead of starting a migration.
    pub const RECOVER: u64 = 1 << 8;
}

/// The payload of a [`crate::FrameType::Channels`] frame: a channel count, u16 little-endian.
pub fn decode_channel_count(p: &[u8]) -> Result<u16, WireError> {
    <[u8; 2]>::try_from(p)
        .map(u16::from_le_bytes)
        .map_err(|_| WireError::Malformed("channel count"))
}

/// Cursor over a payload that fails instead of panicking.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Malformed("payload shorter than its fields"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(
            self.take(2)?
                .try_into()
                .map_err(|_| WireError::Malformed("u16"))?,
        ))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?
                .try_into()
                .map_err(|_| WireError::Malformed("u32"))?,
        ))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?
                .try_into()
                .map_err(|_| WireError::Malformed("u64"))?,
        ))
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.take(N)?
            .try_into()
            .map_err(|_| WireError::Malformed("array"))
    }
    fn string(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn end(self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed(
                "trailing bytes after the payload's fields",
            ))
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// Opening message from the source on every channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Oldest version the source speaks.
    pub min_version: u16,
    /// Newest version the source speaks.
    pub max_version: u16,
    /// Features the source offers.
    pub features: u64,
    /// Random identity of this migration; binds every channel to it.
    pub migration_id: [u8; 16],
    /// Index of this channel (0 is the control channel).
    pub channel: u16,
    /// How many channels the migration uses; 0 (channel 0 only) means a `Channels` frame follows
    /// the handshake with the count.
    pub channels: u16,
}

impl Hello {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&self.min_version.to_le_bytes());
        v.extend_from_slice(&self.max_version.to_le_bytes());
        v.extend_from_slice(&self.features.to_le_bytes());
        v.extend_from_slice(&self.migration_id);
        v.extend_from_slice(&self.channel.to_le_bytes());
        v.extend_from_slice(&self.channels.to_le_bytes());
        v
    }

    /// Decodes and checks the magic.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { b };
        if r.arr::<8>()? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let h = Self {
            min_version: r.u16()?,
            max_version: r.u16()?,
            features: r.u64()?,
            migration_id: r.arr()?,
            channel: r.u16()?,
            channels: r.u16()?,
        };
        r.end()?;
        if (h.channels == 0 && h.channel != 0) || (h.channels != 0 && h.channel >= h.channels) {
            return Err(WireError::Malformed("channel index out of range"));
        }
        Ok(h)
    }

    /// Picks the version both sides speak, or says why there is none.
    pub fn negotiate_version(&self) -> Result<u16, WireError> {
        let v = self.max_version.min(PROTOCOL_VERSION);
        if v < self.min_version.max(MIN_PROTOCOL_VERSION) {
            return Err(WireError::VersionMismatch {
                ours: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
                theirs: (self.min_version, self.max_version),
            });
        }
        Ok(v)
    }
}

/// The destination's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloAck {
    /// Chosen version.
    pub version: u16,
    /// Accepted features.
    pub features: u64,
    /// Why the destination refuses, if it does.
    pub refusal: Option<String>,
}

impl HelloAck {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&self.features.to_le_bytes());
        v.push(u8::from(self.refusal.is_some()));
        put_string(&mut v, self.refusal.as_deref().unwrap_or(""));
        v
    }

    /// Decodes the payload.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { b };
        let version = r.u16()?;
        let features = r.u64()?;
        let refused = r.u8()? != 0;
        let reason = r.string()?;
        r.end()?;
        Ok(Self {
            version,
            features,
            refusal: refused.then_some(reason),
        })
    }
}

/// Shape of the VM being moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// RAM in bytes.
    pub memory: u64,
    /// vCPU count.
    pub vcpus: u8,
    /// Strategy the source runs (informational; the destination adapts to what arrives).
    pub strategy: u8,
}

impl VmConfig {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.memory.to_le_bytes().to_vec();
        v.push(self.vcpus);
        v.push(self.strategy);
        v
    }

    /// Decodes the payload.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { b };
        let c = Self {
            memory: r.u64()?,
            vcpus: r.u8()?,
            strategy: r.u8()?,
        };
        r.end()?;
        Ok(c)
    }
}

/// End of a round, or the source's summary at switch-over ([`crate::FrameType::Complete`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundSummary {
    /// Round number (0 = bulk copy).
    pub round: u32,
    /// Pages the source sent on all channels so far.
    pub pages: u64,
    /// Digest of all of RAM at switch-over (zero before switch-over).
    pub digest: [u8; 16],
}

impl RoundSummary {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.round.to_le_bytes().to_vec();
        v.extend_from_slice(&self.pages.to_le_bytes());
        v.extend_from_slice(&self.digest);
        v
    }

    /// Decodes the payload.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { b };
        let s = Self {
            round: r.u32()?,
            pages: r.u64()?,
            digest: r.arr()?,
        };
        r.end()?;
        Ok(s)
    }
}

/// Pages the destination needs now (post-copy faults).
pub fn encode_page_request(pages: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + 8 * pages.len());
    v.extend_from_slice(&(pages.len().min(MAX_REQUEST_PAGES) as u16).to_le_bytes());
    for p in pages.iter().take(MAX_REQUEST_PAGES) {
        v.extend_from_slice(&p.to_le_bytes());
    }
    v
}

/// Decodes a page request.
pub fn decode_page_request(b: &[u8]) -> Result<Vec<u64>, WireError> {
    let mut r = Reader { b };
    let n = r.u16()? as usize;
    if n > MAX_REQUEST_PAGES {
        return Err(WireError::Malformed("page request names too many pages"));
    }
    let pages = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
    r.end()?;
    Ok(pages)
}

/// A reason string (Abort frames).
pub fn encode_reason(reason: &str) -> Vec<u8> {
    let mut v = Vec::new();
    put_string(&mut v, reason);
    v
}

/// Decodes a reason string.
pub fn decode_reason(b: &[u8]) -> Result<String, WireError> {
    let mut r = Reader { b };
    let s = r.string()?;
    r.end()?;
    Ok(s)
}

/// The CRC seed of one channel of one migration.
pub fn channel_key(migration_id: &[u8; 16], channel: u16) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(migration_id), &channel.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            min_version: 1,
            max_version: 1,
            features: features::ALL,
            migration_id: [7; 16],
            channel: 0,
            channels: 2,
        }
    }

    #[test]
    fn messages_round_trip() {
        assert_eq!(Hello::decode(&hello().encode()).unwrap(), hello());
        let ack = HelloAck {
            version: 1,
            features: 3,
            refusal: Some("no".into()),
        };
        assert_eq!(HelloAck::decode(&ack.encode()).unwrap(), ack);
        let c = VmConfig {
            memory: 1 << 30,
            vcpus: 2,
            strategy: 1,
        };
        assert_eq!(VmConfig::decode(&c.encode()).unwrap(), c);
        let s = RoundSummary {
            round: 3,
            pages: 99,
            digest: [1; 16],
        };
        assert_eq!(RoundSummary::decode(&s.encode()).unwrap(), s);
        assert_eq!(
            decode_page_request(&encode_page_request(&[1, 2, 3])).unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(
            decode_reason(&encode_reason("disk full")).unwrap(),
            "disk full"
        );
        assert_ne!(channel_key(&[7; 16], 0), channel_key(&[7; 16], 1));
    }

    #[test]
    fn bad_payloads_are_errors() {
        let mut h = hello().encode();
        h[0] = b'X';
        assert!(matches!(Hello::decode(&h), Err(WireError::BadMagic)));
        assert!(Hello::decode(&hello().encode()[..20]).is_err());
        let mut extra = hello().encode();
        extra.push(0);
        assert!(Hello::decode(&extra).is_err());
        assert!(decode_page_request(&[0xff, 0xff]).is_err());
        let future = Hello {
            min_version: 2,
            max_version: 5,
            ..hello()
        };
        assert!(matches!(
            future.negotiate_version(),
            Err(WireError::VersionMismatch { .. })
        ));
    }
}
