//! Zero-page detection.

/// True if every byte of `page` is zero.
///
/// Works in 64-byte chunks OR-folded without branches inside a chunk, so the compiler vectorises
/// the fold, and leaves at the first non-zero chunk: most non-zero pages are rejected in the first
/// cache line, and an all-zero page runs at memory bandwidth.
#[inline]
pub fn is_zero_page(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(64);
    for chunk in &mut chunks {
        let mut acc = 0u64;
        for word in chunk.chunks_exact(8) {
            acc |= u64::from_ne_bytes(word.try_into().expect("8-byte chunk"));
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_zero_and_any_single_nonzero_byte() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero_page(&page));
        for i in [0, 1, 7, 8, 63, 64, 2048, 4095] {
            page[i] = 1;
            assert!(!is_zero_page(&page), "byte {i}");
            page[i] = 0;
        }
        // Lengths that are not a multiple of 64 use the remainder path.
        assert!(is_zero_page(&[0u8; 70]));
        let mut odd = [0u8; 70];
        odd[69] = 0x80;
        assert!(!is_zero_page(&odd));
        assert!(is_zero_page(&[]));
    }
}
