//! Byte-level BPE (`tokenizer.ggml.model = gpt2`), as llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! A word from the pre-tokenizer is a run of bytes; each byte starts as one symbol (its GPT-2
//! code point), and the adjacent pair with the lowest merge rank (ties: leftmost) is merged
//! until no pair has a rank. Every string a merge can produce is interned once at load as a
//! "piece" id (vocabulary tokens keep their ids; merge strings outside the vocabulary get ids
//! after them), so merging compares integers, never strings. A final symbol whose text is not
//! a token falls back, as in llama.cpp, to the single-byte tokens of its (byte-encoded) text.

use std::collections::BinaryHeap;

use super::bytes::BYTE_TO_CHAR;
use super::hash::FxMap;
use super::TokenizerError;

const NONE: u32 = u32::MAX;
const NIL: usize = usize::MAX;

pub(crate) struct Bpe {
    /// `(left piece << 32) | right piece` → (rank, merged piece).
    merges: FxMap<u64, (u32, u32)>,
    /// The piece of each byte's one-code-point string, or `NONE`.
    byte_piece: [u32; 256],
    /// llama.cpp's fallback for a symbol that is not a token: the token of each byte of its
    /// byte-encoded text taken alone. Only ASCII-printable bytes encode to one byte, so only
    /// they can have one.
    byte_fallback: [u32; 256],
    n_vocab: u32,
    /// Look the whole (byte-encoded) word up first (llama.cpp's `ignore_merges`).
    ignore_merges: bool,
    /// Merges that did not parse as "left right" (kept only for the load-time warning).
    pub(crate) unparsed: usize,
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
    piece: u32,
}

#[derive(PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    size: usize,
    merged: u32,
}

impl Ord for Bigram {
    /// Max-heap order: the lowest rank first, then the leftmost.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Reusable buffers for one `encode` call.
#[derive(Default)]
pub(crate) struct Scratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
    encoded: String,
}

impl Bpe {
    pub(crate) fn new(
        vocab: &FxMap<Box<str>, u32>,
        n_vocab: u32,
        merges: &[String],
        ignore_merges: bool,
    ) -> Result<Bpe, TokenizerError> {
        let mut extra: FxMap<String, u32> = FxMap::default();
        let mut next = n_vocab;
        let mut intern = |s: &str| -> Result<u32, TokenizerError> {
            if let Some(&id) = vocab.get(s) {
                return Ok(id);
            }
            if let Some(&id) = extra.get(s) {
                return Ok(id);
            }
            let id = next;
            next = next
                .checked_add(1)
                .filter(|&n| n < NONE)
                .ok_or_else(|| TokenizerError::Invalid("too many BPE merges".into()))?;
            extra.insert(s.to_owned(), id);
            Ok(id)
        };

        let mut table: FxMap<u64, (u32, u32)> = FxMap::default();
        table.reserve(merges.len());
        let mut unparsed = 0usize;
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp: `word.find(' ', 1)`, the left part may itself be a space.
            let split = m
                .as_bytes()
                .get(1..)
                .and_then(|b| b.iter().position(|&c| c == b' '))
                .map(|p| p + 1);
            let Some(pos) = split else {
                unparsed += 1;
                continue;
            };
            let (left, right) = (&m[..pos], &m[pos + 1..]);
            let rank = u32::try_from(rank)
                .map_err(|_| TokenizerError::Invalid("too many BPE merges".into()))?;
            let l = intern(left)?;
            let r = intern(right)?;
            let mut joined = String::with_capacity(m.len());
            joined.push_str(left);
            joined.push_str(right);
            let j = intern(&joined)?;
            // The first of duplicate merges wins (`std::unordered_map::emplace`).
            table.entry(key(l, r)).or_insert((rank, j));
        }

        let mut byte_piece = [NONE; 256];
        let mut byte_fallback = [NONE; 256];
        let mut buf = [0u8; 4];
        for b in 0..256usize {
            let c = BYTE_TO_CHAR[b];
            let s: &str = c.encode_utf8(&mut buf);
            byte_piece[b] = vocab
                .get(s)
                .or_else(|| extra.get(s))
                .copied()
                .unwrap_or(NONE);
            if s.len() == 1 {
                byte_fallback[b] = vocab.get(s).copied().unwrap_or(NONE);
            }
        }

        Ok(Bpe {
            merges: table,
            byte_piece,
            byte_fallback,
            n_vocab,
            ignore_merges,
            unparsed,
        })
    }

    /// Appends the tokens of one pre-tokenized word (raw bytes, not yet byte-encoded).
    pub(crate) fn encode_word(
        &self,
        word: &[u8],
        vocab: &FxMap<Box<str>, u32>,
        out: &mut Vec<u32>,
        scratch: &mut Scratch,
    ) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges {
            scratch.encoded.clear();
            scratch
                .encoded
                .extend(word.iter().map(|&b| BYTE_TO_CHAR[b as usize]));
            if let Some(&id) = vocab.get(scratch.encoded.as_str()) {
                out.push(id);
                return;
            }
        }
        if let [b] = word {
            self.emit(self.byte_piece[*b as usize], word, out);
            return;
        }

        let syms = &mut scratch.syms;
        let heap = &mut scratch.heap;
        syms.clear();
        heap.clear();
        let n = word.len();
        syms.extend(word.iter().enumerate().map(|(i, &b)| Sym {
            start: i,
            len: 1,
            prev: if i == 0 { NIL } else { i - 1 },
            next: if i + 1 == n { NIL } else { i + 1 },
            piece: self.byte_piece[b as usize],
        }));
        for i in 1..n {
            self.push_bigram(syms, heap, i - 1, i);
        }

        while let Some(bg) = heap.pop() {
            let (l, r) = (bg.left, bg.right);
            let (Some(ls), Some(rs)) = (syms.get(l).copied(), syms.get(r).copied()) else {
                continue;
            };
            // Stale: one side was merged away or grew since the pair was queued.
            if ls.len == 0 || rs.len == 0 || ls.len + rs.len != bg.size {
                continue;
            }
            syms[l].len += rs.len;
            syms[l].next = rs.next;
            syms[l].piece = bg.merged;
            syms[r].len = 0;
            if let Some(nx) = syms.get_mut(rs.next) {
                nx.prev = l;
            }
            let prev = syms[l].prev;
            let next = syms[l].next;
            self.push_bigram(syms, heap, prev, l);
            self.push_bigram(syms, heap, l, next);
        }

        for s in syms.iter() {
            if s.len > 0 {
                self.emit(s.piece, &word[s.start..s.start + s.len], out);
            }
        }
    }

    #[inline]
    fn emit(&self, piece: u32, bytes: &[u8], out: &mut Vec<u32>) {
        if piece < self.n_vocab {
            out.push(piece);
        } else {
            for &b in bytes {
                let t = self.byte_fallback[b as usize];
                if t != NONE {
                    out.push(t);
                }
            }
        }
    }

    #[inline]
    fn push_bigram(&self, syms: &[Sym], heap: &mut BinaryHeap<Bigram>, left: usize, right: usize) {
        let (Some(l), Some(r)) = (syms.get(left), syms.get(right)) else {
            return;
        };
        if l.piece == NONE || r.piece == NONE {
            return;
        }
        if let Some(&(rank, merged)) = self.merges.get(&key(l.piece, r.piece)) {
            heap.push(Bigram {
                rank,
                left,
                right,
                size: l.len + r.len,
                merged,
            });
        }
    }
}

#[inline]
fn key(l: u32, r: u32) -> u64 {
    ((l as u64) << 32) | r as u64
}
