//! Pre-tokenizers for byte-level BPE: split text into the "words" BPE merges within.
//!
//! Each is a hand-written transliteration of what llama.cpp does for the pre-tokenizer type
//! (`llm_tokenizer_bpe` in `llama-vocab.cpp`, `unicode_regex_split` in `unicode.cpp`): the
//! custom splitters for the GPT-2, Llama-3 and Qwen2 regexes, and — for the simple regexes
//! llama.cpp runs through `std::regex` over its "collapsed" text (every code point ≥ 128
//! replaced by one byte standing for its category) — the equivalent scans. The quirks of those
//! implementations are kept on purpose (they decide the ids), so do not "fix" them here.
//!
//! Like llama.cpp, a list of regexes is applied in turn: each one splits every chunk the
//! previous ones left, never across a chunk boundary.

use super::unicode::{self, CATEGORIES, LETTER, NUMBER, PUNCTUATION, WHITESPACE_FLAG};

/// The pre-tokenizer families implemented (`tokenizer.ggml.pre` → [`PreTokenizer::from_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// llama.cpp's `default`: punctuation runs, the GPT-2 regex, number runs, `[0-9]{3}`.
    Default,
    /// The GPT-2 regex alone (`gpt-2`, `mpt`, `olmo`, …).
    Gpt2,
    /// `\p{N}` isolated, then the GPT-2 regex (`smollm`, `starcoder`, `refact`, …).
    StarCoder,
    /// The Llama-3 regex, digits in groups of up to three (`llama3`, `llama-bpe`, `dbrx`, …).
    Llama3,
    /// The Llama-3 regex with single digits (`qwen2`, `stablelm2`, `hunyuan`, …).
    Qwen2,
}

/// What a `tokenizer.ggml.pre` value implies besides the splitter (llama.cpp's
/// `llama_vocab::impl::load`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PreConfig {
    pub pre: PreTokenizer,
    /// Look a whole word up in the vocabulary before merging (`ignore_merges`).
    pub ignore_merges: bool,
    /// The default of `add_bos` when the file does not say.
    pub add_bos: bool,
    /// `clean_up_tokenization_spaces` in detokenization.
    pub clean_spaces: bool,
}

impl PreTokenizer {
    /// The configuration llama.cpp uses for a `tokenizer.ggml.pre` value; `None` when it is
    /// not one implemented here.
    pub(crate) fn from_name(name: &str) -> Option<PreConfig> {
        use PreTokenizer::*;
        let cfg = |pre, ignore_merges, add_bos, clean_spaces| PreConfig {
            pre,
            ignore_merges,
            add_bos,
            clean_spaces,
        };
        Some(match name {
            "default" => cfg(Default, false, false, true),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => cfg(Llama3, true, true, true),
            "dbrx" | "smaug-bpe" => cfg(Llama3, false, false, true),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo"
            | "jais" => cfg(Gpt2, false, false, true),
            "trillion" | "granite-docling" => cfg(Gpt2, false, false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open"
            | "grok-2" => cfg(Qwen2, false, false, false),
            "stablelm2" | "megrez" => cfg(Qwen2, false, false, true),
            "smollm" | "command-r" => cfg(StarCoder, false, false, false),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
                cfg(StarCoder, false, false, true)
            }
            _ => return None,
        })
    }
}

/// Splits `text` into words; returns their byte ranges, in order, covering all of `text`.
pub(crate) fn split(pre: PreTokenizer, text: &str) -> Vec<(usize, usize)> {
    let mut cps = Vec::with_capacity(text.len());
    let mut byte_at = Vec::with_capacity(text.len() + 1);
    for (i, c) in text.char_indices() {
        cps.push(c as u32);
        byte_at.push(i);
    }
    byte_at.push(text.len());
    let flags: Vec<u16> = cps.iter().map(|&c| unicode::flags(c)).collect();
    let t = Cpts {
        cps: &cps,
        flags: &flags,
    };

    let all = [cps.len()];
    let offsets = match pre {
        PreTokenizer::Default => {
            let o = t.runs(&all, punct_class);
            let o = t.gpt2(&o);
            let o = t.runs(&o, number_class);
            t.ascii_digit_triples(&o)
        }
        PreTokenizer::Gpt2 => t.gpt2(&all),
        PreTokenizer::StarCoder => {
            let o = t.isolate(&all, number_class);
            t.gpt2(&o)
        }
        PreTokenizer::Llama3 => t.llama3(&all, 3),
        PreTokenizer::Qwen2 => t.llama3(&all, 1),
    };

    let mut words = Vec::with_capacity(offsets.len());
    let mut start = 0usize;
    for len in offsets {
        let end = start + len;
        if let (Some(&a), Some(&b)) = (byte_at.get(start), byte_at.get(end)) {
            words.push((a, b));
        }
        start = end;
    }
    words
}

/// Stands for "past the chunk" (llama.cpp's `OUT_OF_RANGE`).
const OOR: u32 = 0xFFFF_FFFF;

fn is_cr_or_lf(c: u32) -> bool {
    c == '\r' as u32 || c == '\n' as u32
}

/// `\p{N}` over llama.cpp's collapsed text: ASCII digits, or a code point ≥ 128 whose only
/// category is "number" (whitespace collapses to something else first).
fn number_class(cp: u32, f: u16) -> bool {
    if cp < 128 {
        (0x30..=0x39).contains(&cp)
    } else {
        f & WHITESPACE_FLAG == 0 && f & CATEGORIES == NUMBER
    }
}

/// `[\p{P}\$\+<=>\^~\|]` over the collapsed text: ASCII punctuation and symbols except the
/// backtick, or a code point ≥ 128 of category "punctuation".
fn punct_class(cp: u32, f: u16) -> bool {
    if cp < 128 {
        matches!(cp as u8, b'!'..=b'/' | b':'..=b'@' | b'['..=b'_' | b'{'..=b'~')
    } else {
        f & WHITESPACE_FLAG == 0 && f & CATEGORIES == PUNCTUATION
    }
}

struct Cpts<'a> {
    cps: &'a [u32],
    flags: &'a [u16],
}

/// Appends a piece of `len` code points (empty pieces are dropped, as in llama.cpp).
#[inline]
fn emit(out: &mut Vec<usize>, len: usize) {
    if len > 0 {
        out.push(len);
    }
}

impl Cpts<'_> {
    /// A `std::regex` split whose every match is one code point of `class` (`\p{N}`): the
    /// text between matches is kept as pieces too.
    fn isolate(&self, offsets: &[usize], class: fn(u32, u16) -> bool) -> Vec<usize> {
        let mut out = Vec::with_capacity(offsets.len());
        let mut start = 0usize;
        for &len in offsets {
            let end = start + len;
            let mut gap = 0usize;
            for p in start..end {
                if class(self.cps[p], self.flags[p]) {
                    emit(&mut out, gap);
                    gap = 0;
                    out.push(1);
                } else {
                    gap += 1;
                }
            }
            emit(&mut out, gap);
            start = end;
        }
        out
    }

    /// A `std::regex` split on `class+`: maximal runs of `class`, and the gaps between them.
    fn runs(&self, offsets: &[usize], class: fn(u32, u16) -> bool) -> Vec<usize> {
        let mut out = Vec::with_capacity(offsets.len());
        let mut start = 0usize;
        for &len in offsets {
            let end = start + len;
            let mut p = start;
            while p < end {
                let inside = class(self.cps[p], self.flags[p]);
                let run = p;
                while p < end && class(self.cps[p], self.flags[p]) == inside {
                    p += 1;
                }
                out.push(p - run);
            }
            start = end;
        }
        out
    }

    /// A `std::regex` split on `[0-9][0-9][0-9]` (leftmost matches, left to right).
    fn ascii_digit_triples(&self, offsets: &[usize]) -> Vec<usize> {
        let digit = |c: u32| (0x30..=0x39).contains(&c);
        let mut out = Vec::with_capacity(offsets.len());
        let mut start = 0usize;
        for &len in offsets {
            let end = start + len;
            let mut p = start;
            let mut gap = 0usize;
            while p < end {
                if p + 3 <= end
                    && digit(self.cps[p])
                    && digit(self.cps[p + 1])
                    && digit(self.cps[p + 2])
                {
                    emit(&mut out, gap);
                    gap = 0;
                    out.push(3);
                    p += 3;
                } else {
                    gap += 1;
                    p += 1;
                }
            }
            emit(&mut out, gap);
            start = end;
        }
        out
    }

    /// `unicode_regex_split_custom_gpt2`:
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    fn gpt2(&self, offsets: &[usize]) -> Vec<usize> {
        let mut out = Vec::with_capacity(offsets.len());
        let mut start = 0usize;
        for &len in offsets {
            let ini = start;
            let end = start + len;
            start = end;
            let cpt = |p: usize| if p < end { self.cps[p] } else { OOR };
            let fl = |p: usize| if p < end { self.flags[p] } else { 0 };
            let is = |f: u16, m: u16| f & m != 0;

            let mut pos = ini;
            while pos < end {
                let c = cpt(pos);
                let f = fl(pos);

                // 's|'t|'re|'ve|'m|'ll|'d
                if c == '\'' as u32 && pos + 1 < end {
                    let n1 = cpt(pos + 1);
                    if [b's', b't', b'm', b'd'].iter().any(|&x| n1 == x as u32) {
                        emit(&mut out, 2);
                        pos += 2;
                        continue;
                    }
                    if pos + 2 < end {
                        let n2 = cpt(pos + 2);
                        let pair = |a: u8, b: u8| n1 == a as u32 && n2 == b as u32;
                        if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
                            emit(&mut out, 3);
                            pos += 3;
                            continue;
                        }
                    }
                }

                let space = c == ' ' as u32;
                let mut f2 = if space { fl(pos + 1) } else { f };
                // <space>?\p{L}+
                if is(f2, LETTER) {
                    let from = pos;
                    pos += space as usize;
                    while is(f2, LETTER) {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    emit(&mut out, pos - from);
                    continue;
                }
                // <space>?\p{N}+
                if is(f2, NUMBER) {
                    let from = pos;
                    pos += space as usize;
                    while is(f2, NUMBER) {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    emit(&mut out, pos - from);
                    continue;
                }
                // <space>?[^\s\p{L}\p{N}]+
                let other = |g: u16| !is(g, WHITESPACE_FLAG | LETTER | NUMBER) && g != 0;
                if other(f2) {
                    let from = pos;
                    pos += space as usize;
                    while other(f2) {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    emit(&mut out, pos - from);
                    continue;
                }

                let mut nws = 0usize;
                while is(fl(pos + nws), WHITESPACE_FLAG) {
                    nws += 1;
                }
                // \s+(?!\S)
                if nws > 1 && cpt(pos + nws) != OOR {
                    emit(&mut out, nws - 1);
                    pos += nws - 1;
                    continue;
                }
                // \s+
                if nws > 0 {
                    emit(&mut out, nws);
                    pos += nws;
                    continue;
                }
                // no match
                emit(&mut out, 1);
                pos += 1;
            }
        }
        out
    }

    /// `unicode_regex_split_custom_llama3` (`max_digits` 3) and `…_qwen2` (`max_digits` 1):
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    ///  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    fn llama3(&self, offsets: &[usize], max_digits: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(offsets.len());
        let mut start = 0usize;
        for &len in offsets {
            let ini = start;
            let end = start + len;
            start = end;
            let cpt = |p: usize| if p < end { self.cps[p] } else { OOR };
            let fl = |p: usize| if p < end { self.flags[p] } else { 0 };
            let is = |f: u16, m: u16| f & m != 0;

            let mut pos = ini;
            while pos < end {
                let c = cpt(pos);
                let f = fl(pos);

                // (?i:'s|'t|'re|'ve|'m|'ll|'d)
                if c == '\'' as u32 && pos + 1 < end {
                    let n1 = unicode::to_lower_ascii(cpt(pos + 1));
                    if [b's', b't', b'm', b'd'].iter().any(|&x| n1 == x as u32) {
                        emit(&mut out, 2);
                        pos += 2;
                        continue;
                    }
                    if pos + 2 < end {
                        let n2 = unicode::to_lower_ascii(cpt(pos + 2));
                        let pair = |a: u8, b: u8| n1 == a as u32 && n2 == b as u32;
                        if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
                            emit(&mut out, 3);
                            pos += 3;
                            continue;
                        }
                    }
                }

                // [^\r\n\p{L}\p{N}]?\p{L}+
                if !(is_cr_or_lf(c) || is(f, NUMBER)) && (is(f, LETTER) || is(fl(pos + 1), LETTER))
                {
                    let from = pos;
                    pos += 1;
                    while is(fl(pos), LETTER) {
                        pos += 1;
                    }
                    emit(&mut out, pos - from);
                    continue;
                }

                // \p{N}{1,max_digits}
                if is(f, NUMBER) {
                    let mut from = pos;
                    while is(fl(pos), NUMBER) {
                        pos += 1;
                        if pos - from >= max_digits {
                            emit(&mut out, pos - from);
                            from = pos;
                        }
                    }
                    emit(&mut out, pos - from);
                    continue;
                }

                // <space>?[^\s\p{L}\p{N}]+[\r\n]*
                // (llama.cpp tests the first code point's flags, not the second's, for "defined")
                let space = c == ' ' as u32;
                let mut f2 = if space { fl(pos + 1) } else { f };
                let other = |g: u16| !is(g, WHITESPACE_FLAG | LETTER | NUMBER);
                if other(f2) && f != 0 {
                    let from = pos;
                    pos += space as usize;
                    while other(f2) && f2 != 0 {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    while is_cr_or_lf(cpt(pos)) {
                        pos += 1;
                    }
                    emit(&mut out, pos - from);
                    continue;
                }

                let mut nws = 0usize;
                let mut last_end_r_or_n = 0usize;
                while is(fl(pos + nws), WHITESPACE_FLAG) {
                    if is_cr_or_lf(cpt(pos + nws)) {
                        last_end_r_or_n = pos + nws + 1;
                    }
                    nws += 1;
                }
                // \s*[\r\n]+
                if last_end_r_or_n > 0 {
                    emit(&mut out, last_end_r_or_n - pos);
                    pos = last_end_r_or_n;
                    continue;
                }
                // \s+(?!\S)
                if nws > 1 && cpt(pos + nws) != OOR {
                    emit(&mut out, nws - 1);
                    pos += nws - 1;
                    continue;
                }
                // \s+
                if nws > 0 {
                    emit(&mut out, nws);
                    pos += nws;
                    continue;
                }
                // no match
                emit(&mut out, 1);
                pos += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, s: &str) -> Vec<&str> {
        split(pre, s).into_iter().map(|(a, b)| &s[a..b]).collect()
    }

    #[test]
    fn gpt2_regex() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello world's  big   day!!\n"),
            ["Hello", " world", "'s", " ", " big", "  ", " day", "!!", "\n"]
        );
    }

    #[test]
    fn starcoder_isolates_digits() {
        assert_eq!(
            words(PreTokenizer::StarCoder, "abc 1234x"),
            ["abc", " ", "1", "2", "3", "4", "x"]
        );
    }

    #[test]
    fn llama3_and_qwen2_digits() {
        assert_eq!(words(PreTokenizer::Llama3, "12345"), ["123", "45"]);
        assert_eq!(words(PreTokenizer::Qwen2, "123"), ["1", "2", "3"]);
        assert_eq!(
            words(PreTokenizer::Llama3, "I'M here\n\n  ok"),
            ["I", "'M", " here", "\n\n", " ", " ok"]
        );
    }

    #[test]
    fn default_splits() {
        assert_eq!(
            words(PreTokenizer::Default, "x=12345, `y`"),
            ["x", "=", "123", "45", ",", " `", "y", "`"]
        );
    }

    #[test]
    fn covers_input() {
        for pre in [
            PreTokenizer::Default,
            PreTokenizer::Gpt2,
            PreTokenizer::StarCoder,
            PreTokenizer::Llama3,
            PreTokenizer::Qwen2,
        ] {
            let s = " a\r\n\t 1é中 ' 'S\u{3000}x  ";
            assert_eq!(words(pre, s).concat(), s);
            assert!(words(pre, "").is_empty());
        }
    }
}
