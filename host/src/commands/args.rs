//! Flags shared by the commands that run a model, and how they override the config.

use crate::config::GenerationConfig;
use crate::engine::EngineOptions;
use crate::sampler::SamplerConfig;
use crate::settings::Settings;
use plugin_api::GgmlType;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModelArgs {
    /// GGUF model file [default: [model] path of the config].
    #[arg(short = 'm', long, value_name = "FILE")]
    pub model: Option<PathBuf>,

    /// Tokens of context [default: [model] ctx_size, else the model's, at most 4096].
    #[arg(short = 'c', long = "ctx-size", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ctx_size: Option<u32>,

    #[arg(long = "no-repack", help = NO_REPACK_HELP)]
    pub no_repack: bool,
}

/// The help of `--no-repack`, which `llmhost bench` shares.
pub const NO_REPACK_HELP: &str = "Do not repack weights. By default they are repacked at \
     load into the kernel plugin's preferred layout (faster matmuls; the repacked tensors' file \
     pages are released, so memory stays about the same); --no-repack keeps every weight \
     zero-copy in the mmap. Overrides [model] repack";

/// Whether to repack weights at load: `--no-repack` over `[model] repack`.
pub fn repack(no_repack_flag: bool, settings: &Settings) -> bool {
    !no_repack_flag && settings.config.model.repack
}

impl ModelArgs {
    pub fn engine_options(&self, settings: &Settings) -> EngineOptions {
        let from_config = match settings.config.model.ctx_size {
            0 => None,
            n => Some(n),
        };
        EngineOptions {
            n_ctx: self.ctx_size.map(|n| n as usize).or(from_config),
            kv_type: if settings.config.model.kv_type == "f32" {
                GgmlType::F32
            } else {
                GgmlType::F16
            },
            repack: repack(self.no_repack, settings),
            ..EngineOptions::default()
        }
    }
}

/// Sampling flags; each overrides the `[generation]` key of the same name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SamplingArgs {
    /// Most tokens to generate [default: 256].
    #[arg(short = 'n', long = "max-tokens", value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 picks the most likely token (greedy) [default: 0.8].
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Keep only the K most likely tokens; 0 = off [default: 40].
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probabilities sum to P; 1 = off [default: 0.95].
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P × the most likely one; 0 = off [default: 0.05].
    #[arg(long, value_name = "P")]
    pub min_p: Option<f32>,
    /// Penalise the last --repeat-last-n tokens; 1 = off [default: 1.0].
    #[arg(long, value_name = "X")]
    pub repeat_penalty: Option<f32>,
    /// How many recent tokens the penalties look at [default: 64].
    #[arg(long, value_name = "N")]
    pub repeat_last_n: Option<usize>,
    /// Subtract X from the logit of every token already present [default: 0].
    #[arg(long, value_name = "X")]
    pub presence_penalty: Option<f32>,
    /// Subtract X × count from the logit of every token already present [default: 0].
    #[arg(long, value_name = "X")]
    pub frequency_penalty: Option<f32>,
    /// Random seed: the same seed gives the same output [default: random].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The effective generation settings: flags over `[generation]`.
    pub fn resolve(&self, config: &GenerationConfig) -> (SamplerConfig, usize, Vec<String>) {
        let seed = self.seed.or(config.seed).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let sampler = SamplerConfig {
            temperature: self.temperature.unwrap_or(config.temperature),
            top_k: self.top_k.unwrap_or(config.top_k),
            top_p: self.top_p.unwrap_or(config.top_p),
            min_p: self.min_p.unwrap_or(config.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(config.repeat_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(config.repeat_last_n),
            presence_penalty: self.presence_penalty.unwrap_or(config.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(config.frequency_penalty),
            seed,
        };
        let mut stop = config.stop.clone();
        stop.extend(self.stop.iter().cloned());
        (sampler, self.max_tokens.unwrap_or(config.max_tokens), stop)
    }
}
