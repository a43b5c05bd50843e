//! The `--verify` data pattern: byte `i` of stream `s` is byte `i % 8` of the little-endian
//! word `(i / 8) ^ seed(s)`. It depends on the absolute offset, so lost, repeated or reordered
//! bytes all show, and a receiver can check any chunk without state beyond its offset.

fn seed(stream: u32) -> u64 {
    (u64::from(stream) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn byte_at(stream: u32, offset: u64) -> u8 {
    ((offset / 8) ^ seed(stream)).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `buf` with the pattern of `stream` starting at `offset`.
pub(crate) fn fill(stream: u32, offset: u64, buf: &mut [u8]) {
    let s = seed(stream);
    let mut i = 0;
    // Leading bytes up to a word boundary.
    while i < buf.len() && (offset + i as u64) % 8 != 0 {
        buf[i] = byte_at(stream, offset + i as u64);
        i += 1;
    }
    while i + 8 <= buf.len() {
        let word = ((offset + i as u64) / 8) ^ s;
        buf[i..i + 8].copy_from_slice(&word.to_le_bytes());
        i += 8;
    }
    while i < buf.len() {
        buf[i] = byte_at(stream, offset + i as u64);
        i += 1;
    }
}

/// Checks `buf` against the pattern; returns the absolute offset of the first wrong byte.
pub(crate) fn check(stream: u32, offset: u64, buf: &[u8]) -> Result<(), u64> {
    let s = seed(stream);
    let mut i = 0;
    while i < buf.len() && (offset + i as u64) % 8 != 0 {
        if buf[i] != byte_at(stream, offset + i as u64) {
            return Err(offset + i as u64);
        }
        i += 1;
    }
    while i + 8 <= buf.len() {
        let want = (((offset + i as u64) / 8) ^ s).to_le_bytes();
        if buf[i..i + 8] != want {
            let j = (0..8).find(|&j| buf[i + j] != want[j]).unwrap_or(0);
            return Err(offset + (i + j) as u64);
        }
        i += 8;
    }
    while i < buf.len() {
        if buf[i] != byte_at(stream, offset + i as u64) {
            return Err(offset + i as u64);
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_at_any_offset_agree_with_the_whole() {
        let mut whole = vec![0u8; 1000];
        fill(3, 0, &mut whole);
        for (start, end) in [(0, 1000), (3, 17), (5, 999), (8, 16), (999, 1000)] {
            let mut part = vec![0u8; end - start];
            fill(3, start as u64, &mut part);
            assert_eq!(part, whole[start..end]);
            assert_eq!(check(3, start as u64, &whole[start..end]), Ok(()));
        }
    }

    #[test]
    fn damage_and_misplacement_are_found() {
        let mut buf = vec![0u8; 256];
        fill(1, 40, &mut buf);
        assert_eq!(check(2, 40, &buf), Err(40), "another stream's pattern");
        assert!(check(1, 41, &buf).is_err(), "shifted by one byte");
        buf[100] ^= 1;
        assert_eq!(check(1, 40, &buf), Err(140));
    }
}
