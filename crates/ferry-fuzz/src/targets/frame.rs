//! Frame headers and the frame stream: the first thing a migration peer's bytes meet.
//!
//! The input is a channel key (4 bytes) and then a stream of frames. Every header is parsed and
//! bounds-checked before its length is trusted; a frame whose CRC and sequence number check out
//! must re-encode to exactly the header that was received.

use ferry_wire::{encode_header, FrameHeader, HEADER_LEN};

pub(super) fn run(data: &[u8]) {
    let Some((key, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let key = u32::from_le_bytes(*key);
    let mut seq = 0u32;
    while let Some((raw, after)) = rest.split_first_chunk::<HEADER_LEN>() {
        let Ok(h) = FrameHeader::parse(raw) else {
            return;
        };
        let Some(payload) = after.get(..h.len as usize) else {
            return;
        };
        rest = &after[h.len as usize..];
        if h.verify(raw, payload, key, seq).is_ok() {
            let again = encode_header(h.kind, h.flags, h.seq, payload, key)
                .unwrap_or_else(|e| panic!("an accepted frame does not re-encode: {e}"));
            assert_eq!(&again, raw, "frame header changed in a round trip");
            seq += 1;
        }
    }
}

pub(super) fn seeds() -> Vec<Vec<u8>> {
    use ferry_wire::FrameType;
    let key = 0x1234_5678u32;
    let mut v = key.to_le_bytes().to_vec();
    for (seq, (kind, payload)) in [
        (FrameType::Hello, &b"FERRYMIG hello"[..]),
        (FrameType::Pages, &[0u8; 40][..]),
        (FrameType::Done, &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let h = encode_header(kind, 0, seq as u32, payload, key).expect("small frame");
        v.extend_from_slice(&h);
        v.extend_from_slice(payload);
    }
    vec![v]
}
