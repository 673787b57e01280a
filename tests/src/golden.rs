//! llama.cpp's reference outputs (copied from `../shared/golden` into `tests/data/golden`;
//! see the README there for how they were made).

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub greedy: Vec<GreedyCase>,
    pub perplexity: PerplexityRef,
}

#[derive(Debug, Deserialize)]
pub struct GreedyCase {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub steps: Vec<GreedyStep>,
    pub stable_steps: usize,
    pub tie_tolerance: f64,
}

#[derive(Debug, Deserialize)]
pub struct GreedyStep {
    pub id: u32,
    pub logprob: f64,
    /// The 5 most likely `[id, logprob]`.
    pub top: Vec<(u32, f64)>,
}

#[derive(Debug, Deserialize)]
pub struct PerplexityRef {
    pub ctx: usize,
    /// llama-perplexity's "Final estimate" line.
    #[serde(rename = "final")]
    pub final_line: String,
}

impl PerplexityRef {
    /// The PPL figure of the final-estimate line.
    pub fn ppl(&self) -> f64 {
        let at = self.final_line.find("PPL = ").expect("a PPL figure") + 6;
        self.final_line[at..]
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("a number after 'PPL = '")
    }
}

/// Reads `tests/data/golden/<file>.json`.
pub fn load(file: &str) -> Golden {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/golden")
        .join(format!("{file}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text llama-perplexity scored.
pub fn ppl_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/golden/ppl-text.txt"))
        .expect("tests/data/golden/ppl-text.txt")
}
