//! Batch encoder: pages in, one self-contained payload out.

use std::time::Instant;

use super::adaptive::{
    AdaptiveDecision, AdaptivePolicy, AdaptiveState, CompressionSample, LinkSample,
};
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
    /// Normal pages that looked incompressible and went last (compressed batches only).
    pub incompressible: usize,
    /// Pages left to the caller as page runs ([`BatchEncoder::encode_runs`]); not in `pages`.
    pub run_pages: usize,
}

/// Shortest run [`BatchEncoder::encode_runs`] hands out: a run costs a frame (32 bytes) and a
/// system call on each side, a Normal page two bytes of descriptor.
pub const MIN_RUN_PAGES: usize = 8;

/// One page's encoding, kept until the descriptors are written in travel order.
#[derive(Debug, Clone, Copy)]
struct Entry {
    gfn: u64,
    tag: u8,
    /// Dup: the source's index in the batch as given; Xbzrle: the delta's length.
    extra: u64,
    /// Travels in the tail (after every head page).
    tail: bool,
    /// Position within its part (head or tail).
    rank: u32,
}

/// Whether the gfns strictly increase, so no gfn repeats and pages may travel in any order.
fn gfns_increase(pages: &[PageRef<'_>]) -> bool {
    pages.windows(2).all(|w| w[0].gfn < w[1].gfn)
}

/// Whether a page looks like random bytes: 64 bytes sampled at a stride of 7 (every offset modulo
/// 8, so word-structured data is not sampled at one byte position) over its first 448 bytes take
/// at least 48 distinct values. Random bytes give about 57; text, code and tables far fewer.
/// Reads only the first 7 cache lines, which the copy that follows needs anyway.
pub(crate) fn looks_incompressible(page: &[u8]) -> bool {
    let mut seen = [0u64; 4];
    for k in 0..64 {
        let b = page[7 * k] as usize;
        seen[b >> 6] |= 1 << (b & 63);
    }
    seen.iter().map(|w| w.count_ones()).sum::<u32>() >= 48
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
    /// Per-page encodings of the batch being encoded.
    entries: Vec<Entry>,
    /// Data of the pages that travel last (see [`looks_incompressible`]).
    tail: Vec<u8>,
    /// One xbzrle delta; its length is the give-up limit.
    delta: Box<[u8; DELTA_BUF]>,
    /// Batch sequence number, so the xbzrle cache can tell "sent earlier in this batch".
    seq: u64,
    /// When the previous adaptive batch was encoded, and its payload length: the time until the
    /// next call is what sending it took, which is how the adaptive policy learns the link.
    last_batch: Option<(Instant, usize)>,
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
            entries: Vec::with_capacity(MAX_BATCH_PAGES),
            tail: Vec::new(),
            delta: Box::new([0; DELTA_BUF]),
            seq: 0,
            last_batch: None,
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
        self.last_batch = None;
    }

    /// Appends one encoded batch payload for `pages` to `out` and says how it was encoded.
    ///
    /// # Panics
    /// If `pages.len() > MAX_BATCH_PAGES` or a page is not [`PAGE_SIZE`] bytes: both are caller
    /// bugs, and a payload the decoder must reject is worse than failing here.
    pub fn encode(&mut self, pages: &[PageRef<'_>], out: &mut Vec<u8>) -> BatchStats {
        self.encode_inner(pages, out, None)
    }

    /// Like [`BatchEncoder::encode`], but when this batch goes uncompressed (and xbzrle is off),
    /// takes out runs of at least [`MIN_RUN_PAGES`] consecutive page numbers whose pages are
    /// neither zero nor equal to the page before, and leaves them to the caller as index ranges
    /// into `pages` (sent as [`crate::FrameType::PageRun`] frames, crate::run). The other pages
    /// are encoded into `out` as usual; when none are left, nothing is appended.
    ///
    /// The encoder still makes every decision, so the adaptive policy keeps probing and timing
    /// the link (the runs count as part of the batch sent).
    pub fn encode_runs(
        &mut self,
        pages: &[PageRef<'_>],
        out: &mut Vec<u8>,
        runs: &mut Vec<std::ops::Range<usize>>,
    ) -> BatchStats {
        self.encode_inner(pages, out, Some(runs))
    }

    fn encode_inner(
        &mut self,
        pages: &[PageRef<'_>],
        out: &mut Vec<u8>,
        mut runs: Option<&mut Vec<std::ops::Range<usize>>>,
    ) -> BatchStats {
        assert!(
            pages.len() <= MAX_BATCH_PAGES,
            "batch of {} pages exceeds MAX_BATCH_PAGES",
            pages.len()
        );
        self.seq += 1;
        let adaptive = self.cfg.compression == Compression::Adaptive;
        if let Some((at, bytes)) = self.last_batch.take() {
            let nanos = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.policy
                .observe_link(&mut self.adaptive, LinkSample { bytes, nanos });
        }
        let mut decision = AdaptiveDecision::Raw;
        let (want, zstd_level) = match self.cfg.compression {
            Compression::Off => (CompressionUsed::None, 0),
            Compression::Lz4 => (CompressionUsed::Lz4, 0),
            Compression::Zstd { level } => (CompressionUsed::Zstd, level),
            // Batches too small to measure (a post-copy fault's page, a last round's dregs) go raw
            // without using up a probe: compressing them would only add latency.
            Compression::Adaptive if pages.len() * PAGE_SIZE < self.policy.min_sample_bytes => {
                (CompressionUsed::None, 0)
            }
            Compression::Adaptive => {
                decision = self.policy.decide(&mut self.adaptive);
                match decision {
                    AdaptiveDecision::Raw => (CompressionUsed::None, 0),
                    AdaptiveDecision::Lz4 => (CompressionUsed::Lz4, 0),
                    AdaptiveDecision::Zstd => (CompressionUsed::Zstd, self.policy.zstd_level),
                }
            }
        };

        let mut run_pages = 0;
        let rest: Vec<PageRef<'_>>;
        if let Some(runs) = runs.as_deref_mut() {
            runs.clear();
        }
        let pages = match runs {
            Some(runs) if want == CompressionUsed::None && self.xbzrle.is_none() => {
                rest = split_runs(pages, runs);
                run_pages = pages.len() - rest.len();
                if rest.is_empty() {
                    if adaptive {
                        self.last_batch = Some((Instant::now(), run_pages * PAGE_SIZE));
                    }
                    return BatchStats {
                        run_pages,
                        ..BatchStats::default()
                    };
                }
                &rest[..]
            }
            _ => pages,
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
            run_pages,
            ..BatchStats::default()
        };

        // A compressed batch puts the pages that look incompressible last, descriptors and data
        // alike (the order within a batch is the encoder's choice: every descriptor names its
        // gfn), so the compressor sees the compressible pages together and stores the random
        // ones as raw blocks. Only when no gfn repeats: a gfn's last version must stay last.
        let group = !direct && gfns_increase(pages);
        self.entries.clear();
        self.tail.clear();
        let (mut head_len, mut tail_len) = (0u32, 0u32);
        {
            let sink: &mut Vec<u8> = if direct { out } else { &mut self.data };
            for (i, page) in pages.iter().enumerate() {
                assert_eq!(
                    page.data.len(),
                    PAGE_SIZE,
                    "page {i} is not {PAGE_SIZE} bytes"
                );
                let gfn = page.gfn;
                let (tag, extra, in_tail) = if self.cfg.zero_pages && is_zero_page(page.data) {
                    stats.zero += 1;
                    (TAG_ZERO, 0, false)
                } else if let Some(src) = self
                    .cfg
                    .dedup
                    .then(|| self.dedup.find_or_insert(pages, i))
                    .flatten()
                {
                    stats.dup += 1;
                    // Next to its source, so the source always comes first.
                    (TAG_DUP, src as u64, self.entries[src].tail)
                } else if let Some(n) = self.xbzrle.as_mut().and_then(|cache| {
                    let old = cache.get(gfn, self.seq)?;
                    xbzrle_encode(old, page.data, &mut self.delta[..])
                }) {
                    sink.extend_from_slice(&self.delta[..n]);
                    stats.xbzrle += 1;
                    (TAG_XBZRLE, n as u64, false)
                } else if group && looks_incompressible(page.data) {
                    self.tail.extend_from_slice(page.data);
                    stats.normal += 1;
                    stats.incompressible += 1;
                    (TAG_NORMAL, 0, true)
                } else {
                    sink.extend_from_slice(page.data);
                    stats.normal += 1;
                    (TAG_NORMAL, 0, false)
                };
                let counter = if in_tail {
                    &mut tail_len
                } else {
                    &mut head_len
                };
                self.entries.push(Entry {
                    gfn,
                    tag,
                    extra,
                    tail: in_tail,
                    rank: *counter,
                });
                *counter += 1;
                // Whatever the encoding, the destination now holds this version.
                if let Some(cache) = &mut self.xbzrle {
                    cache.put(gfn, page.data, self.seq);
                }
            }
            sink.extend_from_slice(&self.tail);
        }
        // Descriptors in the order the pages travel: the head, then the tail.
        let (entries, desc) = (&self.entries, &mut self.desc);
        let mut prev_gfn = u64::MAX;
        for tail in [false, true] {
            for e in entries.iter().filter(|e| e.tail == tail) {
                desc.push(e.tag);
                put_u64(
                    desc,
                    zigzag(e.gfn.wrapping_sub(prev_gfn.wrapping_add(1)) as i64),
                );
                prev_gfn = e.gfn;
                match e.tag {
                    TAG_DUP => {
                        let src = &entries[e.extra as usize];
                        let at = if src.tail {
                            head_len + src.rank
                        } else {
                            src.rank
                        };
                        put_u64(desc, u64::from(at));
                    }
                    TAG_XBZRLE => put_u64(desc, e.extra),
                    _ => {}
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
            if adaptive && self.data.len() >= PAGE_SIZE {
                let sample = CompressionSample {
                    input_len: self.data.len(),
                    output_len: if ok {
                        self.compressed.len()
                    } else {
                        self.data.len()
                    },
                    nanos: u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX),
                };
                self.policy.observe(&mut self.adaptive, decision, sample);
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
        if adaptive {
            self.last_batch = Some((Instant::now(), stats.encoded_bytes + run_pages * PAGE_SIZE));
        }
        stats
    }
}

/// Finds the runs [`BatchEncoder::encode_runs`] hands out (pushed to `runs`); returns the pages
/// that stay in the batch, in order.
fn split_runs<'a>(
    pages: &[PageRef<'a>],
    runs: &mut Vec<std::ops::Range<usize>>,
) -> Vec<PageRef<'a>> {
    let mut rest = Vec::with_capacity(pages.len());
    let mut i = 0;
    while i < pages.len() {
        let start = i;
        if !is_zero_page(pages[i].data) {
            i += 1;
            while i < pages.len()
                && pages[i].gfn == pages[i - 1].gfn + 1
                && i - start < crate::run::MAX_RUN_PAGES as usize
                && !is_zero_page(pages[i].data)
                && pages[i].data != pages[i - 1].data
            {
                i += 1;
            }
        } else {
            i += 1;
        }
        if i - start >= MIN_RUN_PAGES && !is_zero_page(pages[start].data) {
            runs.push(start..i);
        } else {
            rest.extend_from_slice(&pages[start..i]);
        }
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift_page(seed: u64, map: impl Fn(u64) -> u8) -> Vec<u8> {
        let mut s = seed | 1;
        (0..PAGE_SIZE)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                map(s)
            })
            .collect()
    }

    #[test]
    fn runs_take_long_stretches_of_distinct_data_and_the_batch_keeps_the_rest() {
        use crate::codec::{BatchDecoder, EncoderConfig};
        // gfns 0..20 then 40..44: a zero page at 5, a page equal to its neighbour at 12.
        let mut data: Vec<Vec<u8>> = (0..24)
            .map(|i| xorshift_page(2 * i + 1, |x| x as u8))
            .collect();
        data[5] = vec![0; PAGE_SIZE];
        data[12] = data[11].clone();
        let gfn = |i: usize| if i < 20 { i as u64 } else { 20 + i as u64 };
        let pages: Vec<PageRef<'_>> = data
            .iter()
            .enumerate()
            .map(|(i, d)| PageRef {
                gfn: gfn(i),
                data: d,
            })
            .collect();
        let mut enc = BatchEncoder::new(EncoderConfig {
            compression: crate::codec::Compression::Off,
            ..EncoderConfig::default()
        });
        let (mut out, mut runs) = (Vec::new(), Vec::new());
        let stats = enc.encode_runs(&pages, &mut out, &mut runs);
        // 0..5 is too short, 6..12 stops at the copy of page 11 (7 pages: too short), 12..20 is
        // a run (8 pages), 20..24 has new numbers but only 4 pages.
        assert_eq!(runs, vec![12..20]);
        assert_eq!((stats.run_pages, stats.pages), (8, 16));
        let mut store: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
        struct Map<'a>(&'a mut std::collections::BTreeMap<u64, Vec<u8>>);
        impl crate::codec::PageStore for Map<'_> {
            fn page_mut(&mut self, gfn: u64) -> Result<&mut [u8], crate::codec::CodecError> {
                Ok(self.0.entry(gfn).or_insert_with(|| vec![0xAA; PAGE_SIZE]))
            }
        }
        BatchDecoder::new()
            .decode(&out, &mut Map(&mut store))
            .unwrap();
        for (i, d) in data.iter().enumerate() {
            let in_run = (12..20).contains(&i);
            assert_eq!(store.contains_key(&gfn(i)), !in_run, "page {i}");
            if !in_run {
                assert_eq!(&store[&gfn(i)], d, "page {i}");
            }
        }
        // With compression the batch keeps every page.
        let mut enc = BatchEncoder::new(EncoderConfig {
            compression: crate::codec::Compression::Lz4,
            ..EncoderConfig::default()
        });
        out.clear();
        let stats = enc.encode_runs(&pages, &mut out, &mut runs);
        assert!(runs.is_empty());
        assert_eq!((stats.run_pages, stats.pages), (0, 24));
    }

    #[test]
    fn incompressible_pages_are_told_from_the_rest() {
        for seed in 1..200 {
            assert!(looks_incompressible(&xorshift_page(seed, |x| x as u8)));
            // 16 letters, and 64 (about what English text uses).
            assert!(!looks_incompressible(
                &xorshift_page(seed, |x| b'a' + (x % 16) as u8)
            ));
            assert!(!looks_incompressible(
                &xorshift_page(seed, |x| b' ' + (x % 64) as u8)
            ));
        }
        assert!(!looks_incompressible(&[0u8; PAGE_SIZE]));
        // A table of counters: random-looking low bytes, but most bytes are zero.
        let counters: Vec<u8> = (0..PAGE_SIZE as u64 / 8)
            .flat_map(|i| (i * 0x9E37).to_le_bytes())
            .collect();
        assert!(!looks_incompressible(&counters));
    }
}
