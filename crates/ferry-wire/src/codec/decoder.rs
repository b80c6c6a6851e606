//! Batch decoder: validates a whole payload before writing any page into the store.

use super::compress::Decompressors;
use super::encoder::{TAG_DUP, TAG_NORMAL, TAG_XBZRLE, TAG_ZERO};
use super::varint::{get_u64, unzigzag};
use super::xbzrle::{xbzrle_check, xbzrle_decode};
use super::{
    CodecError, CompressionUsed, PageStore, FORMAT_VERSION, HEADER_LEN, MAX_BATCH_PAGES, PAGE_SIZE,
    XBZRLE_MAX_DELTA,
};

/// What one [`BatchDecoder::decode`] call applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeStats {
    /// Pages written to the store.
    pub pages: usize,
    /// Of which Zero.
    pub zero: usize,
    /// Of which Dup.
    pub dup: usize,
    /// Of which Xbzrle.
    pub xbzrle: usize,
    /// Of which Normal.
    pub normal: usize,
    /// Payload length.
    pub payload_bytes: usize,
    /// Compression of the data section.
    pub compression: CompressionUsed,
}

/// Marks a delta whose result no Dup refers to.
const NO_SLOT: usize = usize::MAX;

/// Where a page's decoded bytes come from once the payload is validated.
#[derive(Debug, Clone, Copy)]
enum Source {
    Zero,
    /// 4096 bytes at this offset of the data section.
    Data(usize),
    /// Xbzrle delta at `delta..delta + len` of the data section, applied in place to the store's
    /// page; the result is also kept in scratch slot `keep` when a later Dup refers to it.
    Delta {
        delta: usize,
        len: usize,
        keep: usize,
    },
    /// A Dup of an xbzrle page: the content kept in scratch slot `slot`. Copying from the source
    /// gfn's store page instead would be wrong if a later page of the batch rewrote that gfn.
    Kept(usize),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    gfn: u64,
    src: Source,
}

/// Decodes batch payloads into a [`PageStore`]; keeps its scratch buffers between calls.
pub struct BatchDecoder {
    decompressors: Decompressors,
    /// Decompressed data section (grows to at most `MAX_BATCH_PAGES * PAGE_SIZE`, never shrinks).
    data: Vec<u8>,
    /// Xbzrle results that a Dup copies.
    kept: Vec<u8>,
    entries: Vec<Entry>,
}

impl Default for BatchDecoder {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn le_u32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize
}

impl BatchDecoder {
    /// A decoder with empty scratch buffers (they grow on first use and are then reused).
    pub fn new() -> Self {
        Self {
            decompressors: Decompressors::new(),
            data: Vec::new(),
            kept: Vec::new(),
            entries: Vec::with_capacity(MAX_BATCH_PAGES),
        }
    }

    /// Decodes `payload` and writes its pages into `store`.
    ///
    /// The payload is parsed, decompressed, every xbzrle delta checked (a delta's validity does
    /// not depend on page content) and every gfn checked against the store before the first page
    /// is written: a rejected payload leaves the store untouched. Pages are then written in batch
    /// order; an xbzrle delta applies in place to the store's current page (see the precondition
    /// in the module docs).
    pub fn decode(
        &mut self,
        payload: &[u8],
        store: &mut dyn PageStore,
    ) -> Result<DecodeStats, CodecError> {
        let Self {
            decompressors,
            data: data_buf,
            kept,
            entries,
        } = self;

        // Header.
        let header = payload.get(..HEADER_LEN).ok_or(CodecError::Truncated {
            what: "batch header",
        })?;
        if header[0] != FORMAT_VERSION {
            return Err(CodecError::BadVersion(header[0]));
        }
        let compression =
            CompressionUsed::from_byte(header[1]).ok_or(CodecError::BadCompression(header[1]))?;
        let count = usize::from(u16::from_le_bytes([header[2], header[3]]));
        if count > MAX_BATCH_PAGES {
            return Err(CodecError::BadPageCount(count));
        }
        let data_len = le_u32(header, 4);
        let stored_len = le_u32(header, 8);
        let desc_len = le_u32(header, 12);
        // Checked against the page count before anything is sized from it.
        if data_len > count * PAGE_SIZE {
            return Err(CodecError::BadLength("data section longer than its pages"));
        }
        if compression == CompressionUsed::None && stored_len != data_len {
            return Err(CodecError::BadLength("raw data section length mismatch"));
        }
        // u32 + u32 + 16 cannot overflow a 64-bit usize; payload.len() bounds both from here on.
        let total = (HEADER_LEN as u64) + stored_len as u64 + desc_len as u64;
        if total > payload.len() as u64 {
            return Err(CodecError::Truncated {
                what: "batch sections",
            });
        }
        if total < payload.len() as u64 {
            return Err(CodecError::BadLength("trailing bytes after descriptors"));
        }
        let stored = &payload[HEADER_LEN..HEADER_LEN + stored_len];
        let desc = &payload[HEADER_LEN + stored_len..];

        // Data section.
        let data: &[u8] = if compression == CompressionUsed::None {
            stored
        } else {
            if data_buf.len() < data_len {
                data_buf.resize(data_len, 0);
            }
            let dst = &mut data_buf[..data_len];
            decompressors.decompress(compression, stored, dst)?;
            dst
        };

        // Descriptors.
        entries.clear();
        let mut stats = DecodeStats {
            pages: count,
            payload_bytes: payload.len(),
            compression,
            ..DecodeStats::default()
        };
        let mut pos = 0;
        let mut data_off = 0;
        let mut kept_slots = 0;
        let mut prev_gfn = u64::MAX;
        for index in 0..count {
            let bad = |what| CodecError::BadEncoding { index, what };
            let tag = *desc.get(pos).ok_or(CodecError::Truncated {
                what: "page descriptor",
            })?;
            pos += 1;
            let gfn_delta = get_u64(desc, &mut pos).ok_or_else(|| bad("bad gfn varint"))?;
            let gfn = prev_gfn
                .wrapping_add(1)
                .wrapping_add(unzigzag(gfn_delta) as u64);
            prev_gfn = gfn;
            let src = match tag {
                TAG_NORMAL => {
                    if data.len() - data_off < PAGE_SIZE {
                        return Err(bad("data section too short for a normal page"));
                    }
                    data_off += PAGE_SIZE;
                    stats.normal += 1;
                    Source::Data(data_off - PAGE_SIZE)
                }
                TAG_ZERO => {
                    stats.zero += 1;
                    Source::Zero
                }
                TAG_DUP => {
                    let src = get_u64(desc, &mut pos).ok_or_else(|| bad("bad dup varint"))?;
                    let earlier = entries
                        .get_mut(usize::try_from(src).unwrap_or(usize::MAX))
                        .ok_or_else(|| bad("dup of a page not earlier in the batch"))?;
                    stats.dup += 1;
                    match &mut earlier.src {
                        Source::Delta { keep, .. } => {
                            if *keep == NO_SLOT {
                                *keep = kept_slots;
                                kept_slots += 1;
                            }
                            Source::Kept(*keep)
                        }
                        other => *other,
                    }
                }
                TAG_XBZRLE => {
                    let len = get_u64(desc, &mut pos).ok_or_else(|| bad("bad delta varint"))?;
                    if len > XBZRLE_MAX_DELTA as u64 {
                        return Err(bad("xbzrle delta longer than the limit"));
                    }
                    let len = len as usize;
                    if data.len() - data_off < len {
                        return Err(bad("data section too short for an xbzrle delta"));
                    }
                    if !xbzrle_check(&data[data_off..data_off + len], PAGE_SIZE) {
                        return Err(CodecError::XbzrleOverflow { index });
                    }
                    let src = Source::Delta {
                        delta: data_off,
                        len,
                        keep: NO_SLOT,
                    };
                    data_off += len;
                    stats.xbzrle += 1;
                    src
                }
                _ => return Err(bad("unknown page tag")),
            };
            entries.push(Entry { gfn, src });
        }
        if pos != desc.len() {
            return Err(CodecError::BadLength(
                "trailing bytes in descriptor section",
            ));
        }
        if data_off != data.len() {
            return Err(CodecError::BadLength("unused bytes in data section"));
        }

        // Every gfn must exist before anything is written.
        for e in entries.iter() {
            store_page(store, e.gfn)?;
        }
        if kept.len() < kept_slots * PAGE_SIZE {
            kept.resize(kept_slots * PAGE_SIZE, 0);
        }

        // Everything checked: apply in batch order.
        for (index, e) in entries.iter().enumerate() {
            let page = store_page(store, e.gfn)?;
            match e.src {
                Source::Zero => page.fill(0),
                Source::Data(off) => page.copy_from_slice(&data[off..off + PAGE_SIZE]),
                Source::Delta { delta, len, keep } => {
                    // Cannot fail: the same walk accepted this delta above.
                    if !xbzrle_decode(&data[delta..delta + len], page) {
                        return Err(CodecError::XbzrleOverflow { index });
                    }
                    if keep != NO_SLOT {
                        kept[keep * PAGE_SIZE..(keep + 1) * PAGE_SIZE].copy_from_slice(page);
                    }
                }
                Source::Kept(slot) => {
                    page.copy_from_slice(&kept[slot * PAGE_SIZE..(slot + 1) * PAGE_SIZE])
                }
            }
        }
        Ok(stats)
    }
}

/// The store's page for `gfn`, checked to be exactly one page long.
#[inline]
fn store_page(store: &mut dyn PageStore, gfn: u64) -> Result<&mut [u8], CodecError> {
    let page = store.page_mut(gfn)?;
    if page.len() != PAGE_SIZE {
        return Err(CodecError::BadPageLen {
            gfn,
            len: page.len(),
        });
    }
    Ok(page)
}
