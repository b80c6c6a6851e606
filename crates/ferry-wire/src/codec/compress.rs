//! Reusable lz4 / zstd contexts for whole data sections.

use lz4_flex::block::{compress_into_with_table, get_maximum_output_size, CompressTable};

use super::{CodecError, CompressionUsed, MAX_BATCH_PAGES, PAGE_SIZE};

/// zstd window cap for decoding: the largest data section (4 MiB) fits in 2^23 bytes, so a frame
/// asking for more is hostile and must not make zstd allocate for it.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Encoder side: compression contexts, created on first use and kept.
pub(crate) struct Compressors {
    lz4_table: Option<Box<CompressTable>>,
    zstd: Option<(i32, zstd::bulk::Compressor<'static>)>,
}

impl Compressors {
    pub(crate) fn new() -> Self {
        Self {
            lz4_table: None,
            zstd: None,
        }
    }

    /// Compresses `input` into `out` (cleared first). `false` if the result would not be smaller
    /// than `input`, in which case the caller stores the section raw.
    pub(crate) fn compress(
        &mut self,
        kind: CompressionUsed,
        zstd_level: i32,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        match kind {
            CompressionUsed::None => false,
            CompressionUsed::Lz4 => {
                let table = self
                    .lz4_table
                    .get_or_insert_with(|| Box::new(CompressTable::large()));
                out.resize(get_maximum_output_size(input.len()), 0);
                match compress_into_with_table(input, out, table) {
                    Ok(n) if n < input.len() => {
                        out.truncate(n);
                        true
                    }
                    _ => false,
                }
            }
            CompressionUsed::Zstd => {
                let ctx = match &mut self.zstd {
                    Some((level, ctx)) if *level == zstd_level => ctx,
                    slot => match zstd::bulk::Compressor::new(zstd_level) {
                        Ok(ctx) => &mut slot.insert((zstd_level, ctx)).1,
                        Err(_) => return false,
                    },
                };
                // A destination one byte short of the input makes zstd itself give up as soon as
                // compression stops paying, instead of finishing a useless frame.
                out.reserve(input.len().saturating_sub(1));
                let mut dst = std::mem::take(out);
                let ok = match ctx.compress_to_buffer(input, &mut dst) {
                    Ok(n) => n < input.len(),
                    Err(_) => false,
                };
                *out = dst;
                ok
            }
        }
    }
}

/// Decoder side: the zstd context, created on first use and kept.
pub(crate) struct Decompressors {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl Decompressors {
    pub(crate) fn new() -> Self {
        Self { zstd: None }
    }

    /// Decompresses `input` into exactly `out.len()` bytes, or fails.
    pub(crate) fn decompress(
        &mut self,
        kind: CompressionUsed,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        debug_assert!(out.len() <= MAX_BATCH_PAGES * PAGE_SIZE);
        let n = match kind {
            CompressionUsed::None => {
                return Err(CodecError::DecompressFailed("not compressed".into()))
            }
            CompressionUsed::Lz4 => lz4_flex::block::decompress_into(input, out)
                .map_err(|e| CodecError::DecompressFailed(format!("lz4: {e}")))?,
            CompressionUsed::Zstd => {
                let ctx = match &mut self.zstd {
                    Some(ctx) => ctx,
                    slot => {
                        let mut ctx = zstd::bulk::Decompressor::new()
                            .map_err(|e| CodecError::DecompressFailed(format!("zstd: {e}")))?;
                        ctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                            ZSTD_WINDOW_LOG_MAX,
                        ))
                        .map_err(|e| CodecError::DecompressFailed(format!("zstd: {e}")))?;
                        slot.insert(ctx)
                    }
                };
                ctx.decompress_to_buffer(input, out)
                    .map_err(|e| CodecError::DecompressFailed(format!("zstd: {e}")))?
            }
        };
        if n != out.len() {
            return Err(CodecError::DecompressFailed(format!(
                "got {n} bytes, header says {}",
                out.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_to_grow() {
        let text: Vec<u8> = (0..64 * 1024).map(|i| b"abcdefgh"[(i * 7) % 8]).collect();
        let mut rng = 0x1234_5678_u64;
        let random: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        let mut c = Compressors::new();
        let mut d = Decompressors::new();
        let mut buf = Vec::new();
        for kind in [CompressionUsed::Lz4, CompressionUsed::Zstd] {
            assert!(c.compress(kind, 3, &text, &mut buf));
            assert!(buf.len() < text.len() / 4);
            let mut back = vec![0u8; text.len()];
            d.decompress(kind, &buf, &mut back).unwrap();
            assert_eq!(back, text);
            // Declared size larger than the real one is rejected.
            let mut bigger = vec![0u8; text.len() + 1];
            assert!(d.decompress(kind, &buf, &mut bigger).is_err());
            assert!(!c.compress(kind, 3, &random, &mut buf));
        }
        // A level change rebuilds the zstd context.
        assert!(c.compress(CompressionUsed::Zstd, 9, &text, &mut buf));
        assert!(!c.compress(CompressionUsed::None, 0, &text, &mut buf));
    }
}
