//! Token attributes, the special tokens llama.cpp recognises by their text, and the split of
//! input text around special-token texts (llama.cpp's `tokenizer_st_partition`).

use aho_corasick::{AhoCorasick, MatchKind};

/// `llama_token_attr` bits.
pub(crate) const UNKNOWN: u16 = 1 << 0;
pub(crate) const UNUSED: u16 = 1 << 1;
pub(crate) const NORMAL: u16 = 1 << 2;
pub(crate) const CONTROL: u16 = 1 << 3;
pub(crate) const USER_DEFINED: u16 = 1 << 4;
pub(crate) const BYTE: u16 = 1 << 5;

/// The attribute of a `tokenizer.ggml.token_type` value (`LLAMA_TOKEN_TYPE_*`).
pub(crate) fn attr_from_type(t: i32) -> u16 {
    match t {
        1 => NORMAL,
        2 => UNKNOWN,
        3 => CONTROL,
        4 => USER_DEFINED,
        5 => UNUSED,
        6 => BYTE,
        _ => 0, // undefined
    }
}

/// Texts that make a token the end-of-turn token when the file names none (in llama.cpp's
/// order; llama.cpp takes whichever it meets first in a hash map, we take the first listed).
pub(crate) const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

pub(crate) const EOM_TEXTS: &[&str] = &["<|eom_id|>"];

/// Fill-in-the-middle tokens, by kind: pre, suf, mid, pad, rep, sep.
pub(crate) const FIM_TEXTS: [&[&str]; 6] = [
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

/// Texts that end generation (llama.cpp's `special_eog_ids` detection).
pub(crate) fn is_eog_text(t: &str) -> bool {
    matches!(
        t,
        "<|eot_id|>"
            | "<|im_end|>"
            | "<|end|>"
            | "<|return|>"
            | "<|call|>"
            | "<|flush|>"
            | "<|calls|>"
            | "<end_of_turn>"
            | "<|endoftext|>"
            | "</s>"
            | "<|eom_id|>"
            | "<EOT>"
            | "_<EOT>"
            | "[EOT]"
            | "[EOS]"
            | "<|end_of_text|>"
            | "<end_of_utterance>"
            | "<eos>"
            | "<turn|>"
            | "<|tool_response>"
            | "<｜end▁of▁sentence｜>"
            | "[e~["
    )
}

/// A piece of input after the special-token split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Byte range of plain text.
    Text(usize, usize),
    /// A special token found by its text.
    Token(u32),
}

/// Finds special-token texts in input (llama.cpp's `tokenizer_st_partition`).
pub(crate) struct Partitioner {
    /// Control, user-defined and unknown tokens, longest text first (ties: lower id first;
    /// llama.cpp's `std::sort` leaves ties in an unspecified order).
    order: Vec<u32>,
    /// All their texts, pattern `k` = `order[k]`; used to skip the tokens absent from an
    /// input without searching for each one (llama.cpp searches for every one in turn).
    finder: Option<AhoCorasick>,
}

impl Partitioner {
    pub(crate) fn new(texts: &[Box<str>], attrs: &[u16]) -> Partitioner {
        let mut order: Vec<u32> = (0..texts.len())
            .filter(|&i| attrs[i] & (CONTROL | USER_DEFINED | UNKNOWN) != 0)
            .map(|i| i as u32)
            .collect();
        order.sort_by(|&a, &b| {
            texts[b as usize]
                .len()
                .cmp(&texts[a as usize].len())
                .then(a.cmp(&b))
        });
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(order.iter().map(|&i| texts[i as usize].as_bytes()))
            .ok();
        Partitioner { order, finder }
    }

    /// Splits `text` around the special tokens it contains: every control, user-defined and
    /// unknown token when `parse_special`, else only user-defined ones (as llama.cpp: those
    /// are always split out first).
    pub(crate) fn split(
        &self,
        text: &str,
        parse_special: bool,
        texts: &[Box<str>],
        attrs: &[u16],
    ) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));

        let mut present = vec![self.finder.is_none(); self.order.len()];
        if let Some(ac) = &self.finder {
            for m in ac.find_overlapping_iter(text) {
                if let Some(p) = present.get_mut(m.pattern().as_usize()) {
                    *p = true;
                }
            }
        }

        for (k, &id) in self.order.iter().enumerate() {
            if !present.get(k).copied().unwrap_or(false) {
                continue;
            }
            let attr = attrs.get(id as usize).copied().unwrap_or(0);
            if !parse_special && attr & (CONTROL | UNKNOWN) != 0 {
                continue;
            }
            let Some(needle) = texts.get(id as usize).map(|t| &**t) else {
                continue;
            };
            if needle.is_empty() {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut base, end) = f else {
                    next.push(f);
                    continue;
                };
                while base < end {
                    let Some(found) = text.get(base..end).and_then(|s| s.find(needle)) else {
                        break;
                    };
                    let at = base + found;
                    if at > base {
                        next.push(Fragment::Text(base, at));
                    }
                    next.push(Fragment::Token(id));
                    base = at + needle.len();
                }
                if base < end {
                    next.push(Fragment::Text(base, end));
                }
            }
            frags = next;
        }
        frags
    }
}
