//! The subcommands that run a model. `main.rs` parses flags and dispatches here.

pub mod args;
pub mod bench;
pub mod perplexity;
pub mod run;
pub mod serve;
