//! Ferry's migration stream: a versioned handshake, typed frames checked by CRC32C, and page codecs.
//!
//! Everything here is pure encode/decode over byte slices: no sockets, no threads, no KVM. That makes
//! it the fuzzing target and lets every other crate test against it cheaply. The byte layout is
//! documented in docs/PROTOCOL.md.

pub mod codec;
pub mod frame;
pub mod message;
pub mod run;

pub use frame::{
    crc_start, encode_header, encode_header_parts, FrameHeader, FrameType, HEADER_LEN, MAX_PAYLOAD,
    PAGES_PAUSED,
};

/// Why a stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame type byte is not one we know.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A length beyond what the protocol allows.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// Limit.
        max: u32,
    },
    /// The CRC32C does not match (corruption, or a frame from another migration or channel).
    #[error(
        "CRC mismatch in {kind:?} frame #{seq} (corrupt stream, or a frame from another migration)"
    )]
    BadCrc {
        /// Frame type.
        kind: FrameType,
        /// Its sequence number.
        seq: u32,
    },
    /// Frames out of order, repeated or missing.
    #[error("frame sequence {got} where {want} was expected (replayed, reordered or lost frame)")]
    BadSequence {
        /// Received.
        got: u32,
        /// Expected.
        want: u32,
    },
    /// The stream does not start with ferry's magic.
    #[error("not a ferry migration stream (bad magic)")]
    BadMagic,
    /// No protocol version both sides speak.
    #[error("protocol version mismatch: we speak {ours:?}, the peer speaks {theirs:?}")]
    VersionMismatch {
        /// Our (min, max).
        ours: (u16, u16),
        /// Their (min, max).
        theirs: (u16, u16),
    },
    /// A payload that does not parse.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}
