//! Code point classes exactly as llama.cpp's `unicode.cpp` sees them.
//!
//! llama.cpp classifies code points with its own tables (`unicode-data.cpp`), which need not
//! match the Unicode version of Rust's `char` methods; the pre-tokenizers must use the same
//! tables to split text the same way. [`unicode_data`](super::unicode_data) is generated from
//! that file; here it is unpacked once into a two-stage lookup table (256-code-point blocks,
//! identical blocks shared), a few hundred KiB.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::unicode_data::{RANGES_FLAGS, WHITESPACE};

/// `unicode_cpt_flags` bits (llama.cpp `unicode.h`).
pub(crate) const UNDEFINED: u16 = 0x0001;
pub(crate) const NUMBER: u16 = 0x0002;
pub(crate) const LETTER: u16 = 0x0004;
#[cfg(test)]
pub(crate) const ACCENT_MARK: u16 = 0x0010;
pub(crate) const PUNCTUATION: u16 = 0x0020;
#[cfg(test)]
pub(crate) const SYMBOL: u16 = 0x0040;
pub(crate) const CATEGORIES: u16 = 0x00FF;
pub(crate) const WHITESPACE_FLAG: u16 = 0x0100;

const MAX_CODEPOINTS: u32 = 0x11_0000;
const BLOCK: usize = 256;

struct Table {
    /// Block index per 256 code points.
    stage1: Vec<u16>,
    /// The distinct blocks, `BLOCK` flags each.
    stage2: Vec<u16>,
}

fn build() -> Table {
    let mut flat = vec![UNDEFINED; MAX_CODEPOINTS as usize];
    for pair in RANGES_FLAGS.windows(2) {
        let (start, flags) = pair[0];
        let end = pair[1].0.min(MAX_CODEPOINTS);
        if start < end {
            flat[start as usize..end as usize].fill(flags);
        }
    }
    for &cp in WHITESPACE.iter() {
        if let Some(f) = flat.get_mut(cp as usize) {
            *f |= WHITESPACE_FLAG;
        }
    }
    let mut stage1 = Vec::with_capacity(flat.len() / BLOCK);
    let mut stage2: Vec<u16> = Vec::new();
    let mut seen: HashMap<&[u16], u16> = HashMap::new();
    for block in flat.chunks(BLOCK) {
        let next = (stage2.len() / BLOCK) as u16;
        let idx = *seen.entry(block).or_insert_with(|| {
            stage2.extend_from_slice(block);
            next
        });
        stage1.push(idx);
    }
    Table { stage1, stage2 }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// llama.cpp's `unicode_cpt_flags_from_cpt(cp).as_uint()` without the case/NFD helper bits
/// (no pre-tokenizer here reads them, and every code point has a non-zero category anyway).
#[inline]
pub(crate) fn flags(cp: u32) -> u16 {
    if cp >= MAX_CODEPOINTS {
        return UNDEFINED;
    }
    let t = table();
    let block = t.stage1.get((cp as usize) / BLOCK).copied().unwrap_or(0) as usize;
    t.stage2
        .get(block * BLOCK + (cp as usize % BLOCK))
        .copied()
        .unwrap_or(UNDEFINED)
}

/// `unicode_tolower`, restricted to what the contraction rules compare against: llama.cpp's
/// lowercase table maps exactly three kinds of code point to ASCII — `A`–`Z`, U+0130 (to `i`)
/// and U+212A KELVIN SIGN (to `k`) — and every other result is not ASCII, so for comparisons
/// with ASCII letters this is the full table.
#[inline]
pub(crate) fn to_lower_ascii(cp: u32) -> u32 {
    match cp {
        0x41..=0x5A => cp + 0x20,
        0x130 => 'i' as u32,
        0x212A => 'k' as u32,
        _ => cp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(flags('a' as u32), LETTER);
        assert_eq!(flags('7' as u32), NUMBER);
        assert_eq!(flags(' ' as u32) & WHITESPACE_FLAG, WHITESPACE_FLAG);
        assert_eq!(flags('\n' as u32) & WHITESPACE_FLAG, WHITESPACE_FLAG);
        assert_eq!(flags(0x3000) & WHITESPACE_FLAG, WHITESPACE_FLAG);
        assert_eq!(flags('中' as u32), LETTER);
        assert_eq!(flags('！' as u32), PUNCTUATION);
        assert_eq!(flags('$' as u32), SYMBOL);
        assert_eq!(flags(0x0301) & CATEGORIES, ACCENT_MARK);
        assert_eq!(flags('Ⅻ' as u32), NUMBER);
        assert_eq!(flags(0x10FFFF), UNDEFINED);
        assert_eq!(flags(0x11_0000), UNDEFINED);
    }

    #[test]
    fn table_matches_ranges() {
        for pair in RANGES_FLAGS.windows(2) {
            let (start, f) = pair[0];
            let end = pair[1].0;
            for cp in [start, (start + end) / 2, end - 1] {
                assert_eq!(flags(cp) & CATEGORIES, f, "U+{cp:04X}");
            }
        }
    }
}
