//! Page codecs: turn a batch of 4 KiB guest pages into one self-contained payload and back.
//!
//! Pure functions over byte slices: no I/O, no threads. The outer frame layer carries each payload
//! and protects it with CRC32C; this layer only has to be *safe* on arbitrary bytes (never panic,
//! never write out of bounds, never allocate from an unchecked length, never half-apply a batch).
//!
//! # Per-page encodings
//!
//! | kind     | tag | what travels                                     | decoder does                              |
//! |----------|-----|--------------------------------------------------|-------------------------------------------|
//! | Normal   | 0   | the 4096 raw bytes, in the data section          | copies them into the page                 |
//! | Zero     | 1   | nothing                                          | zero-fills the page                       |
//! | Dup      | 2   | index of an earlier page of the same batch       | copies that page's decoded content        |
//! | Xbzrle   | 3   | a delta (see below), in the data section         | applies it to the destination's current page |
//!
//! # Batch payload layout (all integers little-endian)
//!
//! | offset          | size        | field                                                            |
//! |-----------------|-------------|------------------------------------------------------------------|
//! | 0               | 1           | `version` = 1                                                    |
//! | 1               | 1           | `compression` of the data section: 0 none, 1 lz4 block, 2 zstd frame |
//! | 2               | 2           | `page_count` (u16), `0..=MAX_BATCH_PAGES`                        |
//! | 4               | 4           | `data_len` (u32): data section length *after* decompression      |
//! | 8               | 4           | `stored_len` (u32): data section length as stored in the payload |
//! | 12              | 4           | `desc_len` (u32): descriptor section length                      |
//! | 16              | stored_len  | data section (compressed iff `compression != 0`)                 |
//! | 16 + stored_len | desc_len    | descriptor section: `page_count` descriptors back to back        |
//!
//! The payload length must equal `16 + stored_len + desc_len` exactly. With `compression = 0`,
//! `stored_len == data_len`. `data_len` never exceeds `page_count * 4096`.
//!
//! The data section is the concatenation, in page order, of the 4096 bytes of every Normal page and
//! the delta of every Xbzrle page. It comes first so the encoder can write it straight into the
//! output when it does not compress.
//!
//! Page order is the encoder's choice. When it compresses a batch whose gfns strictly increase, it
//! sends the Normal pages that look random last (with any Dup of them), so the compressor sees the
//! compressible pages together; the decoder needs nothing for that: descriptors carry their gfns.
//!
//! A descriptor is:
//!
//! | size      | field                                                                        |
//! |-----------|------------------------------------------------------------------------------|
//! | 1         | `tag` (0 Normal, 1 Zero, 2 Dup, 3 Xbzrle; other values are rejected)        |
//! | 1..=10    | `gfn` as a zigzag LEB128 varint of `gfn - (previous gfn + 1)` (wrapping; the "previous gfn" of the first page is `u64::MAX`, so a batch starting at gfn 0 costs one byte) |
//! | 1..=3     | Dup only: LEB128 index of the source page, `< this page's index`            |
//! | 1..=2     | Xbzrle only: LEB128 delta length, `<= XBZRLE_MAX_DELTA`                     |
//!
//! # XBZRLE delta
//!
//! As in QEMU: a sequence of `(zrun, nzrun, bytes[nzrun])` where `zrun` (LEB128) counts unchanged
//! bytes to skip and `nzrun` (LEB128, > 0) counts changed bytes that follow literally. Only the first
//! `zrun` may be 0. A trailing unchanged run is not encoded; an empty delta means "unchanged".
//!
//! # Decoding order
//!
//! The decoder validates the whole payload (header, lengths, decompression, every descriptor,
//! the structure of every delta, every gfn against the store) before writing anything, then writes
//! pages in batch order. A Dup copies the decoded content of its source page. An Xbzrle delta is
//! applied in place to the store's page as it is at that moment; the encoder only delta-encodes the
//! first occurrence of a gfn in a batch, so that is the content from before the batch.
//!
//! **Precondition:** the destination's current content of that gfn must equal the version the
//! encoder last sent for it. That holds in pre-copy, where the destination guest has not run and the
//! payloads are decoded in the order they were encoded. The caller must turn xbzrle off for
//! post-copy (the destination runs and dirties pages) and must [`BatchEncoder::reset`] the encoder if
//! an encoded payload is dropped rather than delivered.

mod adaptive;
mod compress;
mod decoder;
mod dedup;
mod encoder;
mod varint;
mod xbzrle;
mod zero;

use std::fmt;
use std::str::FromStr;

pub use adaptive::{
    saving_per_byte, AdaptiveDecision, AdaptivePolicy, AdaptiveState, CodecEstimate,
    CompressionSample, LinkSample,
};
pub use decoder::{BatchDecoder, DecodeStats};
pub use encoder::{BatchEncoder, BatchStats, MIN_RUN_PAGES};
pub use xbzrle::{xbzrle_check, xbzrle_decode, xbzrle_encode};
pub use zero::is_zero_page;

/// Size of one guest page in bytes.
pub const PAGE_SIZE: usize = 4096;

/// Most pages one batch payload may carry; the decoder rejects larger counts.
pub const MAX_BATCH_PAGES: usize = 1024;

/// Largest xbzrle delta; a page whose delta would be longer is sent Normal (half a page, as QEMU).
pub const XBZRLE_MAX_DELTA: usize = PAGE_SIZE / 2;

/// Current batch payload format version (byte 0 of every payload).
pub const FORMAT_VERSION: u8 = 1;

/// Length of the fixed batch header.
pub const HEADER_LEN: usize = 16;

/// Upper bound on the payload [`BatchEncoder::encode`] produces for `pages` pages (header, raw
/// data section, and the longest descriptors), for sizing frames and buffers. Compression never
/// makes a payload longer: a data section that does not shrink is stored raw.
pub const fn max_payload_len(pages: usize) -> usize {
    // Longest descriptor: tag + 10-byte gfn varint + 2-byte dup index or delta length.
    const MAX_DESC: usize = 1 + 10 + 2;
    HEADER_LEN + pages * (PAGE_SIZE + MAX_DESC)
}

/// How the data section of a batch is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Never compress.
    Off,
    /// Always lz4 (block format); stored raw if that does not shrink it.
    Lz4,
    /// Always zstd at the given level; stored raw if that does not shrink it.
    Zstd {
        /// zstd level (1..=22; 0 means zstd's default, 3).
        level: i32,
    },
    /// Decide per batch between raw, lz4 and zstd from measured ratio, speed and link (see
    /// [`AdaptivePolicy`]).
    Adaptive,
}

/// Error from parsing a [`Compression`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?} (expected off, lz4, zstd, zstd:LEVEL or adaptive)")]
pub struct ParseCompressionError(String);

impl FromStr for Compression {
    type Err = ParseCompressionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCompressionError(s.to_owned());
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(Self::Off),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd { level: 3 }),
            "adaptive" => Ok(Self::Adaptive),
            other => {
                let level = other.strip_prefix("zstd:").ok_or_else(err)?;
                let level: i32 = level.parse().map_err(|_| err())?;
                if !(1..=22).contains(&level) {
                    return Err(err());
                }
                Ok(Self::Zstd { level })
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Lz4 => f.write_str("lz4"),
            Self::Zstd { level } => write!(f, "zstd:{level}"),
            Self::Adaptive => f.write_str("adaptive"),
        }
    }
}

/// The compression actually applied to one batch's data section (the header's byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionUsed {
    /// Stored raw.
    #[default]
    None,
    /// lz4 block.
    Lz4,
    /// zstd frame.
    Zstd,
}

impl CompressionUsed {
    fn to_byte(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Lz4 => 1,
            Self::Zstd => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::None),
            1 => Some(Self::Lz4),
            2 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// What the [`BatchEncoder`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Send all-zero pages as a flag only.
    pub zero_pages: bool,
    /// Send a page equal to an earlier page of the same batch as a reference to it.
    pub dedup: bool,
    /// Bytes of previously sent pages kept for xbzrle deltas; 0 turns xbzrle off.
    pub xbzrle_cache_bytes: usize,
    /// How to compress each batch's data section.
    pub compression: Compression,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            zero_pages: true,
            dedup: true,
            xbzrle_cache_bytes: 0,
            compression: Compression::Adaptive,
        }
    }
}

/// One page handed to the encoder: its guest frame number and its 4096 bytes.
#[derive(Debug, Clone, Copy)]
pub struct PageRef<'a> {
    /// Guest frame number.
    pub gfn: u64,
    /// Page content; must be exactly [`PAGE_SIZE`] bytes.
    pub data: &'a [u8],
}

/// The destination's memory, as seen by the decoder.
///
/// The decoder calls `page_mut` twice per page: once to validate every gfn before writing, once
/// to write. It must answer the same way both times.
pub trait PageStore {
    /// The 4096 bytes of page `gfn`, or [`CodecError::GfnOutOfRange`] if the guest has no such page.
    fn page_mut(&mut self, gfn: u64) -> Result<&mut [u8], CodecError>;
}

/// Why a batch payload was rejected. Nothing has been written to the store when one is returned,
/// unless the store itself failed a gfn while pages were written after accepting it during
/// validation (a store that changed its mind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The payload ends before a field it declares.
    #[error("batch payload truncated: {what}")]
    Truncated {
        /// Which field was cut.
        what: &'static str,
    },
    /// Unknown format version.
    #[error("unsupported batch format version {0}")]
    BadVersion(u8),
    /// Unknown compression id in the header.
    #[error("unknown compression id {0}")]
    BadCompression(u8),
    /// Page count above [`MAX_BATCH_PAGES`].
    #[error("batch page count {0} exceeds the maximum {MAX_BATCH_PAGES}")]
    BadPageCount(usize),
    /// Section lengths inconsistent with each other or with the payload length.
    #[error("batch length fields inconsistent: {0}")]
    BadLength(&'static str),
    /// A descriptor is malformed (bad tag, varint, dup index or delta length).
    #[error("bad page descriptor at page {index}: {what}")]
    BadEncoding {
        /// Index of the page within the batch.
        index: usize,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The data section did not decompress to exactly `data_len` bytes.
    #[error("data section failed to decompress: {0}")]
    DecompressFailed(String),
    /// An xbzrle delta is malformed or runs past the end of the page.
    #[error("xbzrle delta of page {index} is malformed or overflows the page")]
    XbzrleOverflow {
        /// Index of the page within the batch.
        index: usize,
    },
    /// The store has no page at this gfn.
    #[error("gfn {0:#x} is outside guest memory")]
    GfnOutOfRange(u64),
    /// The store returned a page that is not [`PAGE_SIZE`] bytes.
    #[error("store returned {len} bytes for gfn {gfn:#x}, expected {PAGE_SIZE}")]
    BadPageLen {
        /// The gfn asked for.
        gfn: u64,
        /// Length of the slice the store returned.
        len: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_parses_and_displays() {
        assert_eq!("off".parse(), Ok(Compression::Off));
        assert_eq!("lz4".parse(), Ok(Compression::Lz4));
        assert_eq!("zstd".parse(), Ok(Compression::Zstd { level: 3 }));
        assert_eq!("zstd:7".parse(), Ok(Compression::Zstd { level: 7 }));
        assert_eq!("Adaptive".parse(), Ok(Compression::Adaptive));
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("zstd:x".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
        for c in [
            Compression::Off,
            Compression::Lz4,
            Compression::Zstd { level: 19 },
            Compression::Adaptive,
        ] {
            assert_eq!(c.to_string().parse(), Ok(c));
        }
    }

    #[test]
    fn compression_byte_round_trips() {
        for c in [
            CompressionUsed::None,
            CompressionUsed::Lz4,
            CompressionUsed::Zstd,
        ] {
            assert_eq!(CompressionUsed::from_byte(c.to_byte()), Some(c));
        }
        assert_eq!(CompressionUsed::from_byte(3), None);
    }
}
