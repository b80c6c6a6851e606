//! Page codec throughput: encode and decode GB/s (of raw page bytes) per workload and compression.
//!
//! Run: `cargo bench -p ferry-wire --bench codec -- --quick` (or a filter such as `encode/text`).
//! Workloads are one batch of `PAGES` pages; the throughput counts `PAGES * 4096` bytes per
//! iteration, so a Zero batch shows how fast pages are *skipped*, not bytes moved.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferry_wire::codec::{
    AdaptivePolicy, BatchDecoder, BatchEncoder, CodecError, Compression, EncoderConfig, PageRef,
    PageStore, PAGE_SIZE,
};

const PAGES: usize = 256;

struct MemStore(Vec<u8>);

impl PageStore for MemStore {
    fn page_mut(&mut self, gfn: u64) -> Result<&mut [u8], CodecError> {
        let i = gfn as usize * PAGE_SIZE;
        self.0
            .get_mut(i..i + PAGE_SIZE)
            .ok_or(CodecError::GfnOutOfRange(gfn))
    }
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// A workload: the pages of one batch and, for xbzrle, a second version of them.
struct Workload {
    name: &'static str,
    a: Vec<u8>,
    b: Option<Vec<u8>>,
}

fn workloads() -> Vec<Workload> {
    let mut r = rng(42);
    let random: Vec<u8> = (0..PAGES * PAGE_SIZE).map(|_| r() as u8).collect();
    let text: Vec<u8> = (0..PAGES * PAGE_SIZE)
        .map(|_| b"etaoinshrdlucmfw"[(r() % 16) as usize])
        .collect();
    // Mixed: 40% zero, 30% text, 20% random, 10% copies of an earlier page.
    let mut mixed = vec![0u8; PAGES * PAGE_SIZE];
    for p in 0..PAGES {
        let dst = p * PAGE_SIZE..(p + 1) * PAGE_SIZE;
        match p % 10 {
            0..=3 => {}
            4..=6 => mixed[dst.clone()].copy_from_slice(&text[dst]),
            7 | 8 => mixed[dst.clone()].copy_from_slice(&random[dst]),
            _ => mixed.copy_within((p - 5) * PAGE_SIZE..(p - 4) * PAGE_SIZE, p * PAGE_SIZE),
        }
    }
    // Xbzrle: text pages where each version changes 16 bytes in two places per page.
    let mut b = text.clone();
    for p in 0..PAGES {
        let base = p * PAGE_SIZE + (r() as usize % (PAGE_SIZE - 64));
        b[base..base + 8].iter_mut().for_each(|x| *x ^= 0x20);
        b[base + 40..base + 48].iter_mut().for_each(|x| *x ^= 0x01);
    }
    vec![
        Workload {
            name: "zero",
            a: vec![0; PAGES * PAGE_SIZE],
            b: None,
        },
        Workload {
            name: "random",
            a: random,
            b: None,
        },
        Workload {
            name: "text",
            a: text.clone(),
            b: None,
        },
        Workload {
            name: "mixed",
            a: mixed,
            b: None,
        },
        Workload {
            name: "xbzrle",
            a: text,
            b: Some(b),
        },
    ]
}

fn refs(mem: &[u8]) -> Vec<PageRef<'_>> {
    mem.chunks_exact(PAGE_SIZE)
        .enumerate()
        .map(|(i, data)| PageRef {
            gfn: i as u64,
            data,
        })
        .collect()
}

/// `adaptive` runs batches back to back with nothing sent in between, so the link it measures is
/// unbounded (as on a very fast link); `adaptive@1G` assumes a 1 Gbit/s link instead.
const COMPRESSIONS: [(&str, Compression); 6] = [
    ("off", Compression::Off),
    ("lz4", Compression::Lz4),
    ("zstd1", Compression::Zstd { level: 1 }),
    ("zstd3", Compression::Zstd { level: 3 }),
    ("adaptive", Compression::Adaptive),
    ("adaptive@1G", Compression::Adaptive),
];

fn config(w: &Workload, compression: Compression) -> EncoderConfig {
    EncoderConfig {
        xbzrle_cache_bytes: if w.b.is_some() {
            2 * PAGES * PAGE_SIZE
        } else {
            0
        },
        compression,
        ..EncoderConfig::default()
    }
}

/// An encoder that has already sent version `a` (so xbzrle has a base) a few times, so adaptive
/// is past its first probes and in its steady state.
fn primed_encoder(w: &Workload, name: &str, compression: Compression) -> BatchEncoder {
    let mut enc = BatchEncoder::new(config(w, compression));
    if name == "adaptive@1G" {
        enc = enc.with_adaptive_policy(AdaptivePolicy {
            link_bytes_per_sec: 125e6,
            measure_link: false,
            ..AdaptivePolicy::default()
        });
    }
    for _ in 0..4 {
        enc.encode(&refs(&w.a), &mut Vec::new());
    }
    enc
}

fn bench(c: &mut Criterion) {
    let workloads = workloads();
    let raw = (PAGES * PAGE_SIZE) as u64;

    // Ratios are deterministic: print them once as context for the speed numbers.
    for w in &workloads {
        for (cname, comp) in COMPRESSIONS {
            let mut enc = primed_encoder(w, cname, comp);
            let next = w.b.as_deref().unwrap_or(&w.a);
            let mut out = Vec::new();
            let s = enc.encode(&refs(next), &mut out);
            eprintln!(
                "ratio {:>7}/{:<8} {:>7} B of {} ({:.3}) zero={} dup={} xbzrle={} normal={} {:?}",
                w.name,
                cname,
                s.encoded_bytes,
                raw,
                s.encoded_bytes as f64 / raw as f64,
                s.zero,
                s.dup,
                s.xbzrle,
                s.normal,
                s.compression
            );
        }
    }

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(raw))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for w in &workloads {
        for (cname, comp) in COMPRESSIONS {
            let mut enc = primed_encoder(w, cname, comp);
            let versions = [refs(&w.a), refs(w.b.as_deref().unwrap_or(&w.a))];
            let mut out = Vec::with_capacity(2 * PAGES * PAGE_SIZE);
            let mut turn = 0;
            g.bench_function(BenchmarkId::new(w.name, cname), |bch| {
                bch.iter(|| {
                    // Alternate versions so every xbzrle batch carries a real delta.
                    turn ^= 1;
                    out.clear();
                    black_box(enc.encode(&versions[turn], &mut out));
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(raw))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for w in &workloads {
        for (cname, comp) in COMPRESSIONS {
            let mut enc = primed_encoder(w, cname, comp);
            let mut payload = Vec::new();
            enc.encode(&refs(w.b.as_deref().unwrap_or(&w.a)), &mut payload);
            // The destination holds version `a`, as the xbzrle delta assumes.
            let mut store = MemStore(w.a.clone());
            let mut dec = BatchDecoder::new();
            g.bench_function(BenchmarkId::new(w.name, cname), |bch| {
                bch.iter(|| black_box(dec.decode(&payload, &mut store).expect("decodes")))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
