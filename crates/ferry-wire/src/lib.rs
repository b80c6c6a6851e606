//! Ferry's migration stream: a versioned handshake, typed frames checked by CRC32C, and page codecs.
//!
//! Everything here is pure encode/decode over byte slices: no sockets, no threads, no KVM. That makes
//! it the fuzzing target and lets every other crate test against it cheaply.

pub mod codec;
