//! Helpers shared by the end-to-end tests.
//!
//! The fixture plugins under `tests/fixtures/plugins` are their own cargo workspace; the
//! first test of a process that needs them builds them ([`fixtures`]) into
//! `<target>/fixture-plugins`, next to the main build. Cargo's lock on that directory makes
//! concurrent builds from several test processes (nextest) wait for each other, and a build
//! with nothing to do costs well under a second.

pub mod calls;
pub mod cpu;
pub mod fixtures;
pub mod golden;
pub mod models;
