//! # llmhost, the host
//!
//! The process users run. At start-up it reads the configuration ([`config`]), detects the
//! CPU ([`cpu`]), finds, vets and loads plugins ([`plugins`]) and starts its thread pool
//! ([`pool`], handed to plugins through [`pool_bridge`]). The CLI in `main.rs` ties these
//! together; [`settings`] resolves flags over config over defaults.

pub mod chat;
pub mod commands;
pub mod config;
pub mod cpu;
pub mod engine;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod mmap;
pub mod perplexity;
pub mod plugins;
pub mod pool;
pub mod pool_bridge;
pub mod report;
pub mod sampler;
pub mod serve;
pub mod session;
pub mod settings;
pub mod tokenizer;
