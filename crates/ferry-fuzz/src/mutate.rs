//! The short fuzz run that `cargo test` (and so CI) does on stable Rust: every committed corpus
//! input and every seed, then a fixed number of mutations of them.
//!
//! libFuzzer (through cargo-fuzz, nightly) does the long, coverage-guided runs; it cannot run on
//! CI's stable toolchain. This is deliberately simple (byte flips, random bytes, truncation,
//! splicing, interesting integers, from a fixed seed), written here because it is twenty lines and
//! must stay deterministic: a failure it finds reproduces with the same seed on every machine.

use std::fs;
use std::path::Path;

use crate::Target;

/// What a short run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShortRun {
    /// Corpus files and seeds replayed.
    pub replayed: usize,
    /// Mutated inputs run.
    pub mutated: usize,
}

/// xorshift64*: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u32; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x1000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

/// One mutation of `input`, possibly spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 if v.len() >= 4 => {
                let i = rng.below(v.len() - 3);
                let x = INTERESTING[rng.below(INTERESTING.len())];
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            4 => {
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
        }
    }
    v
}

/// The inputs of `target`'s corpus directory under `corpus_root` (missing directory: none).
pub fn corpus(target: Target, corpus_root: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let dir = corpus_root.join(target.name());
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    paths.sort();
    paths.iter().map(fs::read).collect()
}

/// Replays `target`'s seeds and `corpus`, then runs `mutations` mutated inputs from `seed`.
/// Panics (with the input in hex) on the first input the target rejects as a bug.
pub fn short_run(target: Target, corpus: &[Vec<u8>], mutations: usize, seed: u64) -> ShortRun {
    let mut pool = target.seeds();
    pool.extend_from_slice(corpus);
    for input in &pool {
        run_reporting(target, input);
    }
    let mut rng = Rng(seed | 1);
    for _ in 0..mutations {
        let a = &pool[rng.below(pool.len())];
        let b = &pool[rng.below(pool.len())];
        let input = mutate(&mut rng, a, b);
        run_reporting(target, &input);
    }
    ShortRun {
        replayed: pool.len(),
        mutated: mutations,
    }
}

fn run_reporting(target: Target, input: &[u8]) {
    let outcome = std::panic::catch_unwind(|| target.run(input));
    if let Err(cause) = outcome {
        let hex: String = input.iter().take(64).map(|b| format!("{b:02x}")).collect();
        let saved = std::env::temp_dir().join(format!("ferry-fuzz-{target}-failure"));
        let saved = match std::fs::write(&saved, input) {
            Ok(()) => format!("saved in {}", saved.display()),
            Err(e) => format!("could not be saved: {e}"),
        };
        let why = cause
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| cause.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        panic!(
            "fuzz target {target} failed on a {}-byte input starting {hex} ({saved}; replay it \
             with `cargo +nightly fuzz run {target} <file>`): {why}",
            input.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic() {
        let run = |seed| {
            let mut rng = Rng(seed);
            (0..50)
                .map(|_| mutate(&mut rng, b"ferry migration", b"other input"))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
