//! Batch encoder: pages in, one self-contained payload out.

use std::time::Instant;

use super::adaptive::{AdaptiveDecision, AdaptivePolicy, AdaptiveState, CompressionSample};
use super::compress::Compressors;
use super::dedup::DedupIndex;
use super::varint::{put_u64, zigzag};
use super::xbzrle::{xbzrle_encode, XbzrleCache, DELTA_BUF};
use super::zero::is_zero_page;
use super::{
    Compression, CompressionUsed, EncoderConfig, PageRef, FORMAT_VERSION, HEADER_LEN,
    MAX_BATCH_PAGES, PAGE_SIZE,
};

/// Descriptor tags (see the layout table in the module docs).
pub(crate) const TAG_NORMAL: u8 = 0;
pub(crate) const TAG_ZERO: u8 = 1;
pub(crate) const TAG_DUP: u8 = 2;
pub(crate) const TAG_XBZRLE: u8 = 3;

/// What one [`BatchEncoder::encode`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    /// Pages in the batch.
    pub pages: usize,
    /// Pages sent as Zero.
    pub zero: usize,
    /// Pages sent as Dup.
    pub dup: usize,
    /// Pages sent as Xbzrle deltas.
    pub xbzrle: usize,
    /// Pages sent raw.
    pub normal: usize,
    /// `pages * 4096`.
    pub raw_bytes: usize,
    /// Data section size before compression.
    pub data_bytes: usize,
    /// Bytes appended to `out` (the whole payload).
    pub encoded_bytes: usize,
    /// Compression applied to the data section.
    pub compression: CompressionUsed,
}

/// Encodes batches of pages; keeps the xbzrle cache, compressor contexts and scratch buffers.
pub struct BatchEncoder {
    cfg: EncoderConfig,
    policy: AdaptivePolicy,
    adaptive: AdaptiveState,
    dedup: DedupIndex,
    xbzrle: Option<XbzrleCache>,
    compressors: Compressors,
    /// Uncompressed data section, used only when this batch is compressed.
    data: Vec<u8>,
    /// Compressed data section.
    compressed: Vec<u8>,
    /// Descriptor section.
    desc: Vec<u8>,
    /// One xbzrle delta; its length is the give-up limit.
    delta: Box<[u8; DELTA_BUF]>,
    /// Batch sequence number, so the xbzrle cache can tell "sent earlier in this batch".
    seq: u64,
}

impl BatchEncoder {
    /// An encoder with the given configuration and the default [`AdaptivePolicy`].
    pub fn new(cfg: EncoderConfig) -> Self {
        Self {
            cfg,
            policy: AdaptivePolicy::default(),
            adaptive: AdaptiveState::default(),
            dedup: DedupIndex::new(),
            xbzrle: (cfg.xbzrle_cache_bytes > 0).then(|| XbzrleCache::new(cfg.xbzrle_cache_bytes)),
            compressors: Compressors::new(),
            data: Vec::new(),
            compressed: Vec::new(),
            desc: Vec::new(),
            delta: Box::new([0; DELTA_BUF]),
            seq: 0,
        }
    }

    /// Replaces the policy used by [`Compression::Adaptive`].
    pub fn with_adaptive_policy(mut self, policy: AdaptivePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Test hook: replaces the dedup hash (e.g. with a constant to force collisions).
    #[doc(hidden)]
    pub fn with_page_hash_for_tests(mut self, hash: fn(&[u8]) -> u64) -> Self {
        self.dedup = DedupIndex::with_hash(hash);
        self
    }

    /// The configuration this encoder was built with (xbzrle may since have been disabled).
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// Current state of the adaptive compression decision.
    pub fn adaptive_state(&self) -> &AdaptiveState {
        &self.adaptive
    }

    /// Stops xbzrle and frees its cache; call before post-copy, when the destination runs.
    pub fn disable_xbzrle(&mut self) {
        self.xbzrle = None;
        self.cfg.xbzrle_cache_bytes = 0;
    }

    /// Forgets every previously sent page and restarts the adaptive measurement. Needed when an
    /// encoded payload was not delivered: later xbzrle deltas would otherwise assume it was.
    pub fn reset(&mut self) {
        if let Some(cache) = &mut self.xbzrle {
            cache.clear();
        }
        self.adaptive = AdaptiveState::default();
    }

    /// Appends one encoded batch payload for `pages` to `out` and says how it was encoded.
    ///
    /// # Panics
    /// If `pages.len() > MAX_BATCH_PAGES` or a page is not [`PAGE_SIZE`] bytes: both are caller
    /// bugs, and a payload the decoder must reject is worse than failing here.
    pub fn encode(&mut self, pages: &[PageRef<'_>], out: &mut Vec<u8>) -> BatchStats {
        assert!(
            pages.len() <= MAX_BATCH_PAGES,
            "batch of {} pages exceeds MAX_BATCH_PAGES",
            pages.len()
        );
        self.seq += 1;
        let (want, zstd_level) = match self.cfg.compression {
            Compression::Off => (CompressionUsed::None, 0),
            Compression::Lz4 => (CompressionUsed::Lz4, 0),
            Compression::Zstd { level } => (CompressionUsed::Zstd, level),
            Compression::Adaptive => match self.policy.decide(&mut self.adaptive) {
                AdaptiveDecision::Raw => (CompressionUsed::None, 0),
                AdaptiveDecision::Lz4 => (CompressionUsed::Lz4, 0),
            },
        };

        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        // Uncompressed batches write page bytes straight into `out`, saving a copy.
        let direct = want == CompressionUsed::None;
        self.data.clear();
        self.desc.clear();
        self.dedup.clear();
        let mut stats = BatchStats {
            pages: pages.len(),
            raw_bytes: pages.len() * PAGE_SIZE,
            ..BatchStats::default()
        };

        {
            let sink: &mut Vec<u8> = if direct { out } else { &mut self.data };
            let mut prev_gfn = u64::MAX;
            for (i, page) in pages.iter().enumerate() {
                assert_eq!(
                    page.data.len(),
                    PAGE_SIZE,
                    "page {i} is not {PAGE_SIZE} bytes"
                );
                let gfn = page.gfn;
                let gfn_delta = zigzag(gfn.wrapping_sub(prev_gfn.wrapping_add(1)) as i64);
                prev_gfn = gfn;

                if self.cfg.zero_pages && is_zero_page(page.data) {
                    self.desc.push(TAG_ZERO);
                    put_u64(&mut self.desc, gfn_delta);
                    stats.zero += 1;
                } else if let Some(src) = self
                    .cfg
                    .dedup
                    .then(|| self.dedup.find_or_insert(pages, i))
                    .flatten()
                {
                    self.desc.push(TAG_DUP);
                    put_u64(&mut self.desc, gfn_delta);
                    put_u64(&mut self.desc, src as u64);
                    stats.dup += 1;
                } else if let Some(n) = self.xbzrle.as_mut().and_then(|cache| {
                    let old = cache.get(gfn, self.seq)?;
                    xbzrle_encode(old, page.data, &mut self.delta[..])
                }) {
                    self.desc.push(TAG_XBZRLE);
                    put_u64(&mut self.desc, gfn_delta);
                    put_u64(&mut self.desc, n as u64);
                    sink.extend_from_slice(&self.delta[..n]);
                    stats.xbzrle += 1;
                } else {
                    self.desc.push(TAG_NORMAL);
                    put_u64(&mut self.desc, gfn_delta);
                    sink.extend_from_slice(page.data);
                    stats.normal += 1;
                }
                // Whatever the encoding, the destination now holds this version.
                if let Some(cache) = &mut self.xbzrle {
                    cache.put(gfn, page.data, self.seq);
                }
            }
        }

        let (data_len, stored_len, used) = if direct {
            let n = out.len() - start - HEADER_LEN;
            (n, n, CompressionUsed::None)
        } else {
            let t0 = Instant::now();
            let ok = !self.data.is_empty()
                && self
                    .compressors
                    .compress(want, zstd_level, &self.data, &mut self.compressed);
            if self.cfg.compression == Compression::Adaptive && self.data.len() >= PAGE_SIZE {
                let sample = CompressionSample {
                    input_len: self.data.len(),
                    output_len: if ok {
                        self.compressed.len()
                    } else {
                        self.data.len()
                    },
                    nanos: u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX),
                };
                self.policy.observe(&mut self.adaptive, sample);
            }
            if ok {
                out.extend_from_slice(&self.compressed);
                (self.data.len(), self.compressed.len(), want)
            } else {
                out.extend_from_slice(&self.data);
                (self.data.len(), self.data.len(), CompressionUsed::None)
            }
        };
        out.extend_from_slice(&self.desc);

        let header = &mut out[start..start + HEADER_LEN];
        header[0] = FORMAT_VERSION;
        header[1] = used.to_byte();
        header[2..4].copy_from_slice(&(pages.len() as u16).to_le_bytes());
        header[4..8].copy_from_slice(&(data_len as u32).to_le_bytes());
        header[8..12].copy_from_slice(&(stored_len as u32).to_le_bytes());
        header[12..16].copy_from_slice(&(self.desc.len() as u32).to_le_bytes());

        stats.data_bytes = data_len;
        stats.encoded_bytes = out.len() - start;
        stats.compression = used;
        stats
    }
}
