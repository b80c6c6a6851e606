//! Property tests for the page codecs: round trips under every configuration, xbzrle over
//! sequences of versions, and hostile payloads that must be rejected without panicking or
//! touching the store.

use ferry_wire::codec::{
    max_payload_len, AdaptiveDecision, AdaptivePolicy, BatchDecoder, BatchEncoder, CodecError,
    Compression, CompressionUsed, EncoderConfig, PageRef, PageStore, MAX_BATCH_PAGES, PAGE_SIZE,
};
use proptest::prelude::*;

/// Guest memory of `n` pages.
#[derive(Clone, PartialEq, Eq)]
struct MemStore {
    bytes: Vec<u8>,
}

impl MemStore {
    fn new(pages: usize) -> Self {
        Self {
            bytes: vec![0; pages * PAGE_SIZE],
        }
    }

    fn page(&self, gfn: u64) -> &[u8] {
        let i = gfn as usize * PAGE_SIZE;
        &self.bytes[i..i + PAGE_SIZE]
    }
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemStore({} pages)", self.bytes.len() / PAGE_SIZE)
    }
}

impl PageStore for MemStore {
    fn page_mut(&mut self, gfn: u64) -> Result<&mut [u8], CodecError> {
        let i = usize::try_from(gfn)
            .ok()
            .and_then(|g| g.checked_mul(PAGE_SIZE))
            .filter(|&i| i < self.bytes.len())
            .ok_or(CodecError::GfnOutOfRange(gfn))?;
        Ok(&mut self.bytes[i..i + PAGE_SIZE])
    }
}

const GUEST_PAGES: u64 = 64;

/// How to build one page of a generated batch.
#[derive(Debug, Clone)]
enum Content {
    Zero,
    Fill(u8),
    Random(u64),
    /// 16-letter alphabet, like text.
    Text(u64),
    /// Same bytes as an earlier page of the batch (index taken modulo the pages so far).
    Repeat(usize),
    /// An earlier page with one byte changed.
    OneByteOff(usize, usize, u8),
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

fn build(contents: &[(u64, Content)]) -> Vec<(u64, Vec<u8>)> {
    let mut pages: Vec<(u64, Vec<u8>)> = Vec::new();
    for (gfn, c) in contents {
        let data = match c {
            Content::Zero => vec![0; PAGE_SIZE],
            Content::Fill(b) => vec![*b; PAGE_SIZE],
            Content::Random(seed) => {
                let mut r = xorshift(*seed);
                (0..PAGE_SIZE).map(|_| r() as u8).collect()
            }
            Content::Text(seed) => {
                let mut r = xorshift(*seed);
                (0..PAGE_SIZE)
                    .map(|_| b"etaoinshrdlucmfw"[(r() % 16) as usize])
                    .collect()
            }
            Content::Repeat(i) if !pages.is_empty() => pages[i % pages.len()].1.clone(),
            Content::OneByteOff(i, at, v) if !pages.is_empty() => {
                let mut p = pages[i % pages.len()].1.clone();
                p[at % PAGE_SIZE] ^= v | 1;
                p
            }
            _ => vec![0xAB; PAGE_SIZE],
        };
        pages.push((*gfn, data));
    }
    pages
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        Just(Content::Zero),
        any::<u8>().prop_map(Content::Fill),
        any::<u64>().prop_map(Content::Random),
        any::<u64>().prop_map(Content::Text),
        any::<usize>().prop_map(Content::Repeat),
        (any::<usize>(), any::<usize>(), any::<u8>())
            .prop_map(|(i, at, v)| Content::OneByteOff(i, at, v)),
    ]
}

fn batch() -> impl Strategy<Value = Vec<(u64, Content)>> {
    prop::collection::vec((0..GUEST_PAGES, content()), 0..24)
}

/// A batch whose gfns strictly increase (as the engine sends them).
fn increasing_batch() -> impl Strategy<Value = Vec<(u64, Content)>> {
    batch().prop_map(|mut v| {
        v.sort_by_key(|(gfn, _)| *gfn);
        v.dedup_by_key(|(gfn, _)| *gfn);
        v
    })
}

fn all_configs() -> Vec<EncoderConfig> {
    let mut v = Vec::new();
    for zero_pages in [false, true] {
        for dedup in [false, true] {
            for xbzrle_cache_bytes in [0, 4 * PAGE_SIZE, 1 << 20] {
                for compression in [
                    Compression::Off,
                    Compression::Lz4,
                    Compression::Zstd { level: 1 },
                    Compression::Adaptive,
                ] {
                    v.push(EncoderConfig {
                        zero_pages,
                        dedup,
                        xbzrle_cache_bytes,
                        compression,
                    });
                }
            }
        }
    }
    v
}

fn refs(pages: &[(u64, Vec<u8>)]) -> Vec<PageRef<'_>> {
    pages
        .iter()
        .map(|(gfn, data)| PageRef { gfn: *gfn, data })
        .collect()
}

/// Encodes `pages` into one payload, decodes it into `dst`, and applies them to `expect` in order
/// (a gfn repeated in a batch ends up with its last version).
fn send(
    enc: &mut BatchEncoder,
    dec: &mut BatchDecoder,
    pages: &[(u64, Vec<u8>)],
    dst: &mut MemStore,
    expect: &mut MemStore,
) -> Vec<u8> {
    let mut payload = Vec::new();
    let stats = enc.encode(&refs(pages), &mut payload);
    assert_eq!(stats.encoded_bytes, payload.len());
    assert!(payload.len() <= max_payload_len(pages.len()));
    assert_eq!(
        stats.zero + stats.dup + stats.xbzrle + stats.normal,
        pages.len()
    );
    let got = dec.decode(&payload, dst).expect("own payload decodes");
    assert_eq!(
        (got.pages, got.zero, got.dup, got.xbzrle, got.normal),
        (
            stats.pages,
            stats.zero,
            stats.dup,
            stats.xbzrle,
            stats.normal
        )
    );
    assert_eq!(got.compression, stats.compression);
    for (gfn, data) in pages {
        expect.page_mut(*gfn).unwrap().copy_from_slice(data);
    }
    payload
}

fn leb(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn dec_once(payload: &[u8], dst: &mut MemStore) -> Result<(), CodecError> {
    BatchDecoder::new().decode(payload, dst).map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn round_trips_under_every_config(contents in batch(), prefill in any::<u8>()) {
        let pages = build(&contents);
        for cfg in all_configs() {
            let mut enc = BatchEncoder::new(cfg);
            let mut dec = BatchDecoder::new();
            // Destination starts with stale content, so zero-fill and full writes are observable.
            let mut dst = MemStore { bytes: vec![prefill; GUEST_PAGES as usize * PAGE_SIZE] };
            let mut expect = dst.clone();
            send(&mut enc, &mut dec, &pages, &mut dst, &mut expect);
            prop_assert_eq!(&dst, &expect, "config {:?}", cfg);
        }
    }

    /// Batches whose gfns increase may travel reordered (random-looking pages last) when
    /// compressed: they still decode to the same memory, dups of moved pages included.
    #[test]
    fn reordered_batches_round_trip(contents in increasing_batch(), xbzrle in any::<bool>()) {
        let pages = build(&contents);
        for compression in [Compression::Lz4, Compression::Zstd { level: 1 }, Compression::Zstd { level: -5 }] {
            let cfg = EncoderConfig {
                compression,
                xbzrle_cache_bytes: if xbzrle { 8 * PAGE_SIZE } else { 0 },
                ..EncoderConfig::default()
            };
            let mut enc = BatchEncoder::new(cfg);
            let mut dec = BatchDecoder::new();
            let mut dst = MemStore::new(GUEST_PAGES as usize);
            let mut expect = dst.clone();
            // Twice, so the second batch can use xbzrle against the first.
            for _ in 0..2 {
                send(&mut enc, &mut dec, &pages, &mut dst, &mut expect);
                prop_assert_eq!(&dst, &expect, "{:?}", compression);
            }
        }
    }

    /// Adaptive over a link slow enough for any shrink to pay: batches go through lz4 probes,
    /// zstd probes and zstd, and every payload decodes to the pages.
    #[test]
    fn adaptive_round_trips_through_every_codec_choice(
        batches in prop::collection::vec(batch(), 1..6),
        xbzrle in any::<bool>(),
    ) {
        let cfg = EncoderConfig {
            compression: Compression::Adaptive,
            xbzrle_cache_bytes: if xbzrle { 8 * PAGE_SIZE } else { 0 },
            ..EncoderConfig::default()
        };
        let mut enc = BatchEncoder::new(cfg).with_adaptive_policy(slow_link());
        let mut dec = BatchDecoder::new();
        let mut dst = MemStore::new(GUEST_PAGES as usize);
        let mut expect = dst.clone();
        for contents in &batches {
            send(&mut enc, &mut dec, &build(contents), &mut dst, &mut expect);
            prop_assert_eq!(&dst, &expect);
        }
    }

    #[test]
    fn forced_hash_collisions_never_alias_pages(contents in batch()) {
        let pages = build(&contents);
        for compression in [Compression::Off, Compression::Lz4] {
            let cfg = EncoderConfig { compression, ..EncoderConfig::default() };
            let mut enc = BatchEncoder::new(cfg).with_page_hash_for_tests(|_| 7);
            let mut dec = BatchDecoder::new();
            let mut dst = MemStore::new(GUEST_PAGES as usize);
            let mut expect = dst.clone();
            send(&mut enc, &mut dec, &pages, &mut dst, &mut expect);
            prop_assert_eq!(&dst, &expect);
        }
    }

    #[test]
    fn xbzrle_tracks_a_sequence_of_versions(
        seed in any::<u64>(),
        rounds in prop::collection::vec(
            prop::collection::vec((0..16u64, 0..PAGE_SIZE, any::<u8>(), 0..8u8), 1..24),
            1..8,
        ),
        cache_pages in 2..32usize,
        compression in prop_oneof![Just(Compression::Off), Just(Compression::Lz4), Just(Compression::Adaptive)],
    ) {
        // The source's memory, mutated each round; every round sends the touched pages.
        let mut src = MemStore::new(16);
        let mut r = xorshift(seed);
        src.bytes.iter_mut().for_each(|b| *b = r() as u8);
        let cfg = EncoderConfig { xbzrle_cache_bytes: cache_pages * PAGE_SIZE, compression, ..EncoderConfig::default() };
        let mut enc = BatchEncoder::new(cfg);
        let mut dec = BatchDecoder::new();
        let mut dst = MemStore::new(16);
        let mut expect = MemStore::new(16);
        for round in &rounds {
            let mut pages = Vec::new();
            for &(gfn, at, v, how) in round {
                let page = src.page_mut(gfn).unwrap();
                match how {
                    0 => page.fill(0),
                    1 => page.iter_mut().for_each(|b| *b = r() as u8),
                    2 => page[at..(at + 300).min(PAGE_SIZE)].iter_mut().for_each(|b| *b = !*b),
                    _ => page[at] = page[at].wrapping_add(v | 1),
                }
                // The same gfn may appear twice in a batch with different versions.
                pages.push((gfn, src.page(gfn).to_vec()));
            }
            let mut payload = Vec::new();
            enc.encode(&refs(&pages), &mut payload);
            dec.decode(&payload, &mut dst).unwrap();
            for (gfn, data) in &pages {
                expect.page_mut(*gfn).unwrap().copy_from_slice(data);
            }
            prop_assert_eq!(&dst, &expect);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut dec = BatchDecoder::new();
        let mut dst = MemStore::new(4);
        let before = dst.clone();
        if dec.decode(&bytes, &mut dst).is_err() {
            prop_assert_eq!(dst, before);
        }
    }

    #[test]
    fn structurally_plausible_payloads_never_panic(
        descs in prop::collection::vec((0..5u8, 0..12u64, 0..6u64, prop::collection::vec(any::<u8>(), 0..24)), 0..8),
        slack in -1i64..=1,
        compression in 0..3u8,
    ) {
        // Well-formed header and varints around random tags, gfns, dup indices and delta bytes,
        // so the fuzzing gets past the header into descriptor and xbzrle validation.
        let mut desc = Vec::new();
        let mut data = Vec::new();
        for (tag, gfn_delta, arg, delta) in &descs {
            desc.push(*tag);
            leb(&mut desc, *gfn_delta);
            match tag {
                0 => data.extend(std::iter::repeat_n(0x5a, PAGE_SIZE)),
                2 => leb(&mut desc, *arg),
                3 => {
                    leb(&mut desc, delta.len() as u64);
                    data.extend_from_slice(delta);
                }
                _ => {}
            }
        }
        let data_len = (data.len() as i64 + slack).max(0) as usize;
        data.resize(data_len, 0);
        let stored = match compression {
            1 => lz4_flex::block::compress(&data),
            2 => zstd::bulk::compress(&data, 1).unwrap(),
            _ => data.clone(),
        };
        let mut payload = vec![1, compression];
        payload.extend_from_slice(&(descs.len() as u16).to_le_bytes());
        payload.extend_from_slice(&(data_len as u32).to_le_bytes());
        payload.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        payload.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        payload.extend_from_slice(&stored);
        payload.extend_from_slice(&desc);

        let mut dst = MemStore { bytes: vec![0x11; 8 * PAGE_SIZE] };
        let before = dst.clone();
        if dec_once(&payload, &mut dst).is_err() {
            prop_assert_eq!(dst, before);
        }
    }

    #[test]
    fn corrupted_or_truncated_payloads_never_half_apply(
        contents in batch(),
        xbzrle in any::<bool>(),
        compression in prop_oneof![Just(Compression::Off), Just(Compression::Lz4), Just(Compression::Zstd { level: 1 })],
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let pages = build(&contents);
        let cfg = EncoderConfig { xbzrle_cache_bytes: if xbzrle { 1 << 20 } else { 0 }, compression, ..EncoderConfig::default() };
        let mut enc = BatchEncoder::new(cfg);
        let mut dec = BatchDecoder::new();
        let mut dst = MemStore::new(GUEST_PAGES as usize);
        let mut expect = dst.clone();
        // A first batch primes the xbzrle cache so the second one carries deltas.
        send(&mut enc, &mut dec, &pages, &mut dst, &mut expect);
        let mut next = pages.clone();
        for (i, (_, data)) in next.iter_mut().enumerate() {
            data[i * 97 % PAGE_SIZE] ^= 0x40;
        }
        let mut payload = Vec::new();
        enc.encode(&refs(&next), &mut payload);

        if !payload.is_empty() {
            let mut bad = payload.clone();
            for (at, x) in &flips {
                let i = at.index(bad.len());
                bad[i] ^= x | 1;
            }
            let before = dst.clone();
            let mut scratch = dst.clone();
            if dec.decode(&bad, &mut scratch).is_err() {
                prop_assert_eq!(&scratch, &before);
            }
            let short = &payload[..cut.index(payload.len())];
            let mut scratch = dst.clone();
            prop_assert!(dec.decode(short, &mut scratch).is_err());
            prop_assert_eq!(&scratch, &before);
        }
        // The decoder is still usable after rejecting garbage.
        dec.decode(&payload, &mut dst).unwrap();
        for (gfn, data) in &next {
            expect.page_mut(*gfn).unwrap().copy_from_slice(data);
        }
        prop_assert_eq!(&dst, &expect);
    }
}

#[test]
fn gfn_outside_the_store_rejects_the_whole_batch() {
    let a = vec![1u8; PAGE_SIZE];
    let pages = [PageRef { gfn: 0, data: &a }, PageRef { gfn: 9, data: &a }];
    let mut payload = Vec::new();
    BatchEncoder::new(EncoderConfig::default()).encode(&pages, &mut payload);
    let mut dst = MemStore::new(4);
    let err = BatchDecoder::new().decode(&payload, &mut dst).unwrap_err();
    assert_eq!(err, CodecError::GfnOutOfRange(9));
    assert!(
        dst.bytes.iter().all(|&b| b == 0),
        "page 0 must not be written"
    );
}

#[test]
fn page_count_above_the_limit_is_rejected_before_allocating() {
    let mut payload = vec![1, 0];
    payload.extend_from_slice(&((MAX_BATCH_PAGES + 1) as u16).to_le_bytes());
    payload.extend_from_slice(&[0xff; 12]);
    let err = BatchDecoder::new()
        .decode(&payload, &mut MemStore::new(1))
        .unwrap_err();
    assert_eq!(err, CodecError::BadPageCount(MAX_BATCH_PAGES + 1));
    // A data length beyond what the pages can hold is refused too.
    let mut payload = vec![1, 1, 1, 0];
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    payload.extend_from_slice(&[0; 8]);
    assert!(matches!(
        BatchDecoder::new().decode(&payload, &mut MemStore::new(1)),
        Err(CodecError::BadLength(_))
    ));
}

#[test]
fn stats_reflect_the_encodings_chosen() {
    let zero = vec![0u8; PAGE_SIZE];
    let text: Vec<u8> = (0..PAGE_SIZE).map(|i| b"abcdefgh"[i % 8]).collect();
    let pages = [
        PageRef {
            gfn: 0,
            data: &zero,
        },
        PageRef {
            gfn: 1,
            data: &text,
        },
        PageRef {
            gfn: 2,
            data: &text,
        },
    ];
    let cfg = EncoderConfig {
        compression: Compression::Lz4,
        ..EncoderConfig::default()
    };
    let mut payload = Vec::new();
    let s = BatchEncoder::new(cfg).encode(&pages, &mut payload);
    assert_eq!((s.zero, s.dup, s.normal, s.xbzrle), (1, 1, 1, 0));
    assert_eq!(s.raw_bytes, 3 * PAGE_SIZE);
    assert_eq!(s.compression, CompressionUsed::Lz4);
    assert!(s.encoded_bytes < 200, "{} bytes", s.encoded_bytes);

    // An empty batch is a valid 16-byte payload.
    let mut payload = Vec::new();
    let s = BatchEncoder::new(cfg).encode(&[], &mut payload);
    assert_eq!(s.encoded_bytes, 16);
    BatchDecoder::new()
        .decode(&payload, &mut MemStore::new(1))
        .unwrap();
}

#[test]
fn xbzrle_sends_small_deltas_and_reset_forgets() {
    let mut page = vec![5u8; PAGE_SIZE];
    let cfg = EncoderConfig {
        xbzrle_cache_bytes: 1 << 20,
        compression: Compression::Off,
        ..EncoderConfig::default()
    };
    let mut enc = BatchEncoder::new(cfg);
    let mut dec = BatchDecoder::new();
    let mut dst = MemStore::new(2);
    let mut out = Vec::new();
    enc.encode(
        &[PageRef {
            gfn: 1,
            data: &page,
        }],
        &mut out,
    );
    dec.decode(&out, &mut dst).unwrap();
    page[100] = 9;
    out.clear();
    let s = enc.encode(
        &[PageRef {
            gfn: 1,
            data: &page,
        }],
        &mut out,
    );
    assert_eq!(s.xbzrle, 1);
    assert!(s.encoded_bytes < 32, "{} bytes", s.encoded_bytes);
    dec.decode(&out, &mut dst).unwrap();
    assert_eq!(dst.page(1), &page[..]);

    enc.reset();
    out.clear();
    let s = enc.encode(
        &[PageRef {
            gfn: 1,
            data: &page,
        }],
        &mut out,
    );
    assert_eq!((s.xbzrle, s.normal), (0, 1));
    enc.disable_xbzrle();
    assert_eq!(enc.config().xbzrle_cache_bytes, 0);
}

#[test]
fn dup_of_an_xbzrle_page_survives_a_rewrite_of_its_gfn() {
    let a = vec![3u8; PAGE_SIZE];
    let mut a2 = a.clone();
    a2[10] = 4;
    let b = vec![9u8; PAGE_SIZE];
    let cfg = EncoderConfig {
        xbzrle_cache_bytes: 1 << 20,
        compression: Compression::Off,
        ..EncoderConfig::default()
    };
    let mut enc = BatchEncoder::new(cfg);
    let mut dec = BatchDecoder::new();
    let mut dst = MemStore::new(4);
    let mut out = Vec::new();
    enc.encode(&[PageRef { gfn: 1, data: &a }], &mut out);
    dec.decode(&out, &mut dst).unwrap();
    // gfn 1 gets a delta, then is rewritten whole; gfn 2 copies gfn 1's *first* new version.
    let pages = [
        PageRef { gfn: 1, data: &a2 },
        PageRef { gfn: 1, data: &b },
        PageRef { gfn: 2, data: &a2 },
    ];
    out.clear();
    let s = enc.encode(&pages, &mut out);
    assert_eq!((s.xbzrle, s.normal, s.dup), (1, 1, 1));
    let d = dec.decode(&out, &mut dst).unwrap();
    assert_eq!((d.xbzrle, d.normal, d.dup), (1, 1, 1));
    assert_eq!(dst.page(1), &b[..]);
    assert_eq!(dst.page(2), &a2[..]);
}

#[test]
fn a_full_batch_of_scattered_gfns_round_trips_within_the_bound() {
    // MAX_BATCH_PAGES pages with far-apart gfns (long gfn varints), half random, half repeats.
    let mut r = xorshift(99);
    let mut mem = vec![0u8; MAX_BATCH_PAGES * PAGE_SIZE];
    mem.iter_mut().for_each(|b| *b = r() as u8);
    for p in (1..MAX_BATCH_PAGES).step_by(2) {
        mem.copy_within((p - 1) * PAGE_SIZE..p * PAGE_SIZE, p * PAGE_SIZE);
    }
    let gfn = |i: usize| (i as u64) * 7 % MAX_BATCH_PAGES as u64;
    let pages: Vec<PageRef<'_>> = mem
        .chunks_exact(PAGE_SIZE)
        .enumerate()
        .map(|(i, data)| PageRef { gfn: gfn(i), data })
        .collect();
    for compression in [
        Compression::Off,
        Compression::Lz4,
        Compression::Zstd { level: 1 },
    ] {
        let cfg = EncoderConfig {
            compression,
            ..EncoderConfig::default()
        };
        let mut payload = Vec::new();
        let s = BatchEncoder::new(cfg).encode(&pages, &mut payload);
        assert_eq!(s.dup, MAX_BATCH_PAGES / 2);
        assert!(payload.len() <= max_payload_len(MAX_BATCH_PAGES));
        let mut dst = MemStore::new(MAX_BATCH_PAGES);
        BatchDecoder::new().decode(&payload, &mut dst).unwrap();
        for p in &pages {
            assert_eq!(dst.page(p.gfn), p.data);
        }
    }
}

/// An adaptive policy for a 10 MB/s link that it does not measure, timing even small batches.
fn slow_link() -> AdaptivePolicy {
    AdaptivePolicy {
        link_bytes_per_sec: 10e6,
        measure_link: false,
        min_sample_bytes: 0,
        ..AdaptivePolicy::default()
    }
}

/// `n` pages of the given content at gfns `0..n`.
fn uniform(n: usize, content: impl Fn(u64) -> Content) -> Vec<(u64, Vec<u8>)> {
    build(&(0..n as u64).map(|g| (g, content(g))).collect::<Vec<_>>())
}

#[test]
fn adaptive_picks_zstd_for_text_and_nothing_for_random() {
    let cfg = EncoderConfig {
        compression: Compression::Adaptive,
        ..EncoderConfig::default()
    };
    let text = uniform(GUEST_PAGES as usize, |g| Content::Text(g + 1));
    let random = uniform(GUEST_PAGES as usize, |g| Content::Random(g + 1));
    let mut dst = MemStore::new(GUEST_PAGES as usize);
    let mut expect = dst.clone();
    let mut dec = BatchDecoder::new();

    // Text on a slow link: lz4 finds nothing, zstd halves it and stays.
    let mut enc = BatchEncoder::new(cfg).with_adaptive_policy(slow_link());
    let mut used = Vec::new();
    for _ in 0..6 {
        let payload = send(&mut enc, &mut dec, &text, &mut dst, &mut expect);
        used.push(payload[1]);
        assert_eq!(dst, expect);
    }
    // Header byte 1: 0 raw, 1 lz4, 2 zstd. The lz4 probe is stored raw (it did not shrink).
    assert_eq!(used, [0, 2, 2, 2, 2, 2]);
    assert_eq!(enc.adaptive_state().codec, AdaptiveDecision::Zstd);
    let ratio = enc.adaptive_state().zstd.expect("zstd measured").ratio;
    assert!((0.45..0.6).contains(&ratio), "zstd ratio on text {ratio}");

    // Random pages: after one lz4 and one zstd probe, batches go raw.
    let mut enc = BatchEncoder::new(cfg).with_adaptive_policy(slow_link());
    for _ in 0..6 {
        let payload = send(&mut enc, &mut dec, &random, &mut dst, &mut expect);
        assert_eq!(payload[1], 0, "random data is stored raw");
    }
    assert!(!enc.adaptive_state().compressing());

    // Text on a link as fast as loopback: zstd is probed once and not kept.
    let loopback = AdaptivePolicy {
        link_bytes_per_sec: 3e9,
        ..slow_link()
    };
    let mut enc = BatchEncoder::new(cfg).with_adaptive_policy(loopback);
    for _ in 0..6 {
        send(&mut enc, &mut dec, &text, &mut dst, &mut expect);
    }
    let s = enc.adaptive_state();
    assert!(!s.compressing(), "{s:?}");
    assert!(s.zstd.is_some(), "zstd was probed");
}

#[test]
fn random_pages_travel_last_in_a_compressed_batch() {
    // text, random, text, copy of the random page, random, zero: the two random pages and the
    // copy go last; the payload still decodes to the same memory.
    let contents = [
        (1, Content::Text(1)),
        (2, Content::Random(2)),
        (3, Content::Text(3)),
        (4, Content::Repeat(1)),
        (5, Content::Random(5)),
        (6, Content::Zero),
    ];
    let pages = build(&contents);
    for (compression, moved) in [(Compression::Off, 0), (Compression::Zstd { level: 1 }, 2)] {
        let cfg = EncoderConfig {
            compression,
            ..EncoderConfig::default()
        };
        let mut enc = BatchEncoder::new(cfg);
        let mut payload = Vec::new();
        let stats = enc.encode(&refs(&pages), &mut payload);
        assert_eq!(stats.incompressible, moved, "{compression:?}");
        assert_eq!((stats.normal, stats.dup, stats.zero), (4, 1, 1));
        let mut dst = MemStore::new(GUEST_PAGES as usize);
        BatchDecoder::new().decode(&payload, &mut dst).unwrap();
        for (gfn, data) in &pages {
            assert_eq!(dst.page(*gfn), &data[..], "gfn {gfn}");
        }
        if moved > 0 {
            // The data section starts with the text pages: zstd halves them; raw random follows.
            assert_eq!(stats.compression, CompressionUsed::Zstd);
            assert!(payload.len() < 7 * PAGE_SIZE / 2, "{} bytes", payload.len());
        }
    }
    // Repeated gfns are never reordered (the last version must stay last).
    let repeated = build(&[(7, Content::Random(1)), (7, Content::Text(2))]);
    let cfg = EncoderConfig {
        compression: Compression::Lz4,
        ..EncoderConfig::default()
    };
    let mut payload = Vec::new();
    let stats = BatchEncoder::new(cfg).encode(&refs(&repeated), &mut payload);
    assert_eq!(stats.incompressible, 0);
    let mut dst = MemStore::new(GUEST_PAGES as usize);
    BatchDecoder::new().decode(&payload, &mut dst).unwrap();
    assert_eq!(dst.page(7), &repeated[1].1[..]);
}

#[test]
fn adaptive_leaves_small_batches_raw_without_spending_a_probe() {
    let cfg = EncoderConfig {
        compression: Compression::Adaptive,
        ..EncoderConfig::default()
    };
    // A post-copy fault's page: text that zstd would halve, on a slow link.
    let policy = AdaptivePolicy {
        link_bytes_per_sec: 10e6,
        measure_link: false,
        ..AdaptivePolicy::default()
    };
    let mut enc = BatchEncoder::new(cfg).with_adaptive_policy(policy);
    let before = *enc.adaptive_state();
    let one = uniform(1, |g| Content::Text(g + 1));
    let mut payload = Vec::new();
    let stats = enc.encode(&refs(&one), &mut payload);
    assert_eq!(stats.compression, CompressionUsed::None);
    assert_eq!(*enc.adaptive_state(), before);
    // A batch big enough to measure gets the probe.
    let big = uniform(32, |g| Content::Text(g + 1));
    payload.clear();
    enc.encode(&refs(&big), &mut payload);
    assert!(enc.adaptive_state().lz4.is_some());
}
