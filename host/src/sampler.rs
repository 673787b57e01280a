//! Token sampling: logits of the last position → the next token id.
//!
//! The chain is llama.cpp's default one (`common_sampler_init` with the default
//! `common_params_sampling::samplers` list), with the stages llmhost does not implement left out
//! because they are off by default there too (DRY, top-n-σ, typical-p, XTC, dynamic temperature,
//! mirostat):
//!
//! 1. **penalties** (`llama_sampler_init_penalties`): over the last `repeat_last_n` tokens of the
//!    history, a token seen `c` times gets its logit divided by `repeat_penalty` when positive and
//!    multiplied by it otherwise, then lowered by `c · frequency_penalty + presence_penalty`;
//! 2. **top-k**: keep the `top_k` highest logits (sorted, highest first);
//! 3. **top-p**: softmax, then keep the smallest prefix (sorted) whose probabilities sum to at
//!    least `top_p`;
//! 4. **min-p**: keep the tokens whose probability is at least `min_p` times the highest one;
//! 5. **temperature**: divide the logits by `temperature`;
//! 6. **distribution draw** (`llama_sampler_init_dist`): softmax, then one uniform draw.
//!
//! The arithmetic follows llama.cpp's (f32 softmax where it uses f32, an f64 running sum in the
//! draw) and the generator is the same Mersenne Twister (`std::mt19937` seeded with the low
//! 32 bits of the seed — llama.cpp's seeds are 32-bit — turned into a double the way libstdc++'s
//! `generate_canonical` does), so a seeded run follows llama.cpp's sampler token for token
//! wherever no two candidate logits tie (llama.cpp's order among equal logits is unspecified;
//! here it is by token id). `tests/sampler.rs` checks this against llama.cpp's own chain.
//!
//! Temperature 0 is greedy: the arg-max of the penalised logits, the lowest id on ties, without
//! touching the generator. NaN logits count as −∞; no input makes the sampler panic.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// llama.cpp's `LLAMA_DEFAULT_SEED`. llama.cpp draws a random seed when it sees this value;
/// llmhost uses it as it is, so the default configuration is reproducible too.
pub const DEFAULT_SEED: u64 = 0xFFFF_FFFF;

/// Sampling parameters. Defaults are llama.cpp's (`common_params_sampling` in
/// `common/common.h`): temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, penalties off
/// (repeat 1.0 over the last 64 tokens, presence 0, frequency 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// Divides the logits before the draw; 0 samples greedily (llama.cpp: `temp`, 0.8).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 turns it off (llama.cpp: `top_k`, 40).
    pub top_k: usize,
    /// Nucleus sampling threshold in [0, 1]; 1 turns it off (llama.cpp: `top_p`, 0.95).
    pub top_p: f32,
    /// Minimum probability relative to the most likely token, in [0, 1]; 0 turns it off
    /// (llama.cpp: `min_p`, 0.05).
    pub min_p: f32,
    /// Repetition penalty (> 0); 1 turns it off (llama.cpp: `penalty_repeat`, 1.0).
    pub repeat_penalty: f32,
    /// How many of the latest history tokens the penalties look at; 0 turns all three
    /// penalties off (llama.cpp: `penalty_last_n`, 64; its −1 "whole context" is any value at
    /// least as large as the context here).
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token present in the window
    /// (llama.cpp: `penalty_present`, 0).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the window
    /// (llama.cpp: `penalty_freq`, 0).
    pub frequency_penalty: f32,
    /// Seed of the generator; runs with the same seed and inputs give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: DEFAULT_SEED,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (temperature 0), the rest at the defaults.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        }
    }

    /// Checks every field; the error names the first bad one and says what it accepts.
    pub fn validate(&self) -> Result<(), String> {
        fn bad(field: &str, want: &str, got: f32) -> Result<(), String> {
            Err(format!("sampler: {field} must be {want}, got {got}"))
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                "a finite number ≥ 0 (0 = greedy)",
                self.temperature,
            );
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", "between 0 and 1 (1 = off)", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "between 0 and 1 (0 = off)", self.min_p);
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(
                "repeat_penalty",
                "a finite number > 0 (1 = off)",
                self.repeat_penalty,
            );
        }
        if !self.presence_penalty.is_finite() {
            return bad(
                "presence_penalty",
                "a finite number (0 = off)",
                self.presence_penalty,
            );
        }
        if !self.frequency_penalty.is_finite() {
            return bad(
                "frequency_penalty",
                "a finite number (0 = off)",
                self.frequency_penalty,
            );
        }
        Ok(())
    }

    /// Whether sampling is a plain arg-max.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    fn penalties_active(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// One candidate token: id, (transformed) logit, probability where a stage computed it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
    p: f32,
}

/// Highest logit first, then lowest id: a total order, so sorting is deterministic.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// A sampler for one sequence: the configuration, the generator state and, for callers that
/// prefer llama.cpp's style, the tokens given to [`accept`](Sampler::accept).
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Mt19937,
    /// The latest `repeat_last_n` accepted tokens, oldest first.
    accepted: std::collections::VecDeque<u32>,
    /// Scratch, reused between calls.
    cand: Vec<Candidate>,
}

impl Sampler {
    /// A sampler with `cfg` as it is; call [`SamplerConfig::validate`] first on user input
    /// (out-of-range values do not panic here, they only sample oddly).
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = Mt19937::new(fold_seed(cfg.seed));
        Sampler {
            rng,
            accepted: std::collections::VecDeque::with_capacity(cfg.repeat_last_n.min(4096)),
            cand: Vec::new(),
            cfg,
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits` (one per vocabulary entry). The penalties look at
    /// the last `repeat_last_n` tokens of `history`: pass the sequence so far (prompt and
    /// generated tokens, as llama.cpp's sampler has seen them). Ids in `history` outside the
    /// vocabulary are ignored. Empty `logits` give token 0.
    ///
    /// Sampling does not record the token: see [`accept`](Sampler::accept).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let window = &history[history.len().saturating_sub(self.cfg.repeat_last_n)..];
        self.sample_window(logits, window.iter().copied())
    }

    /// Records a token the caller committed to (prompt or generated), llama.cpp's
    /// `llama_sampler_accept`: the sampler keeps the latest `repeat_last_n` of them for
    /// [`sample_accepted`](Sampler::sample_accepted).
    pub fn accept(&mut self, token: u32) {
        if self.cfg.repeat_last_n == 0 {
            return;
        }
        if self.accepted.len() >= self.cfg.repeat_last_n {
            self.accepted.pop_front();
        }
        self.accepted.push_back(token);
    }

    /// Like [`sample`](Sampler::sample), with the penalties over the accepted tokens instead of
    /// an explicit history: for callers that feed every token through `accept`.
    pub fn sample_accepted(&mut self, logits: &[f32]) -> u32 {
        let window = std::mem::take(&mut self.accepted);
        let token = self.sample_window(logits, window.iter().copied());
        self.accepted = window;
        token
    }

    /// The tokens given to `accept` that the penalties currently look at, oldest first.
    pub fn accepted(&self) -> impl Iterator<Item = u32> + '_ {
        self.accepted.iter().copied()
    }

    /// Forgets the accepted tokens and restarts the generator from the seed.
    pub fn reset(&mut self) {
        self.accepted.clear();
        self.rng = Mt19937::new(fold_seed(self.cfg.seed));
    }

    /// The distribution the draw would use for these inputs: `(id, probability)` of every
    /// candidate left after the filters and the temperature, in the draw's order (highest
    /// first once a filter has sorted them). Greedy gives the arg-max with probability 1. Does
    /// not touch the generator: for tests, and for "probabilities after sampling" outputs.
    pub fn candidates(&mut self, logits: &[f32], history: &[u32]) -> Vec<(u32, f32)> {
        if logits.is_empty() {
            return Vec::new();
        }
        let window = &history[history.len().saturating_sub(self.cfg.repeat_last_n)..];
        let mut cand = self.prepare(logits, window.iter().copied());
        let out = if self.cfg.is_greedy() {
            vec![(argmax(&cand), 1.0)]
        } else {
            let sorted = filter_chain(&mut cand, &self.cfg);
            softmax_in_place(&mut cand, sorted);
            cand.iter().map(|c| (c.id, c.p)).collect()
        };
        self.cand = cand;
        out
    }

    /// The candidates in id order, NaN as −∞, penalised.
    fn prepare(&mut self, logits: &[f32], window: impl Iterator<Item = u32>) -> Vec<Candidate> {
        let mut cand = std::mem::take(&mut self.cand);
        cand.clear();
        cand.extend(logits.iter().enumerate().map(|(i, &l)| Candidate {
            id: i as u32,
            logit: if l.is_nan() { f32::NEG_INFINITY } else { l },
            p: 0.0,
        }));
        if self.cfg.penalties_active() {
            for (token, count) in window_counts(window) {
                if let Some(c) = cand.get_mut(token as usize) {
                    c.logit = penalize(c.logit, count, &self.cfg);
                }
            }
        }
        cand
    }

    fn sample_window(&mut self, logits: &[f32], window: impl Iterator<Item = u32>) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        let mut cand = self.prepare(logits, window);
        let token = if self.cfg.is_greedy() {
            argmax(&cand)
        } else {
            let sorted = filter_chain(&mut cand, &self.cfg);
            dist(&cand, sorted, &mut self.rng)
        };
        self.cand = cand;
        token
    }
}

/// Top-k, top-p, min-p, temperature; returns whether the candidates are sorted.
fn filter_chain(cand: &mut Vec<Candidate>, cfg: &SamplerConfig) -> bool {
    let mut sorted = false;
    if cfg.top_k > 0 {
        top_k(cand, cfg.top_k);
        sorted = true;
    }
    if cfg.top_p < 1.0 {
        top_p(cand, cfg.top_p, &mut sorted);
    }
    if cfg.min_p > 0.0 {
        min_p(cand, cfg.min_p, &mut sorted);
    }
    for c in cand.iter_mut() {
        c.logit /= cfg.temperature;
    }
    sorted
}

/// Applies the repetition, frequency and presence penalties of `cfg` to `logits` (indexed by
/// token id) in place, over the last `repeat_last_n` tokens of `history`, exactly as the
/// sampler does before its filters. Ids outside `logits` are ignored.
pub fn apply_penalties(logits: &mut [f32], history: &[u32], cfg: &SamplerConfig) {
    if !cfg.penalties_active() {
        return;
    }
    let window = &history[history.len().saturating_sub(cfg.repeat_last_n)..];
    for (token, count) in window_counts(window.iter().copied()) {
        if let Some(l) = logits.get_mut(token as usize) {
            *l = penalize(*l, count, cfg);
        }
    }
}

/// llama.cpp's seeds are 32-bit; fold a 64-bit seed so that values below 2³² stay as they are.
fn fold_seed(seed: u64) -> u32 {
    (seed ^ (seed >> 32)) as u32
}

fn window_counts(window: impl Iterator<Item = u32>) -> HashMap<u32, u32> {
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for token in window {
        *counts.entry(token).or_insert(0) += 1;
    }
    counts
}

/// llama.cpp's `llama_sampler_penalties_apply` for one token seen `count` (> 0) times: divide a
/// positive logit by the repeat penalty, multiply a non-positive one, then subtract
/// `count · frequency + presence`.
fn penalize(logit: f32, count: u32, cfg: &SamplerConfig) -> f32 {
    let l = if logit <= 0.0 {
        logit * cfg.repeat_penalty
    } else {
        logit / cfg.repeat_penalty
    };
    l - (count as f32 * cfg.frequency_penalty + cfg.presence_penalty)
}

/// Index-order arg-max: the first (lowest id) of equal maxima. All −∞ gives the first.
fn argmax(cand: &[Candidate]) -> u32 {
    let mut best = 0;
    for (i, c) in cand.iter().enumerate() {
        if c.logit > cand[best].logit {
            best = i;
        }
    }
    cand.get(best).map_or(0, |c| c.id)
}

/// Keeps the `k` highest logits, sorted highest first.
fn top_k(cand: &mut Vec<Candidate>, k: usize) {
    let k = k.min(cand.len());
    if k == 0 {
        return;
    }
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, by_logit_desc);
        cand.truncate(k);
    }
    cand.sort_unstable_by(by_logit_desc);
}

/// Probabilities in the current order (llama.cpp's `llama_sampler_softmax_impl`, f32).
fn softmax_in_place(cand: &mut [Candidate], sorted: bool) {
    let Some(first) = cand.first() else {
        return;
    };
    let max_l = if sorted {
        first.logit
    } else {
        cand.iter().fold(first.logit, |m, c| m.max(c.logit))
    };
    if max_l.is_infinite() {
        // Degenerate: the +∞ ones (or, all being −∞, all of them) share the mass.
        let hits = cand.iter().filter(|c| c.logit == max_l).count() as f32;
        for c in cand.iter_mut() {
            c.p = if c.logit == max_l { 1.0 / hits } else { 0.0 };
        }
        return;
    }
    let mut sum = 0.0f32;
    for c in cand.iter_mut() {
        c.p = (c.logit - max_l).exp();
        sum += c.p;
    }
    for c in cand.iter_mut() {
        c.p /= sum;
    }
}

/// Keeps the shortest highest-first prefix whose probabilities reach `p` (at least one).
fn top_p(cand: &mut Vec<Candidate>, p: f32, sorted: &mut bool) {
    softmax_in_place(cand, *sorted);
    if !*sorted {
        cand.sort_unstable_by(by_logit_desc);
        *sorted = true;
    }
    let mut cum = 0.0f32;
    let mut keep = cand.len();
    for (i, c) in cand.iter().enumerate() {
        cum += c.p;
        if cum >= p {
            keep = i + 1;
            break;
        }
    }
    cand.truncate(keep);
}

/// Keeps the tokens with `logit ≥ max_logit + ln(p)`, i.e. probability ≥ p · p_max.
fn min_p(cand: &mut Vec<Candidate>, p: f32, sorted: &mut bool) {
    if cand.is_empty() {
        return;
    }
    if !*sorted {
        let max_l = cand.iter().fold(-f32::MAX, |m, c| m.max(c.logit));
        let min_logit = max_l + p.ln();
        if cand.iter().any(|c| c.logit >= min_logit) {
            cand.retain(|c| c.logit >= min_logit);
            return;
        }
        cand.sort_unstable_by(by_logit_desc);
        *sorted = true;
    }
    let min_logit = cand[0].logit + p.ln();
    let keep = 1 + cand[1..]
        .iter()
        .take_while(|c| c.logit >= min_logit)
        .count();
    cand.truncate(keep);
}

/// llama.cpp's `llama_sampler_dist_apply`: f32 exponentials, an f64 running sum, one draw.
fn dist(cand: &[Candidate], sorted: bool, rng: &mut Mt19937) -> u32 {
    let Some(first) = cand.first() else {
        return 0;
    };
    if cand.len() == 1 {
        // llama.cpp draws here too (keeping the generator aligned with its backend sampling).
        rng.next_canonical_f64();
        return first.id;
    }
    let max_l = if sorted {
        first.logit
    } else {
        cand.iter().fold(first.logit, |m, c| m.max(c.logit))
    };
    if max_l.is_infinite() {
        // Degenerate (logits overflowed to +∞ under a tiny temperature, or all −∞): a uniform
        // draw among the extreme ones, as `candidates` reports them.
        let hits: Vec<u32> = cand
            .iter()
            .filter(|c| c.logit == max_l)
            .map(|c| c.id)
            .collect();
        let i = (hits.len() as f64 * rng.next_canonical_f64()) as usize;
        return hits
            .get(i.min(hits.len().saturating_sub(1)))
            .copied()
            .unwrap_or(first.id);
    }
    let sum: f64 = cand.iter().map(|c| (c.logit - max_l).exp() as f64).sum();
    let target = sum * rng.next_canonical_f64();
    let mut run = 0.0f64;
    for c in cand {
        run += (c.logit - max_l).exp() as f64;
        if run >= target {
            return c.id;
        }
    }
    cand[cand.len() - 1].id
}

/// `log(softmax(logits))`, accumulated in f64. NaN counts as −∞. Degenerate inputs stay
/// finite where a distribution exists: the +∞ entries (else, all entries being −∞, every entry)
/// share the mass equally.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let clean = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
    let max_l = logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &l| m.max(clean(l)));
    if max_l.is_infinite() {
        let hits = logits.iter().filter(|&&l| clean(l) == max_l).count();
        let share = -(hits.max(1) as f64).ln() as f32;
        return logits
            .iter()
            .map(|&l| {
                if clean(l) == max_l {
                    share
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
    }
    let max64 = max_l as f64;
    let sum: f64 = logits
        .iter()
        .map(|&l| (clean(l) as f64 - max64).exp())
        .sum();
    let lse = max64 + sum.ln();
    logits
        .iter()
        .map(|&l| (clean(l) as f64 - lse) as f32)
        .collect()
}

/// The `n` most likely tokens with their log-probabilities, most likely first (lowest id
/// first among equals).
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let lp = log_softmax(logits);
    let mut all: Vec<(u32, f32)> = lp
        .into_iter()
        .enumerate()
        .map(|(i, l)| (i as u32, l))
        .collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let n = n.min(all.len());
    if n == 0 {
        return Vec::new();
    }
    if n < all.len() {
        all.select_nth_unstable_by(n - 1, order);
        all.truncate(n);
    }
    all.sort_unstable_by(order);
    all
}

/// MT19937, the 32-bit Mersenne Twister (`std::mt19937`), the generator llama.cpp's `dist`
/// sampler uses.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; Mt19937::N],
    index: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;

    fn new(seed: u32) -> Self {
        let mut state = [0u32; Self::N];
        state[0] = seed;
        for i in 1..Self::N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 {
            state,
            index: Self::N,
        }
    }

    fn twist(&mut self) {
        for i in 0..Self::N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % Self::N] & 0x7fff_ffff);
            let mut next = self.state[(i + Self::M) % Self::N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= Self::N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// A double in [0, 1) from two draws, as libstdc++'s `generate_canonical<double, 53>`
    /// (what `std::uniform_real_distribution<double>(0, 1)` returns).
    fn next_canonical_f64(&mut self) -> f64 {
        let lo = self.next_u32() as f64;
        let hi = self.next_u32() as f64;
        let r = 4_294_967_296.0f64;
        let x = (lo + hi * r) / (r * r);
        if x >= 1.0 {
            1.0 - f64::EPSILON / 2.0
        } else {
            x
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_standard() {
        // C++11 [rand.predef]: the 10000th output of a default-constructed mt19937 (seed 5489).
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn canonical_is_below_one() {
        let mut mt = Mt19937::new(1);
        for _ in 0..1000 {
            let x = mt.next_canonical_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
