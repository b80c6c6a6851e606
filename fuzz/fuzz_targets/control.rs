#![no_main]
//! cargo-fuzz entry for ferry_fuzz::Target::Control.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::Target::Control.run(data));
