//! The sampler: greedy, each filter's kept set on hand-made distributions, llama.cpp's penalty
//! arithmetic, determinism, token-for-token agreement with llama.cpp's own sampler chain on
//! seeded runs, degenerate logits, and properties on random logits.

use llmhost::sampler::{
    apply_penalties, log_softmax, top_logprobs, Sampler, SamplerConfig, DEFAULT_SEED,
};
use proptest::prelude::*;
use std::collections::BTreeSet;

/// Every filter off, temperature 1: the draw sees the plain softmax.
fn plain() -> SamplerConfig {
    SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplerConfig::default()
    }
}

fn kept(cfg: SamplerConfig, logits: &[f32]) -> BTreeSet<u32> {
    Sampler::new(cfg)
        .candidates(logits, &[])
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn set(ids: &[u32]) -> BTreeSet<u32> {
    ids.iter().copied().collect()
}

/// Logits whose softmax is exactly `probs` (up to rounding).
fn from_probs(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

fn lcg_logits(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        })
        .collect()
}

#[test]
fn defaults_are_llama_cpp_s() {
    let d = SamplerConfig::default();
    assert_eq!(d.temperature, 0.8);
    assert_eq!(d.top_k, 40);
    assert_eq!(d.top_p, 0.95);
    assert_eq!(d.min_p, 0.05);
    assert_eq!(d.repeat_penalty, 1.0);
    assert_eq!(d.repeat_last_n, 64);
    assert_eq!(d.presence_penalty, 0.0);
    assert_eq!(d.frequency_penalty, 0.0);
    assert_eq!(d.seed, DEFAULT_SEED);
    assert!(d.validate().is_ok());
    assert!(SamplerConfig::greedy().is_greedy());
}

#[test]
fn validate_names_the_bad_field() {
    let cases: [(&str, SamplerConfig); 7] = [
        (
            "temperature",
            SamplerConfig {
                temperature: -0.5,
                ..Default::default()
            },
        ),
        (
            "temperature",
            SamplerConfig {
                temperature: f32::NAN,
                ..Default::default()
            },
        ),
        (
            "top_p",
            SamplerConfig {
                top_p: 1.5,
                ..Default::default()
            },
        ),
        (
            "min_p",
            SamplerConfig {
                min_p: -0.1,
                ..Default::default()
            },
        ),
        (
            "repeat_penalty",
            SamplerConfig {
                repeat_penalty: 0.0,
                ..Default::default()
            },
        ),
        (
            "presence_penalty",
            SamplerConfig {
                presence_penalty: f32::INFINITY,
                ..Default::default()
            },
        ),
        (
            "frequency_penalty",
            SamplerConfig {
                frequency_penalty: f32::NAN,
                ..Default::default()
            },
        ),
    ];
    for (field, cfg) in cases {
        let err = cfg.validate().unwrap_err();
        assert!(err.contains(field), "{err:?} should name {field}");
        assert!(!err.contains('\n'));
    }
}

#[test]
fn greedy_picks_the_argmax_lowest_id_on_ties() {
    let mut s = Sampler::new(SamplerConfig::greedy());
    assert_eq!(s.sample(&[0.1, 3.0, -2.0, 2.9], &[]), 1);
    assert_eq!(s.sample(&[1.0, 5.0, 5.0, 5.0], &[]), 1);
    assert_eq!(s.sample(&[-1.0, -0.5, -3.0], &[]), 1);
    assert_eq!(s.candidates(&[0.0, 1.0, 2.0], &[]), vec![(2, 1.0)]);
}

#[test]
fn top_k_keeps_the_k_highest() {
    let logits = [1.0, 5.0, 3.0, 4.0, 2.0];
    let cfg = |k| SamplerConfig {
        top_k: k,
        ..plain()
    };
    assert_eq!(kept(cfg(1), &logits), set(&[1]));
    assert_eq!(kept(cfg(2), &logits), set(&[1, 3]));
    assert_eq!(kept(cfg(3), &logits), set(&[1, 2, 3]));
    assert_eq!(kept(cfg(100), &logits), set(&[0, 1, 2, 3, 4]));
    assert_eq!(kept(cfg(0), &logits), set(&[0, 1, 2, 3, 4]));
    // Sorted, highest first; ties by lowest id.
    let c = Sampler::new(cfg(3)).candidates(&[2.0, 7.0, 7.0, 1.0], &[]);
    assert_eq!(c.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 0]);
}

#[test]
fn top_p_keeps_the_smallest_nucleus() {
    let logits = from_probs(&[0.05, 0.5, 0.15, 0.3]);
    let cfg = |p| SamplerConfig {
        top_p: p,
        ..plain()
    };
    assert_eq!(kept(cfg(0.45), &logits), set(&[1]));
    assert_eq!(kept(cfg(0.75), &logits), set(&[1, 3]));
    assert_eq!(kept(cfg(0.9), &logits), set(&[1, 2, 3]));
    assert_eq!(kept(cfg(0.99), &logits), set(&[0, 1, 2, 3]));
    // p = 0 keeps one token.
    assert_eq!(kept(cfg(0.0), &logits), set(&[1]));
}

#[test]
fn min_p_keeps_tokens_above_the_fraction_of_the_best() {
    let logits = from_probs(&[0.05, 0.5, 0.15, 0.3]);
    let cfg = |p| SamplerConfig {
        min_p: p,
        ..plain()
    };
    // thresholds 0.5·p: 0.25 → {0.5, 0.3}; 0.1 → also 0.15; 0.05 → all but 0.05 is borderline,
    // so use 0.09 (0.045) → all.
    assert_eq!(kept(cfg(0.5), &logits), set(&[1, 3]));
    assert_eq!(kept(cfg(0.2), &logits), set(&[1, 2, 3]));
    assert_eq!(kept(cfg(0.09), &logits), set(&[0, 1, 2, 3]));
    assert_eq!(kept(cfg(1.0), &logits), set(&[1]));
    // After top-k (sorted path) the same set.
    let sorted = SamplerConfig {
        min_p: 0.5,
        top_k: 3,
        ..plain()
    };
    assert_eq!(kept(sorted, &logits), set(&[1, 3]));
}

#[test]
fn chain_order_is_top_k_then_top_p_then_min_p() {
    // top-k 3 drops token 0; top-p 0.8 over the renormalised three keeps {1, 3} (0.5/0.95 +
    // 0.3/0.95 = 0.84); min-p 0.7 then keeps only 1.
    let logits = from_probs(&[0.05, 0.5, 0.15, 0.3]);
    let base = SamplerConfig {
        top_k: 3,
        top_p: 0.8,
        ..plain()
    };
    assert_eq!(kept(base.clone(), &logits), set(&[1, 3]));
    assert_eq!(
        kept(SamplerConfig { min_p: 0.7, ..base }, &logits),
        set(&[1])
    );
}

#[test]
fn penalties_follow_llama_cpp() {
    let cfg = SamplerConfig {
        repeat_penalty: 2.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        repeat_last_n: 4,
        ..plain()
    };
    let mut logits = vec![4.0, -4.0, 1.0, 0.0, 3.0];
    // Window = last 4: [1, 3, 1, 2]; token 4 (older) is out of it; 99 is out of the vocabulary.
    apply_penalties(&mut logits, &[4, 99, 1, 3, 1, 2], &cfg);
    assert_eq!(logits[0], 4.0); // not seen
    assert_eq!(logits[1], -4.0 * 2.0 - (2.0 * 0.5 + 0.25)); // negative: multiplied; twice
    assert_eq!(logits[2], 1.0 / 2.0 - (0.5 + 0.25)); // positive: divided; once
    assert_eq!(logits[3], 0.0 * 2.0 - (0.5 + 0.25)); // zero counts as non-positive
    assert_eq!(logits[4], 3.0); // outside the window

    // The sampler applies the same before its filters.
    let raw = [4.0, -4.0, 1.0, 0.0, 3.0];
    let probs = Sampler::new(cfg.clone()).candidates(&raw, &[4, 99, 1, 3, 1, 2]);
    let want = log_softmax(&logits);
    for (id, p) in probs {
        assert!((p.ln() - want[id as usize]).abs() < 1e-5);
    }
    // Greedy sees penalised logits too: token 0 (4.0) beats a penalised 4.5.
    let mut g = Sampler::new(SamplerConfig {
        temperature: 0.0,
        ..cfg.clone()
    });
    assert_eq!(g.sample(&[4.0, 4.5], &[1]), 0);
    assert_eq!(g.sample(&[4.0, 4.5], &[]), 1);
    // repeat_last_n 0 switches all three off.
    let mut off = logits.clone();
    apply_penalties(
        &mut off,
        &[0, 1, 2],
        &SamplerConfig {
            repeat_last_n: 0,
            ..cfg
        },
    );
    assert_eq!(off, logits);
}

#[test]
fn accept_feeds_the_penalty_window() {
    let cfg = SamplerConfig {
        repeat_penalty: 1.5,
        presence_penalty: 0.3,
        repeat_last_n: 3,
        seed: 7,
        ..SamplerConfig::default()
    };
    let logits = lcg_logits(50, 3);
    let history = [5u32, 9, 9, 1, 2, 30, 2];
    let mut a = Sampler::new(cfg.clone());
    let mut b = Sampler::new(cfg);
    for &t in &history {
        a.accept(t);
    }
    assert_eq!(a.accepted().collect::<Vec<_>>(), vec![2, 30, 2]);
    for _ in 0..20 {
        assert_eq!(a.sample_accepted(&logits), b.sample(&logits, &history));
    }
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let logits = lcg_logits(1000, 11);
    let run = |seed: u64| {
        let mut s = Sampler::new(SamplerConfig { seed, ..plain() });
        (0..64).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    // Defaults (top-k 40 and friends) too.
    let run_default = |seed: u64| {
        let mut s = Sampler::new(SamplerConfig {
            seed,
            ..Default::default()
        });
        (0..64).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
    };
    assert_eq!(run_default(42), run_default(42));
    assert_ne!(run_default(42), run_default(43));
    // reset() restarts the generator.
    let mut s = Sampler::new(SamplerConfig { seed: 5, ..plain() });
    let first: Vec<u32> = (0..16).map(|_| s.sample(&logits, &[])).collect();
    s.reset();
    let again: Vec<u32> = (0..16).map(|_| s.sample(&logits, &[])).collect();
    assert_eq!(first, again);
}

#[test]
fn draws_follow_the_distribution() {
    let probs = [0.1f32, 0.6, 0.3];
    let logits = from_probs(&probs);
    let mut s = Sampler::new(SamplerConfig { seed: 3, ..plain() });
    let n = 30_000;
    let mut counts = [0usize; 3];
    for _ in 0..n {
        counts[s.sample(&logits, &[]) as usize] += 1;
    }
    for (i, &p) in probs.iter().enumerate() {
        let freq = counts[i] as f32 / n as f32;
        // 5 standard deviations of a binomial proportion.
        let tol = 5.0 * (p * (1.0 - p) / n as f32).sqrt();
        assert!((freq - p).abs() < tol, "token {i}: {freq} vs {p}");
    }
}

#[test]
fn temperature_towards_zero_approaches_greedy() {
    // lcg_logits lie in [-4, 4): a clear winner at 5.
    let mut logits = lcg_logits(500, 5);
    logits[123] = 5.0;
    let best = Sampler::new(SamplerConfig::greedy()).sample(&logits, &[]);
    assert_eq!(best, 123);
    let p_best = |t: f32| {
        Sampler::new(SamplerConfig {
            temperature: t,
            ..plain()
        })
        .candidates(&logits, &[])
        .into_iter()
        .find(|c| c.0 == best)
        .map_or(0.0, |c| c.1)
    };
    let ps: Vec<f32> = [2.0, 1.0, 0.5, 0.1, 0.01]
        .iter()
        .map(|&t| p_best(t))
        .collect();
    assert!(ps.windows(2).all(|w| w[0] < w[1]), "{ps:?}");
    assert!(ps[4] > 0.999, "{ps:?}");
    let mut s = Sampler::new(SamplerConfig {
        temperature: 1e-3,
        seed: 9,
        ..SamplerConfig::default()
    });
    for _ in 0..200 {
        assert_eq!(s.sample(&logits, &[]), best);
    }
    // Tiny temperatures overflow the logits to +∞ without breaking anything.
    let mut s = Sampler::new(SamplerConfig {
        temperature: 1e-38,
        ..plain()
    });
    assert_eq!(s.sample(&[1.0, 30.0, 2.0], &[]), 1);
}

#[test]
fn nan_and_infinite_logits_never_panic() {
    let configs = [
        SamplerConfig::greedy(),
        SamplerConfig::default(),
        plain(),
        SamplerConfig {
            top_p: 0.5,
            min_p: 0.2,
            top_k: 0,
            ..Default::default()
        },
        SamplerConfig {
            repeat_penalty: 1.3,
            frequency_penalty: 0.2,
            presence_penalty: 0.1,
            ..Default::default()
        },
    ];
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    for cfg in configs {
        let mut s = Sampler::new(cfg);
        // NaN is −∞: never picked over a finite logit.
        for _ in 0..50 {
            let t = s.sample(&[nan, -1.0, nan, -2.0], &[0, 1, 2]);
            assert!(t == 1 || t == 3, "{t}");
        }
        // +∞ wins.
        assert_eq!(s.sample(&[0.0, inf, 3.0, nan], &[1]), 1);
        // Everything NaN or −∞: some valid id, no panic.
        assert!(s.sample(&[nan, nan, nan], &[]) < 3);
        assert!(s.sample(&[-inf, -inf], &[0]) < 2);
        assert!(s.sample(&[nan], &[]) == 0);
        // Empty logits: token 0.
        assert_eq!(s.sample(&[], &[1, 2]), 0);
        assert!(s.candidates(&[], &[]).is_empty());
        // Huge magnitudes.
        assert_eq!(s.sample(&[f32::MAX, -f32::MAX, 0.0], &[]), 0);
    }
}

#[test]
fn log_softmax_and_top_logprobs() {
    let logits = [1.0f32, 3.0, 2.0, 3.0];
    let lp = log_softmax(&logits);
    let sum: f64 = lp.iter().map(|&l| (l as f64).exp()).sum();
    assert!((sum - 1.0).abs() < 1e-6);
    let want_lse = (1f64.exp() + 2.0 * 3f64.exp() + 2f64.exp()).ln();
    assert!((lp[0] as f64 - (1.0 - want_lse)).abs() < 1e-6);

    let top = top_logprobs(&logits, 3);
    assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
    assert_eq!(top[0].1, lp[1]);
    assert_eq!(top_logprobs(&logits, 10).len(), 4);
    assert!(top_logprobs(&logits, 0).is_empty());
    assert!(top_logprobs(&[], 5).is_empty());

    // NaN is −∞; all-degenerate inputs give a uniform distribution, not NaN.
    let lp = log_softmax(&[f32::NAN, 0.0]);
    assert_eq!(lp[0], f32::NEG_INFINITY);
    assert_eq!(lp[1], 0.0);
    let lp = log_softmax(&[f32::NAN, f32::NAN]);
    assert!(lp.iter().all(|l| (l - (0.5f32).ln()).abs() < 1e-6));
    let lp = log_softmax(&[f32::INFINITY, 1.0, f32::INFINITY]);
    assert_eq!(lp[1], f32::NEG_INFINITY);
    assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
}

fn logit_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -30.0f32..30.0,
        1 => Just(f32::NAN),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::INFINITY),
    ]
}

fn config_strategy() -> impl Strategy<Value = SamplerConfig> {
    (
        prop_oneof![Just(0.0f32), 0.01f32..3.0],
        0usize..50,
        0.0f32..=1.0,
        0.0f32..=1.0,
        0.5f32..2.0,
        0usize..16,
        -1.0f32..1.0,
        -1.0f32..1.0,
        any::<u64>(),
    )
        .prop_map(
            |(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, pp, fp, seed)| {
                SamplerConfig {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    repeat_penalty,
                    repeat_last_n,
                    presence_penalty: pp,
                    frequency_penalty: fp,
                    seed,
                }
            },
        )
}

proptest! {
    #[test]
    fn random_logits_sample_a_valid_candidate(
        logits in prop::collection::vec(logit_strategy(), 1..300),
        cfg in config_strategy(),
        history in prop::collection::vec(0u32..400, 0..40),
    ) {
        prop_assert!(cfg.validate().is_ok());
        let mut s = Sampler::new(cfg.clone());
        let cands = s.candidates(&logits, &history);
        prop_assert!(!cands.is_empty());
        let total: f32 = cands.iter().map(|c| c.1).sum();
        prop_assert!((total - 1.0).abs() < 1e-3, "probabilities sum to {}", total);
        prop_assert!(cands.iter().all(|c| c.1.is_finite() && c.1 >= 0.0));
        for _ in 0..4 {
            let t = s.sample(&logits, &history);
            prop_assert!((t as usize) < logits.len());
            prop_assert!(cands.iter().any(|c| c.0 == t), "{} not among the candidates", t);
        }
        if cfg.temperature == 0.0 {
            let mut pen = logits.iter().map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l }).collect::<Vec<_>>();
            apply_penalties(&mut pen, &history, &cfg);
            let max = pen.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let first = pen.iter().position(|&l| l == max).unwrap() as u32;
            prop_assert_eq!(s.sample(&logits, &history), first);
        }
    }

    #[test]
    fn log_softmax_is_a_distribution(logits in prop::collection::vec(logit_strategy(), 1..200)) {
        let lp = log_softmax(&logits);
        prop_assert_eq!(lp.len(), logits.len());
        prop_assert!(lp.iter().all(|l| !l.is_nan() && *l <= 1e-6));
        let sum: f64 = lp.iter().map(|&l| (l as f64).exp()).sum();
        prop_assert!((sum - 1.0).abs() < 1e-4, "sum {}", sum);
        let top = top_logprobs(&logits, 5);
        prop_assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}

/// The token ids llama.cpp's own sampler chain (vendored llama.cpp 0c1e57098, the golden
/// build; `libllama` from `../shared/anchor/build-llamacpp.sh`) selected for the inputs that
/// [`llama_cpp_cases`] generates: 40 steps per case, each chosen token accepted before the
/// next step, after 10 accepted history tokens. Made with this program, fed the same inputs
/// (`n_vocab seed temp top_k top_p min_p repeat last_n freq present n_hist hist... n_steps`,
/// then one line of logits per step):
///
// // Runs llama.cpp's default sampler chain (as common_sampler_init builds it, DRY/XTC/typical/top-n-sigma off)
// // on logits read from stdin; prints the selected ids.
// #include "llama.h"
// #include <cstdio>
// #include <vector>
// int main() {
//     int ncases; if (scanf("%d", &ncases) != 1) return 1;
//     for (int c = 0; c < ncases; ++c) {
//         int n_vocab, top_k, last_n, n_hist, n_steps; unsigned seed; float temp, top_p, min_p, rep, freq, pres;
//         scanf("%d %u %f %d %f %f %f %d %f %f %d", &n_vocab, &seed, &temp, &top_k, &top_p, &min_p, &rep, &last_n, &freq, &pres, &n_hist);
//         std::vector<int> hist(n_hist); for (auto & h : hist) scanf("%d", &h);
//         scanf("%d", &n_steps);
//         auto * chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
//         llama_sampler_chain_add(chain, llama_sampler_init_penalties(n_vocab, last_n, rep, freq, pres));
//         llama_sampler_chain_add(chain, llama_sampler_init_top_k(top_k));
//         llama_sampler_chain_add(chain, llama_sampler_init_typical(1.0f, 0));
//         llama_sampler_chain_add(chain, llama_sampler_init_top_p(top_p, 0));
//         llama_sampler_chain_add(chain, llama_sampler_init_min_p(min_p, 0));
//         llama_sampler_chain_add(chain, llama_sampler_init_temp_ext(temp, 0.0f, 1.0f));
//         llama_sampler_chain_add(chain, llama_sampler_init_dist(seed));
//         for (int h : hist) llama_sampler_accept(chain, h);
//         std::vector<llama_token_data> cur(n_vocab);
//         for (int s = 0; s < n_steps; ++s) {
//             for (int i = 0; i < n_vocab; ++i) { float l; scanf("%f", &l); cur[i] = {i, l, 0.0f}; }
//             llama_token_data_array arr = {cur.data(), (size_t)n_vocab, -1, false};
//             llama_sampler_apply(chain, &arr);
//             int tok = arr.data[arr.selected].id;
//             llama_sampler_accept(chain, tok);
//             printf("%d%c", tok, s + 1 == n_steps ? '\n' : ' ');
//         }
//         llama_sampler_free(chain);
//     }
// }
const LLAMA_CPP_TOKENS: [[u32; 40]; 9] = [
    [
        25, 15, 32, 20, 0, 24, 1, 2, 16, 15, 27, 40, 6, 6, 30, 9, 48, 33, 19, 19, 32, 21, 44, 30,
        33, 5, 26, 25, 30, 2, 42, 22, 11, 36, 24, 5, 12, 46, 8, 40,
    ],
    [
        3351, 1022, 2827, 731, 3978, 2784, 4900, 1807, 1239, 3052, 2982, 4277, 298, 510, 4592,
        2486, 2654, 1726, 3256, 1394, 1855, 2058, 2417, 3890, 3140, 1614, 3452, 1558, 3662, 1355,
        2214, 932, 4153, 3225, 4529, 11, 229, 663, 456, 4709,
    ],
    [
        3009, 3933, 964, 1208, 1925, 1383, 1878, 1525, 3126, 2920, 1151, 3854, 2681, 3063, 4652,
        2628, 1170, 2989, 10, 4358, 3574, 166, 263, 1299, 3558, 3490, 2387, 2336, 4309, 4752, 4190,
        3800, 1264, 1631, 4547, 2604, 2292, 2379, 614, 1922,
    ],
    [
        2325, 1360, 1603, 1944, 233, 1775, 551, 1622, 1437, 2834, 2507, 1602, 778, 1229, 717, 1237,
        639, 433, 2591, 1009, 2141, 2912, 1819, 1602, 331, 1248, 1267, 346, 630, 2013, 987, 1916,
        2833, 1253, 309, 2917, 2035, 2058, 688, 2075,
    ],
    [
        841, 1559, 1401, 2542, 1629, 57, 2137, 790, 781, 444, 1955, 2446, 1004, 2670, 609, 80,
        2601, 2192, 1585, 388, 1280, 2446, 1707, 604, 2379, 272, 801, 205, 139, 2146, 49, 1759,
        958, 1749, 963, 1167, 215, 2645, 1279, 361,
    ],
    [
        197, 1916, 674, 2759, 414, 719, 2692, 2468, 264, 2620, 2173, 1573, 2261, 1787, 2093, 1988,
        2923, 2972, 2323, 83, 2704, 1236, 498, 680, 2665, 432, 2385, 1432, 2350, 150, 1913, 1197,
        2687, 247, 1396, 1366, 2094, 1436, 1291, 1280,
    ],
    [
        100, 119, 101, 69, 191, 104, 198, 185, 77, 93, 182, 125, 43, 113, 85, 17, 54, 118, 79, 7,
        109, 173, 106, 80, 171, 41, 195, 152, 128, 93, 68, 82, 77, 50, 92, 14, 55, 161, 176, 110,
    ],
    [
        157, 10, 4, 154, 36, 178, 113, 124, 180, 172, 159, 105, 73, 58, 94, 198, 180, 69, 110, 53,
        197, 77, 140, 40, 45, 160, 15, 62, 126, 78, 186, 142, 136, 67, 22, 27, 65, 125, 19, 41,
    ],
    [
        427, 44, 374, 1355, 1257, 232, 890, 71, 1438, 579, 1217, 1389, 779, 1236, 1424, 1071, 1147,
        978, 84, 760, 1389, 175, 1125, 12, 1441, 945, 1403, 296, 1005, 12, 866, 717, 1055, 70, 326,
        1381, 1400, 1199, 163, 351,
    ],
];

/// The cases behind [`LLAMA_CPP_TOKENS`]: vocabulary size, configuration, and a logit generator
/// (the same LCG in both runs).
fn llama_cpp_cases() -> Vec<(usize, SamplerConfig)> {
    let d = SamplerConfig::default();
    vec![
        (
            50,
            SamplerConfig {
                seed: 1,
                ..d.clone()
            },
        ),
        (
            5000,
            SamplerConfig {
                seed: 42,
                ..d.clone()
            },
        ),
        (
            5000,
            SamplerConfig {
                seed: 7,
                temperature: 1.5,
                ..d.clone()
            },
        ),
        (
            3000,
            SamplerConfig {
                seed: 9,
                top_k: 0,
                top_p: 0.9,
                min_p: 0.0,
                ..d.clone()
            },
        ),
        (
            3000,
            SamplerConfig {
                seed: 10,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.02,
                ..d.clone()
            },
        ),
        (
            3000,
            SamplerConfig {
                seed: 11,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                temperature: 1.0,
                ..d.clone()
            },
        ),
        (
            200,
            SamplerConfig {
                seed: 12,
                repeat_penalty: 1.3,
                frequency_penalty: 0.2,
                presence_penalty: 0.1,
                repeat_last_n: 16,
                top_k: 0,
                top_p: 0.95,
                min_p: 0.0,
                ..d.clone()
            },
        ),
        (
            200,
            SamplerConfig {
                seed: 13,
                repeat_penalty: 1.1,
                temperature: 0.3,
                ..d.clone()
            },
        ),
        (
            1500,
            SamplerConfig {
                seed: 0xDEAD_BEEF,
                top_k: 100,
                top_p: 0.5,
                min_p: 0.1,
                temperature: 0.7,
                ..d
            },
        ),
    ]
}

#[test]
fn seeded_sampling_matches_llama_cpp_token_for_token() {
    let mut x: u64 = 12345;
    let mut rnd = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    for (case, ((n, cfg), want)) in llama_cpp_cases()
        .into_iter()
        .zip(LLAMA_CPP_TOKENS)
        .enumerate()
    {
        let history: Vec<u32> = (0..10).map(|i| (i * 7 % n) as u32).collect();
        let mut s = Sampler::new(cfg);
        for &h in &history {
            s.accept(h);
        }
        let scale = if n > 1000 { 12.0 } else { 6.0 };
        for (step, &want) in want.iter().enumerate() {
            let logits: Vec<f32> = (0..n).map(|_| rnd() * scale - scale / 2.0).collect();
            let got = s.sample_accepted(&logits);
            s.accept(got);
            assert_eq!(got, want, "case {case} step {step}");
        }
    }
}
