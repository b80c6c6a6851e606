//! Fuzz targets for every decoder that bytes from outside reach: a migration peer (frames, control
//! messages, page batches, the handshake), a control-socket client, and an image file (the multiboot
//! loader).
//!
//! Each target is a plain function from bytes to nothing that panics when it finds a bug: not only
//! on a crash inside a decoder, but also when a decoder accepts something that does not survive a
//! round trip, or touches memory it promised to leave alone. The same functions are driven by
//! cargo-fuzz (the `fuzz/` directory at the repository root, libFuzzer, nightly) for the long runs
//! recorded in docs/RELIABILITY.md, and by [`mutate::short_run`] in `cargo test` (stable, no
//! sanitizer, a fixed seed) so that CI replays the committed corpora and a few thousand mutations of
//! them on every run.

pub mod mutate;
pub mod targets;

pub use targets::Target;
