//! Ids back to text: token pieces (llama.cpp's `token_to_piece`), whole-sequence decoding
//! (`llama_detokenize`) and a streaming detokenizer that only ever yields whole characters.

use super::bytes::char_to_byte;
use super::special::{BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED};
use super::Tokenizer;

/// The piece of a token as llama.cpp caches it (`token_to_piece(id, special = true)`).
pub(crate) fn piece_for_cache(text: &str, attr: u16, spm_style: bool) -> Vec<u8> {
    if attr & (UNKNOWN | CONTROL | USER_DEFINED) != 0 {
        return text.as_bytes().to_vec();
    }
    if attr & NORMAL != 0 {
        if spm_style {
            return text.replace('\u{2581}', " ").into_bytes();
        }
        return decode_byte_level(text);
    }
    if attr & BYTE != 0 {
        return byte_token_value(text).map(|b| vec![b]).unwrap_or_default();
    }
    Vec::new()
}

/// `llama_decode_text`: GPT-2 code points back to bytes; a code point outside the mapping is
/// written as `[UNK_BYTE_0x<its UTF-8 in hex><the whole token>]`, as llama.cpp does.
fn decode_byte_level(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// The byte of a byte token: `strtol(text.substr(3, 2), 16)` like llama.cpp's
/// `token_to_byte` (so `<0x4A>` is 0x4A); `None` where llama.cpp would throw.
fn byte_token_value(text: &str) -> Option<u8> {
    let b = text.as_bytes();
    let digits = b.get(3..b.len().min(5))?;
    // strtol: optional whitespace and sign, then hex digits (at most two here).
    let mut i = 0;
    while i < digits.len() && matches!(digits[i], b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
        i += 1;
    }
    let mut neg = false;
    if i < digits.len() && (digits[i] == b'+' || digits[i] == b'-') {
        neg = digits[i] == b'-';
        i += 1;
    }
    let mut v: i64 = 0;
    while i < digits.len() {
        let Some(d) = (digits[i] as char).to_digit(16) else {
            break;
        };
        v = v * 16 + d as i64;
        i += 1;
    }
    Some((if neg { -v } else { v }) as u8)
}

impl Tokenizer {
    /// `llama_detokenize(remove_special = false, unparse_special = special)` into bytes.
    pub(crate) fn detokenize_bytes(&self, ids: &[u32], special: bool) -> Vec<u8> {
        let mut text = Vec::new();
        // Remove the space a SentencePiece prefix added, from the first piece only.
        let mut remove_space = self.add_space_prefix;
        for &id in ids {
            let piece = self.piece(id, special);
            let piece = match piece {
                [b' ', rest @ ..] if remove_space => rest,
                p => p,
            };
            remove_space = false;
            text.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut text);
        }
        text
    }
}

/// llama.cpp's `clean_up_tokenization_spaces` passes, byte for byte.
fn clean_up_spaces(text: &mut Vec<u8>) {
    // " ?", " !", " .", " ,": drop the space.
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }

    // " ' ": drop both spaces (llama.cpp zeroes the second one in place, which the test of
    // the next position then sees).
    let src = &mut out;
    let n = src.len();
    let mut res: Vec<u8> = Vec::with_capacity(n);
    if n > 0 {
        res.push(src[0]);
    }
    let mut i = 1;
    while i < n {
        let x = src[i];
        if x == b'\'' && i + 1 < n && src[i - 1] == b' ' && src[i + 1] == b' ' {
            res.pop();
            i += 1;
            src[i] = 0;
        }
        res.push(x);
        i += 1;
    }

    // " 's", " 'm", " 're", " 've": drop the space.
    let n = res.len();
    let mut fin: Vec<u8> = Vec::with_capacity(n);
    for i in 0..n {
        let x = res[i];
        if i > 0 && res[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = res[i + 1];
            if x1 == b's' || x1 == b'm' {
                fin.pop();
            } else if i + 2 < n {
                let x2 = res[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    fin.pop();
                }
            }
        }
        fin.push(x);
    }
    *text = fin;
}

/// Turns ids into text one at a time, yielding only complete UTF-8: the bytes of a character
/// split across tokens are held back until it is whole. Concatenating everything
/// [`push`](Detokenizer::push) and [`finish`](Detokenizer::finish) return gives the pieces'
/// bytes decoded as `String::from_utf8_lossy` would decode them all at once (invalid bytes
/// become U+FFFD as soon as they are known to be invalid). Like llama.cpp's
/// `common_token_to_piece(…, special = false)`, control tokens write nothing unless
/// [`with_special`](Detokenizer::with_special) asks for them.
pub struct Detokenizer<'a> {
    tok: &'a Tokenizer,
    special: bool,
    pending: Vec<u8>,
}

impl<'a> Detokenizer<'a> {
    pub(crate) fn new(tok: &'a Tokenizer) -> Detokenizer<'a> {
        Detokenizer {
            tok,
            special: false,
            pending: Vec::new(),
        }
    }

    /// Also write the text of control tokens (`<|im_end|>`, …).
    pub fn with_special(mut self, special: bool) -> Self {
        self.special = special;
        self
    }

    /// Adds one token; returns the text that became complete (often empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending
            .extend_from_slice(self.tok.piece(id, self.special));
        self.take_complete()
    }

    /// Ends the stream: returns what is held back, an incomplete character as U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut at = 0usize;
        loop {
            let rest = &self.pending[at..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    at = self.pending.len();
                    break;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&rest[..good]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            at += good + bad;
                        }
                        None => {
                            at += good;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..at);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_up_spaces(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn cleanup_like_llama_cpp() {
        assert_eq!(clean("a , b . c ! d ?"), "a, b. c! d?");
        assert_eq!(clean("it ' s"), "it's");
        assert_eq!(
            clean("I 'm here , they 're and 've , don 't"),
            "I'm here, they're and've, don 't"
        );
        assert_eq!(clean(" ' ' "), "'' ");
        assert_eq!(clean(""), "");
    }

    #[test]
    fn byte_values() {
        assert_eq!(byte_token_value("<0x4A>"), Some(0x4A));
        assert_eq!(byte_token_value("<0xff>"), Some(0xFF));
        assert_eq!(byte_token_value("<0x"), Some(0));
        assert_eq!(byte_token_value("ab"), None);
    }
}
