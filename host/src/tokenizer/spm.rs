//! SentencePiece-style BPE (`tokenizer.ggml.model = llama`), as llama.cpp's
//! `llm_tokenizer_spm_session`: the text (spaces already replaced by U+2581) starts as one
//! symbol per character; the adjacent pair whose concatenation is a token with the highest
//! score (ties: leftmost) is merged until no pair is a token. A final symbol that is not a
//! token is written as byte-fallback tokens `<0xXX>`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::hash::FxMap;

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Max-heap order: the highest score first, then the leftmost (llama.cpp's comparator;
    /// NaN scores compare equal, as `<` is false both ways there).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The SPM merge loop over `text`; appends token ids to `out`.
///
/// `byte_token[b]` is the token for byte `b` (`<0xXX>`, else the byte itself as a token, else
/// the unknown token); `None` drops the byte (llama.cpp would throw there).
pub(crate) fn encode(
    text: &str,
    vocab: &FxMap<Box<str>, u32>,
    scores: &[f32],
    byte_token: &[Option<u32>; 256],
    out: &mut Vec<u32>,
) {
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    let mut idx = text.char_indices().peekable();
    while let Some((start, c)) = idx.next() {
        let i = syms.len();
        syms.push(Sym {
            start,
            len: c.len_utf8(),
            prev: if i == 0 { NIL } else { i - 1 },
            next: if idx.peek().is_some() { i + 1 } else { NIL },
        });
    }
    let mut heap = BinaryHeap::new();
    let try_add = |syms: &[Sym], heap: &mut BinaryHeap<Bigram>, left: usize, right: usize| {
        let (Some(l), Some(r)) = (syms.get(left), syms.get(right)) else {
            return;
        };
        let Some(s) = text.get(l.start..l.start + l.len + r.len) else {
            return;
        };
        if let Some(&tok) = vocab.get(s) {
            heap.push(Bigram {
                score: scores.get(tok as usize).copied().unwrap_or(0.0),
                left,
                right,
                size: s.len(),
            });
        }
    };
    for i in 1..syms.len() {
        try_add(&syms, &mut heap, i - 1, i);
    }

    while let Some(bg) = heap.pop() {
        let (Some(ls), Some(rs)) = (syms.get(bg.left).copied(), syms.get(bg.right).copied()) else {
            continue;
        };
        if ls.len == 0 || rs.len == 0 || ls.len + rs.len != bg.size {
            continue;
        }
        let l = bg.left;
        syms[l].len += rs.len;
        syms[l].next = rs.next;
        syms[bg.right].len = 0;
        if let Some(nx) = syms.get_mut(rs.next) {
            nx.prev = l;
        }
        let (prev, next) = (syms[l].prev, syms[l].next);
        try_add(&syms, &mut heap, prev, l);
        try_add(&syms, &mut heap, l, next);
    }

    // Every merged symbol is a token by construction; single characters may not be.
    let mut i = if syms.is_empty() { NIL } else { 0 };
    while let Some(s) = syms.get(i) {
        let piece = text.get(s.start..s.start + s.len).unwrap_or_default();
        match vocab.get(piece) {
            Some(&tok) => out.push(tok),
            None => {
                for &b in piece.as_bytes() {
                    if let Some(t) = byte_token[b as usize] {
                        out.push(t);
                    }
                }
            }
        }
        i = s.next;
    }
}
