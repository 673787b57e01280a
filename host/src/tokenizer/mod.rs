//! # Tokenizer: text ↔ token ids, exactly as llama.cpp does it
//!
//! Built from a GGUF file's `tokenizer.ggml.*` metadata ([`TokenizerSpec::from_gguf`]), a
//! [`Tokenizer`] gives the same ids as llama.cpp (the release in `../shared/golden`) for the
//! same file and text, for the two vocabulary kinds our models use:
//!
//! - `gpt2`: byte-level BPE ([`bpe`]) after a pre-tokenizer chosen by `tokenizer.ggml.pre`
//!   ([`pretokenize`]: `smollm`/`starcoder`, `qwen2`, `llama3`/`llama-bpe`, `gpt-2`,
//!   `default`, and the other names llama.cpp maps onto those regexes);
//! - `llama`: SentencePiece-style BPE over scores with byte fallback ([`spm`]; Gemma 3).
//!
//! Encoding first splits out special-token texts ([`special`]: control and user-defined
//! tokens, llama.cpp's `tokenizer_st_partition`), then tokenizes the text between them.
//! Decoding ([`detok`]) follows `llama_token_to_piece` / `llama_detokenize`; the streaming
//! [`Detokenizer`] never yields part of a character.
//!
//! What llama.cpp decides at load from token texts is reproduced too: the end-of-turn and
//! fill-in-the-middle tokens, the end-of-generation set, control attributes forced on tokens
//! that look like control tokens, and the per-model defaults of `add_bos` and friends.
//!
//! Nothing here panics on any input text or id; unknown ids decode to nothing.

mod bpe;
mod bytes;
mod detok;
mod hash;
mod pretokenize;
mod special;
mod spm;
mod unicode;
mod unicode_data;

pub use detok::Detokenizer;
pub use pretokenize::PreTokenizer;

use hash::FxMap;
use special::{Fragment, Partitioner, CONTROL, UNKNOWN, UNUSED, USER_DEFINED};

/// The tokenizer metadata of a model, as read from its GGUF file (`None`: the key is absent;
/// llama.cpp's defaults then apply in [`Tokenizer::new`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte).
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"left right"`, rank = index.
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
}

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the model has no {0} (GGUF key {1})")]
    Missing(&'static str, &'static str),
    #[error("unsupported tokenizer model '{0}' (supported: gpt2, llama)")]
    UnsupportedModel(String),
    #[error("invalid tokenizer metadata: {0}")]
    Invalid(String),
}

impl TokenizerSpec {
    /// Reads the `tokenizer.ggml.*` keys.
    pub fn from_gguf(meta: &crate::gguf::Metadata) -> Result<TokenizerSpec, TokenizerError> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        let model = meta
            .get_str(MODEL)
            .ok_or(TokenizerError::Missing("tokenizer model", MODEL))?
            .to_owned();
        let tokens = meta
            .get_str_array(TOKENS)
            .ok_or(TokenizerError::Missing("vocabulary", TOKENS))?
            .to_vec();
        let id = |key: &str| -> Option<u32> {
            let v = meta.get_u64(key)?;
            match u32::try_from(v) {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::warn!("tokenizer: {key} = {v} is out of range, ignored");
                    None
                }
            }
        };
        let token_types = meta.get_i64_array("tokenizer.ggml.token_type").map(|v| {
            v.into_iter()
                .map(|t| i32::try_from(t).unwrap_or(0))
                .collect()
        });
        Ok(TokenizerSpec {
            model,
            pre: meta.get_str("tokenizer.ggml.pre").map(str::to_owned),
            tokens,
            scores: meta.get_f32_array("tokenizer.ggml.scores"),
            token_types,
            merges: meta
                .get_str_array("tokenizer.ggml.merges")
                .map(<[String]>::to_vec),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            eot: id("tokenizer.ggml.eot_token_id"),
            eom: id("tokenizer.ggml.eom_token_id"),
            unk: id("tokenizer.ggml.unknown_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
            add_bos: meta.get_bool("tokenizer.ggml.add_bos_token"),
            add_eos: meta.get_bool("tokenizer.ggml.add_eos_token"),
            add_space_prefix: meta.get_bool("tokenizer.ggml.add_space_prefix"),
        })
    }
}

enum Model {
    /// SentencePiece BPE; the token of each byte for byte fallback.
    Spm { byte_token: Box<[Option<u32>; 256]> },
    /// Byte-level BPE.
    Bpe {
        bpe: Box<bpe::Bpe>,
        pre: PreTokenizer,
    },
}

/// A model's tokenizer. Cheap to share (`&Tokenizer` is `Sync`); encoding allocates per call.
pub struct Tokenizer {
    model: Model,
    texts: Vec<Box<str>>,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    vocab: FxMap<Box<str>, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    partitioner: Partitioner,
    /// `token_to_piece(id, special = true)` of every token, concatenated; token `i` is
    /// `pieces[piece_at[i]..piece_at[i + 1]]`.
    pieces: Vec<u8>,
    piece_at: Vec<usize>,
    /// The token of each byte alone (see [`Tokenizer::byte_token`]).
    byte_tokens: [Option<u32>; 256],
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.model {
            Model::Spm { .. } => "llama (SentencePiece BPE)".to_owned(),
            Model::Bpe { pre, .. } => format!("gpt2 (byte-level BPE, {pre:?})"),
        };
        f.debug_struct("Tokenizer")
            .field("model", &kind)
            .field("n_vocab", &self.texts.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

/// Marks a token llama.cpp recognised by its text as a control token.
fn force_control(id: u32, attrs: &mut [u16]) {
    if let Some(a) = attrs.get_mut(id as usize) {
        if *a & CONTROL == 0 {
            tracing::debug!("tokenizer: control-looking token {id} forced to control");
            *a |= CONTROL;
        }
    }
}

/// A special id from the file: in range, else (with a warning, as llama.cpp) the default.
fn pick_id(name: &str, from_file: Option<u32>, default: Option<u32>, n: usize) -> Option<u32> {
    let default = match default {
        Some(d) if (d as usize) >= n => {
            tracing::warn!(
                "tokenizer: default {name} token {d} is out of the vocabulary, disabled"
            );
            None
        }
        d => d,
    };
    match from_file {
        Some(v) if (v as usize) < n => Some(v),
        Some(v) => {
            tracing::warn!(
                "tokenizer: {name} token {v} is out of the vocabulary ({n}), using {default:?}"
            );
            default
        }
        None => default,
    }
}

impl Tokenizer {
    /// Builds the tokenizer, applying llama.cpp's defaults and text-based detection. Fails on
    /// what llama.cpp refuses to load: an unknown model kind, no tokens, duplicate token texts,
    /// a BPE vocabulary without merges, score or type arrays shorter than the vocabulary.
    /// Special ids outside the vocabulary fall back to llama.cpp's defaults with a warning,
    /// and merges that do not parse are skipped with a warning, as llama.cpp does.
    pub fn new(spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::Invalid("the vocabulary is empty".into()));
        }
        if n >= i32::MAX as usize {
            return Err(TokenizerError::Invalid(format!(
                "the vocabulary is too large ({n} tokens)"
            )));
        }
        let is_spm = match spec.model.as_str() {
            "llama" => true,
            "gpt2" => false,
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };

        // Texts (llama.cpp renames empty ones) and the reverse map.
        let texts: Vec<Box<str>> = spec
            .tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    tracing::warn!("tokenizer: empty token at index {i}");
                    format!("[EMPTY_{i}]").into_boxed_str()
                } else {
                    t.into_boxed_str()
                }
            })
            .collect();
        let mut vocab: FxMap<Box<str>, u32> = FxMap::default();
        vocab.reserve(n);
        for (i, t) in texts.iter().enumerate() {
            if vocab.insert(t.clone(), i as u32).is_some() {
                return Err(TokenizerError::Invalid(format!(
                    "token text {t:?} appears more than once (again at {i})"
                )));
            }
        }

        let scores = match spec.scores {
            Some(s) if s.len() < n => {
                return Err(TokenizerError::Invalid(format!(
                    "{} scores for {n} tokens",
                    s.len()
                )))
            }
            Some(mut s) => {
                s.truncate(n);
                s
            }
            None => vec![0.0; n],
        };
        let mut attrs: Vec<u16> = match &spec.token_types {
            Some(t) if t.len() < n => {
                return Err(TokenizerError::Invalid(format!(
                    "{} token types for {n} tokens",
                    t.len()
                )))
            }
            Some(t) => t[..n].iter().map(|&t| special::attr_from_type(t)).collect(),
            None => vec![special::NORMAL; n],
        };

        // Model kind, pre-tokenizer and llama.cpp's defaults.
        let (model, def_bos, def_eos, def_unk, mut add_bos, mut add_space_prefix, clean_spaces) =
            if is_spm {
                let model = Model::Spm {
                    byte_token: Box::new([None; 256]),
                };
                (model, Some(1), Some(2), Some(0), true, true, false)
            } else {
                let cfg = match spec.pre.as_deref() {
                    None | Some("") => {
                        tracing::warn!(
                            "tokenizer: missing pre-tokenizer type, using 'default' \
                             (generation quality will be degraded)"
                        );
                        PreTokenizer::from_name("default")
                    }
                    Some(name) => PreTokenizer::from_name(name).or_else(|| {
                        tracing::warn!(
                            "tokenizer: pre-tokenizer '{name}' is not supported, using 'default'"
                        );
                        PreTokenizer::from_name("default")
                    }),
                }
                .ok_or_else(|| TokenizerError::Invalid("no default pre-tokenizer".into()))?;
                let merges = spec.merges.as_deref().ok_or(TokenizerError::Missing(
                    "BPE merges",
                    "tokenizer.ggml.merges",
                ))?;
                let bpe = bpe::Bpe::new(&vocab, n as u32, merges, cfg.ignore_merges)?;
                if bpe.unparsed > 0 {
                    tracing::warn!(
                        "tokenizer: {} merges are not of the form \"left right\"; ignored",
                        bpe.unparsed
                    );
                }
                let model = Model::Bpe {
                    bpe: Box::new(bpe),
                    pre: cfg.pre,
                };
                (
                    model,
                    Some(11),
                    Some(11),
                    None,
                    cfg.add_bos,
                    false,
                    cfg.clean_spaces,
                )
            };
        if let Some(v) = spec.add_space_prefix {
            add_space_prefix = v;
        }
        if let Some(v) = spec.add_bos {
            add_bos = v;
        }
        let add_eos = spec.add_eos.unwrap_or(false);

        let bos = pick_id("BOS", spec.bos, def_bos, n);
        let eos = pick_id("EOS", spec.eos, def_eos, n);
        let mut eot = pick_id("EOT", spec.eot, None, n);
        let mut eom = pick_id("EOM", spec.eom, None, n);
        let unk = pick_id("UNK", spec.unk, def_unk, n);
        let pad = pick_id("PAD", spec.pad, None, n);

        // Special tokens llama.cpp finds by their text; each found one becomes a control token.
        let find = |cands: &[&str]| cands.iter().find_map(|c| vocab.get(*c).copied());
        if eot.is_none() {
            eot = find(special::EOT_TEXTS);
            if let Some(id) = eot {
                force_control(id, &mut attrs);
            }
        }
        if eom.is_none() {
            eom = find(special::EOM_TEXTS);
            if let Some(id) = eom {
                force_control(id, &mut attrs);
            }
        }
        let fim: Vec<Option<u32>> = special::FIM_TEXTS.iter().map(|c| find(c)).collect();
        for id in fim.iter().flatten() {
            force_control(*id, &mut attrs);
        }
        // Control tokens named "unused…" are unused.
        for (i, a) in attrs.iter_mut().enumerate() {
            if *a & CONTROL != 0 && texts[i].contains("unused") {
                *a |= UNUSED;
            }
        }
        // End of generation: FIM pad/repo/sep, the known texts, EOS/EOT/EOM.
        let mut eog: Vec<u32> = fim[3..].iter().flatten().copied().collect();
        for (i, t) in texts.iter().enumerate() {
            if special::is_eog_text(t) {
                eog.push(i as u32);
                force_control(i as u32, &mut attrs);
            }
        }
        // gpt-oss: always rendered.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = vocab.get(t) {
                attrs[id as usize] = USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        let has = |eog: &[u32], t: &str| eog.iter().any(|&i| &*texts[i as usize] == t);
        // o200k_harmony / solar-open: "<|end|>" is not an end of generation there.
        if (has(&eog, "<|return|>") && has(&eog, "<|call|>") && has(&eog, "<|end|>"))
            || (has(&eog, "<|calls|>") && has(&eog, "<|flush|>") && has(&eog, "<|end|>"))
        {
            if let Some(&id) = vocab.get("<|end|>") {
                eog.retain(|&i| i != id);
                attrs[id as usize] = USER_DEFINED;
            }
        }
        // Gemma 4 / PLaMo: "</s>" is a normal token there.
        if (has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>")) && has(&eog, "</s>") {
            if let Some(&id) = vocab.get("</s>") {
                eog.retain(|&i| i != id);
                attrs[id as usize] = special::NORMAL;
            }
        }

        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = if is_spm {
                // `<0xXX>`, else the byte itself as a token.
                let hex = format!("<0x{b:02X}>");
                vocab
                    .get(hex.as_str())
                    .or_else(|| {
                        char::from_u32(b as u32)
                            .filter(|_| b < 0x80)
                            .and_then(|c| vocab.get(c.to_string().as_str()))
                    })
                    .copied()
            } else {
                let c = bytes::BYTE_TO_CHAR[b];
                vocab.get(c.to_string().as_str()).copied()
            };
        }
        let model = match model {
            Model::Spm { mut byte_token } => {
                // llama.cpp throws where a byte has no token; we write UNK (or nothing).
                for (slot, t) in byte_token.iter_mut().zip(byte_tokens) {
                    *slot = t.or(unk);
                }
                Model::Spm { byte_token }
            }
            m => m,
        };

        let spm_style = is_spm;
        let mut pieces = Vec::new();
        let mut piece_at = Vec::with_capacity(n + 1);
        for (t, &a) in texts.iter().zip(&attrs) {
            piece_at.push(pieces.len());
            pieces.extend(detok::piece_for_cache(t, a, spm_style));
        }
        piece_at.push(pieces.len());

        let partitioner = Partitioner::new(&texts, &attrs);
        Ok(Tokenizer {
            model,
            texts,
            scores,
            attrs,
            vocab,
            bos,
            eos,
            eot,
            eom,
            unk,
            pad,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            partitioner,
            pieces,
            piece_at,
            byte_tokens,
        })
    }

    /// [`TokenizerSpec::from_gguf`] then [`Tokenizer::new`].
    pub fn from_gguf(meta: &crate::gguf::Metadata) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::new(TokenizerSpec::from_gguf(meta)?)
    }

    /// Text to ids (llama.cpp's `llama_tokenize`). `add_special`: add BOS/EOS as the model's
    /// `add_bos`/`add_eos` say. `parse_special`: text of control tokens (`<|im_start|>`, …)
    /// becomes those tokens; otherwise it is tokenized as plain text (user-defined tokens are
    /// always split out, as in llama.cpp).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let frags = self
            .partitioner
            .split(text, parse_special, &self.texts, &self.attrs);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match &self.model {
            Model::Spm { byte_token } => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text.get(a..b).unwrap_or_default().chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::encode(&buf, &self.vocab, &self.scores, byte_token, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe { bpe, pre } => {
                let mut scratch = bpe::Scratch::default();
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => {
                            let part = text.get(a..b).unwrap_or_default();
                            for (x, y) in pretokenize::split(*pre, part) {
                                let word = part.as_bytes().get(x..y).unwrap_or_default();
                                bpe.encode_word(word, &self.vocab, &mut out, &mut scratch);
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// The bytes token `id` stands for (llama.cpp's `token_to_piece` without stripping).
    /// With `special` false, control and unknown tokens give nothing. Unknown ids give
    /// nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Vec<u8> {
        self.piece(id, special).to_vec()
    }

    pub(crate) fn piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        let Some(&attr) = self.attrs.get(i) else {
            return &[];
        };
        if !special && attr & (UNKNOWN | CONTROL) != 0 {
            return &[];
        }
        match (self.piece_at.get(i), self.piece_at.get(i + 1)) {
            (Some(&a), Some(&b)) => self.pieces.get(a..b).unwrap_or_default(),
            _ => &[],
        }
    }

    /// Ids to text, as llama.cpp's `common_detokenize(…, special)`: pieces concatenated, the
    /// leading space of a SentencePiece prefix removed and, for vocabularies that ask for it,
    /// spaces before punctuation cleaned up. Bytes that are not valid UTF-8 (a character cut
    /// at the end) become U+FFFD. For vocabularies with neither (SmolLM2, Qwen2.5, Gemma 3)
    /// this is exactly what a [`Detokenizer`] streams for the same ids; the stream, like
    /// llama-server's, never strips or cleans.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        String::from_utf8_lossy(&self.detokenize_bytes(ids, special)).into_owned()
    }

    /// A streaming detokenizer (see [`Detokenizer`]); control tokens write nothing.
    pub fn detokenizer(&self) -> Detokenizer<'_> {
        Detokenizer::new(self)
    }

    pub fn n_vocab(&self) -> usize {
        self.texts.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token (from the file, else found by its text like llama.cpp).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    pub fn eom(&self) -> Option<u32> {
        self.eom
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether generation stops at `id`: EOS, EOT, EOM and the tokens llama.cpp adds to its
    /// end-of-generation set by their text (`<|im_end|>`, `<end_of_turn>`, `<|endoftext|>`, …).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation ids, sorted.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `encode(…, add_special = true, …)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether `encode(…, add_special = true, …)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }

    /// The vocabulary text of `id` (GPT-2 byte-encoded for `gpt2` models, `▁` for spaces in
    /// SentencePiece ones).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(|t| &**t)
    }

    /// The id whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }

    /// The token that stands for byte `b` alone, if the vocabulary has one (llama.cpp's
    /// `byte_to_token`: the GPT-2 code point of `b` for byte-level BPE, `<0xXX>` for
    /// SentencePiece). Text with a byte that has none does not survive `encode`.
    pub fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[b as usize]
    }

    /// Whether `id` is a control token (its text is skipped when decoding without `special`).
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & CONTROL != 0)
    }
}
