//! GPT-2's reversible byte ↔ code point mapping (`bytes_to_unicode`), as in llama.cpp's
//! `unicode_byte_to_utf8_map`: printable bytes `!`–`~`, `¡`–`¬` and `®`–`ÿ` stand for
//! themselves, the other 68 bytes map, in order, to U+0100, U+0101, ….

/// The code point byte `b` is written as in a byte-level BPE vocabulary.
pub(crate) const BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

const fn keeps_itself(b: u32) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0u32;
    while b < 256 {
        let cp = if keeps_itself(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        out[b as usize] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    out
}

/// The byte a byte-level BPE code point stands for (`unicode_utf8_to_byte`), if any.
#[inline]
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        if keeps_itself(cp) {
            return Some(cp as u8);
        }
        return None;
    }
    // U+0100.. stand for the non-printable bytes, in byte order.
    HIGH_TO_BYTE.get((cp - 256) as usize).copied()
}

/// The bytes U+0100, U+0101, … stand for.
const HIGH_TO_BYTE: [u8; 68] = build_high_to_byte();

const fn build_high_to_byte() -> [u8; 68] {
    let mut out = [0u8; 68];
    let mut n = 0usize;
    let mut b = 0u32;
    while b < 256 {
        if !keeps_itself(b) && n < 68 {
            out[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(char_to_byte('a'), Some(b'a'));
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('中'), None);
    }
}
