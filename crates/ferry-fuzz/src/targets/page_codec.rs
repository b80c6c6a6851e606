//! Page batches: the bulk of what a migration peer sends.
//!
//! Two targets in one, chosen by the first byte:
//! - **hostile payload** (odd first byte): the rest is decoded as a batch into guest memory holding
//!   a known pattern. A rejected payload must leave memory untouched (the decoder's promise: every
//!   gfn and delta is checked before the first write).
//! - **round trip** (even first byte): the rest describes pages (content kinds, gfns, an encoder
//!   configuration); they are encoded in two batches by one encoder and decoded by one decoder
//!   (so xbzrle deltas against the first batch occur), and the destination must equal the pages
//!   applied in order.

use ferry_wire::codec::{
    BatchDecoder, BatchEncoder, CodecError, Compression, EncoderConfig, PageRef, PageStore,
    PAGE_SIZE,
};

/// Pages of the destination's memory.
const GUEST_PAGES: usize = 32;
/// At most this many pages per generated batch.
const MAX_PAGES: usize = 24;

struct MemStore(Vec<u8>);

impl MemStore {
    fn patterned() -> Self {
        MemStore(
            (0..GUEST_PAGES * PAGE_SIZE)
                .map(|i| (i / PAGE_SIZE) as u8 ^ (i as u8).rotate_left(3))
                .collect(),
        )
    }
}

impl PageStore for MemStore {
    fn page_mut(&mut self, gfn: u64) -> Result<&mut [u8], CodecError> {
        let at = usize::try_from(gfn)
            .ok()
            .filter(|&g| g < GUEST_PAGES)
            .ok_or(CodecError::GfnOutOfRange(gfn))?
            * PAGE_SIZE;
        Ok(&mut self.0[at..at + PAGE_SIZE])
    }
}

pub(super) fn run(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => hostile(rest),
        Some((_, rest)) => round_trip(rest),
        None => {}
    }
}

fn hostile(payload: &[u8]) {
    let mut store = MemStore::patterned();
    let before = MemStore::patterned();
    let mut dec = BatchDecoder::new();
    if dec.decode(payload, &mut store).is_err() {
        assert!(store.0 == before.0, "a rejected batch changed guest memory");
    }
}

/// Deterministic bytes from a seed (xorshift64).
fn noise(seed: u64, out: &mut [u8]) {
    let mut s = seed | 1;
    for b in out {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = s as u8;
    }
}

fn config(b: u8) -> EncoderConfig {
    EncoderConfig {
        zero_pages: b & 1 != 0,
        dedup: b & 2 != 0,
        xbzrle_cache_bytes: if b & 4 != 0 { 8 * PAGE_SIZE } else { 0 },
        compression: match (b >> 3) & 3 {
            0 => Compression::Off,
            1 => Compression::Lz4,
            2 => Compression::Zstd { level: 1 },
            _ => Compression::Adaptive,
        },
    }
}

/// Pages described by 4-byte records: gfn, kind, two bytes of seed.
fn pages(desc: &[u8], earlier: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for rec in desc.chunks_exact(4).take(MAX_PAGES) {
        let gfn = u64::from(rec[0]) % GUEST_PAGES as u64;
        let seed = u64::from(u16::from_le_bytes([rec[2], rec[3]]));
        let prior = |i: u64| {
            let all: Vec<&Vec<u8>> = earlier.iter().chain(out.iter()).map(|(_, p)| p).collect();
            (!all.is_empty()).then(|| all[(i as usize) % all.len()].clone())
        };
        let mut page = vec![0u8; PAGE_SIZE];
        match rec[1] % 5 {
            0 => {}
            1 => page.fill(rec[2]),
            2 => noise(seed, &mut page),
            3 => page = prior(seed).unwrap_or(page),
            _ => {
                if let Some(p) = prior(seed) {
                    page = p;
                }
                page[usize::from(rec[3]) * 16 % PAGE_SIZE] ^= rec[2] | 1;
            }
        }
        out.push((gfn, page));
    }
    out
}

fn round_trip(data: &[u8]) {
    let Some((&cfg, desc)) = data.split_first() else {
        return;
    };
    let half = (desc.len() / 8) * 4;
    let first = pages(&desc[..half], &[]);
    let second = pages(&desc[half..], &first);
    let mut enc = BatchEncoder::new(config(cfg));
    let mut dec = BatchDecoder::new();
    let mut dst = MemStore(vec![0; GUEST_PAGES * PAGE_SIZE]);
    let mut expect = MemStore(vec![0; GUEST_PAGES * PAGE_SIZE]);
    for batch in [&first, &second] {
        let refs: Vec<PageRef<'_>> = batch
            .iter()
            .map(|(gfn, data)| PageRef { gfn: *gfn, data })
            .collect();
        let mut payload = Vec::new();
        let stats = enc.encode(&refs, &mut payload);
        let got = dec
            .decode(&payload, &mut dst)
            .unwrap_or_else(|e| panic!("own batch rejected: {e}"));
        assert_eq!(got.pages, stats.pages, "page count changed on the wire");
        for (gfn, data) in batch.iter() {
            expect
                .page_mut(*gfn)
                .expect("gfn below GUEST_PAGES")
                .copy_from_slice(data);
        }
        assert!(
            dst.0 == expect.0,
            "decoded memory differs from the pages sent"
        );
    }
}

pub(super) fn seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for cfg in [0u8, 0x07, 0x0f, 0x17, 0x1f] {
        let mut s = vec![0, cfg];
        for (i, kind) in [0u8, 1, 2, 3, 4, 2, 4, 3].iter().enumerate() {
            s.extend_from_slice(&[i as u8 * 3, *kind, 0x5a, i as u8]);
        }
        v.push(s);
    }
    // A valid batch, sent as a hostile payload: the decoder must accept it.
    let mut enc = BatchEncoder::new(config(0x1f));
    let page = vec![7u8; PAGE_SIZE];
    let mut payload = vec![1];
    enc.encode(
        &[PageRef {
            gfn: 3,
            data: &page,
        }],
        &mut payload,
    );
    v.push(payload);
    v
}
