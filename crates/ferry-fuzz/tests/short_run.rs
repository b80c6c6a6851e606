//! The short fuzz run CI does: every committed corpus input of every target, then mutations of
//! them from a fixed seed. The long runs are `cargo +nightly fuzz run <target>` (docs/RELIABILITY.md).

use std::path::PathBuf;

use ferry_fuzz::mutate::{corpus, short_run};
use ferry_fuzz::Target;

/// Mutations per target: a few seconds each in a debug build.
const MUTATIONS: usize = 20_000;

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

fn check(target: Target) {
    let inputs = corpus(target, &corpus_root()).expect("corpus readable");
    assert!(
        !inputs.is_empty(),
        "no committed corpus for {target} under {}",
        corpus_root().display()
    );
    let run = short_run(target, &inputs, MUTATIONS, 0x5eed_f377);
    assert_eq!(run.replayed, inputs.len() + target.seeds().len());
    assert_eq!(run.mutated, MUTATIONS);
}

#[test]
fn control() {
    check(Target::Control);
}

#[test]
fn multiboot() {
    check(Target::Multiboot);
}

#[test]
fn page_codec() {
    check(Target::PageCodec);
}

#[test]
fn every_target_has_a_test_here() {
    let here = include_str!("short_run.rs");
    for t in Target::ALL {
        assert!(
            here.contains(&format!("Target::{t:?})")),
            "tests/short_run.rs has no test for {t}"
        );
    }
}

#[test]
fn frame() {
    check(Target::Frame);
}
