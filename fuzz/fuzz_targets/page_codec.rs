#![no_main]
//! cargo-fuzz entry for ferry_fuzz::Target::PageCodec.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::Target::PageCodec.run(data));
