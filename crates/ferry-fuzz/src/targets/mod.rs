//! The fuzz targets, one module per decoder family, and [`Target`], the list of them.

mod control;
mod frame;
mod multiboot;
mod page_codec;

use std::fmt;

/// One fuzz target: a name (the cargo-fuzz binary and corpus directory) and its entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Frame headers and frame streams ([`ferry_wire::FrameHeader`]).
    Frame,
    /// Control-socket requests and replies ([`ferry_host::protocol`]).
    Control,
    /// The multiboot v1 loader over an image file ([`ferry_vmm::loader`]).
    Multiboot,
    /// Page-batch payloads ([`ferry_wire::codec::BatchDecoder`]) and encoder round trips.
    PageCodec,
}

impl Target {
    /// Every target, in the order the short run and the docs list them.
    pub const ALL: [Target; 4] = [
        Target::Frame,
        Target::PageCodec,
        Target::Control,
        Target::Multiboot,
    ];

    /// The name of the cargo-fuzz target and of its corpus directory under `fuzz/corpus/`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Frame => "frame",
            Target::Control => "control",
            Target::Multiboot => "multiboot",
            Target::PageCodec => "page_codec",
        }
    }

    /// Runs the target on one input; panics on a bug.
    pub fn run(self, data: &[u8]) {
        match self {
            Target::Frame => frame::run(data),
            Target::Control => control::run(data),
            Target::Multiboot => multiboot::run(data),
            Target::PageCodec => page_codec::run(data),
        }
    }

    /// A few valid inputs that start a corpus (the committed corpora grew from these).
    pub fn seeds(self) -> Vec<Vec<u8>> {
        match self {
            Target::Frame => frame::seeds(),
            Target::Control => control::seeds(),
            Target::Multiboot => multiboot::seeds(),
            Target::PageCodec => page_codec::seeds(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
