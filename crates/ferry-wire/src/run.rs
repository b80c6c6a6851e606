//! Page runs: consecutive whole pages sent raw, the large-page fast path.
//!
//! A [`crate::FrameType::PageRun`] payload is a 16-byte header followed by `count` pages of 4096
//! bytes, in guest order from `first`:
//!
//! | offset | size | field                                    |
//! |--------|------|------------------------------------------|
//! | 0      | 8    | `first` page number (u64 LE)             |
//! | 8      | 4    | `count` (u32 LE), `1..=MAX_RUN_PAGES`    |
//! | 12     | 4    | reserved, zero                           |
//! | 16     | count * 4096 | the pages                        |
//!
//! Why a frame of its own rather than a batch of Normal pages: the receiver knows where every byte
//! goes before the bytes arrive, so it reads them straight into guest RAM (no staging copy), and the
//! sender writes them straight from guest RAM (one vectored write). Both ends then touch each byte
//! once. The frame CRC still covers everything; the receiver computes it from per-page CRCs (which
//! it needs anyway for the RAM digest) with [`crc_append_page`], so it reads each page once.
//!
//! Runs are only for pages the destination does not run on yet: a run lands before its CRC is
//! checked, and a bad CRC fails the whole migration, so the destination's copy is discarded unseen.

use std::sync::OnceLock;

use crate::codec::PAGE_SIZE;
use crate::WireError;

/// Bytes of a run header.
pub const RUN_HEADER_LEN: usize = 16;
/// Most pages in one run (2 MiB: one large page).
pub const MAX_RUN_PAGES: u32 = 512;

/// The header of a page run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunHeader {
    /// First page number.
    pub first: u64,
    /// Number of pages.
    pub count: u32,
}

impl RunHeader {
    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; RUN_HEADER_LEN] {
        let mut b = [0u8; RUN_HEADER_LEN];
        b[..8].copy_from_slice(&self.first.to_le_bytes());
        b[8..12].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    /// Parses a run header and checks it against the frame's payload length and the guest's size.
    pub fn decode(
        b: &[u8; RUN_HEADER_LEN],
        payload_len: u32,
        guest_pages: u64,
    ) -> Result<Self, WireError> {
        let first = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if b[12..].iter().any(|&x| x != 0) {
            return Err(WireError::Malformed("reserved page-run bytes are not zero"));
        }
        if count == 0 || count > MAX_RUN_PAGES {
            return Err(WireError::Malformed("page run of 0 or too many pages"));
        }
        if u64::from(payload_len) != RUN_HEADER_LEN as u64 + u64::from(count) * PAGE_SIZE as u64 {
            return Err(WireError::Malformed(
                "page-run length differs from its page count",
            ));
        }
        if first
            .checked_add(u64::from(count))
            .is_none_or(|end| end > guest_pages)
        {
            return Err(WireError::Malformed("page run beyond guest RAM"));
        }
        Ok(Self { first, count })
    }
}

/// `crc32c_append(c, page)` for a 4096-byte `page` whose own `crc32c` is `page_crc`.
///
/// CRC is linear: appending a page shifts the state by 4096 zero bytes and adds the page's CRC,
/// `append(c, P) = shift(c) ^ crc(P)`; `shift` is a fixed 32x32 bit matrix, applied here with four
/// byte tables (built once from 32 CRCs of a zero page).
pub fn crc_append_page(c: u32, page_crc: u32) -> u32 {
    let t = shift_tables();
    t[0][(c & 0xff) as usize]
        ^ t[1][((c >> 8) & 0xff) as usize]
        ^ t[2][((c >> 16) & 0xff) as usize]
        ^ t[3][(c >> 24) as usize]
        ^ page_crc
}

fn shift_tables() -> &'static [[u32; 256]; 4] {
    static TABLES: OnceLock<Box<[[u32; 256]; 4]>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let zero = [0u8; PAGE_SIZE];
        let zero_crc = crc32c::crc32c(&zero);
        // shift(e) for each single bit e: append(e, Z) = shift(e) ^ crc(Z).
        let basis: Vec<u32> = (0..32)
            .map(|k| crc32c::crc32c_append(1u32 << k, &zero) ^ zero_crc)
            .collect();
        let mut t = Box::new([[0u32; 256]; 4]);
        for (j, table) in t.iter_mut().enumerate() {
            for (b, slot) in table.iter_mut().enumerate() {
                *slot = (0..8)
                    .filter(|bit| b & (1 << bit) != 0)
                    .fold(0, |acc, bit| acc ^ basis[8 * j + bit]);
            }
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_a_page_by_its_crc_equals_appending_its_bytes() {
        let mut page = vec![0u8; PAGE_SIZE];
        let mut x = 0x1234_5678_9abc_def0u64;
        for (i, b) in page.iter_mut().enumerate() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i as u64);
            *b = (x >> 56) as u8;
        }
        for c in [0u32, 1, 0xdead_beef, u32::MAX, 0x8000_0000] {
            assert_eq!(
                crc_append_page(c, crc32c::crc32c(&page)),
                crc32c::crc32c_append(c, &page)
            );
        }
    }

    #[test]
    fn run_headers_round_trip_and_hostile_ones_are_refused() {
        let h = RunHeader {
            first: 10,
            count: 4,
        };
        let len = (RUN_HEADER_LEN + 4 * PAGE_SIZE) as u32;
        assert_eq!(RunHeader::decode(&h.encode(), len, 14).unwrap(), h);
        assert!(RunHeader::decode(&h.encode(), len, 13).is_err(), "past RAM");
        assert!(RunHeader::decode(&h.encode(), len + 1, 14).is_err());
        let big = RunHeader {
            first: 0,
            count: MAX_RUN_PAGES + 1,
        };
        assert!(RunHeader::decode(&big.encode(), u32::MAX, u64::MAX).is_err());
        let wrap = RunHeader {
            first: u64::MAX,
            count: 1,
        };
        assert!(RunHeader::decode(&wrap.encode(), len - 3 * PAGE_SIZE as u32, u64::MAX).is_err());
        let mut b = h.encode();
        b[15] = 1;
        assert!(RunHeader::decode(&b, len, 14).is_err());
    }
}
