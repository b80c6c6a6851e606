//! LEB128 varints (unsigned, and zigzag for signed gfn deltas), bounds-checked on decode.

/// Longest LEB128 encoding of a u64.
pub(crate) const MAX_VARINT_LEN: usize = 10;

/// Appends `v` as unsigned LEB128.
#[inline]
pub(crate) fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes `v` as unsigned LEB128 into `buf` at `pos`; returns the new position, or `None` if `buf`
/// is too short (the xbzrle encoder uses this to give up once the delta reaches its limit).
#[inline]
pub(crate) fn write_u64(buf: &mut [u8], mut pos: usize, mut v: u64) -> Option<usize> {
    loop {
        let slot = buf.get_mut(pos)?;
        pos += 1;
        if v < 0x80 {
            *slot = v as u8;
            return Some(pos);
        }
        *slot = (v as u8) | 0x80;
        v >>= 7;
    }
}

/// Reads an unsigned LEB128 from `buf` at `*pos`, advancing it. `None` on truncation, on an
/// encoding longer than 10 bytes, or on a value that overflows u64.
#[inline]
pub(crate) fn get_u64(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..MAX_VARINT_LEN {
        let b = *buf.get(*pos + i)?;
        let bits = u64::from(b & 0x7f);
        // The 10th byte may only carry the single top bit of a u64.
        if i == MAX_VARINT_LEN - 1 && b > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            *pos += i + 1;
            return Some(v);
        }
    }
    None
}

/// Zigzag-maps a signed value so small magnitudes of either sign encode short.
#[inline]
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edges() {
        for v in [0, 1, 127, 128, 4095, 4096, 1 << 35, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_u64(&mut out, v);
            let mut buf = [0u8; MAX_VARINT_LEN];
            let end = write_u64(&mut buf, 0, v).unwrap();
            assert_eq!(&buf[..end], &out[..]);
            let mut pos = 0;
            assert_eq!(get_u64(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        let mut pos = 0;
        assert_eq!(get_u64(&[0x80, 0x80], &mut pos), None);
        assert_eq!(get_u64(&[0xff; 11], &mut pos), None);
        // 10th byte with more than the top bit set overflows.
        let mut over = [0xffu8; 10];
        over[9] = 0x02;
        assert_eq!(get_u64(&over, &mut pos), None);
        assert_eq!(pos, 0);
        assert_eq!(write_u64(&mut [0u8; 1], 0, 300), None);
    }
}
