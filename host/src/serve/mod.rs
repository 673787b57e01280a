//! `llmhost serve`: an OpenAI-compatible HTTP server over one loaded model.
//!
//! The HTTP side (axum on tokio) parses and validates requests, renders chat templates,
//! tokenizes, and streams answers. Inference runs on one dedicated thread, the
//! [`scheduler`], which packs the decode tokens of every active sequence and chunks of new
//! prompts into one forward step at a time (continuous batching) over a paged KV cache with
//! prefix reuse. The two sides talk through the types of [`protocol`].

pub mod auth;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod protocol;
pub mod scheduler;
