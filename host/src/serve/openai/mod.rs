//! The OpenAI API as llmhost speaks it: request bodies parsed and validated into what the
//! scheduler needs, and the JSON of responses, stream chunks and errors. No HTTP here:
//! [`super::http`] moves the bytes, this module decides what they mean.
//!
//! Requests are read field by field from a JSON object rather than through derived types, so
//! that every error names the field at fault ("'temperature' must be a number, got a string")
//! and unknown fields, which clients send freely, are ignored.
//!
//! `error`: the error object and its statuses; `request`: parsing and validation, and the
//! prompt's tokens; `response`: bodies, stream chunks, usage and log-probabilities.

mod error;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use error::*;
pub use request::*;
pub use response::*;
