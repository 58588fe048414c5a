//! # stepwise-teacher
//!
//! Ask a teacher LLM for answers and step-by-step rationales over the
//! OpenAI-compatible `/v1/chat/completions` API ([`TeacherClient`]), at the
//! speed the provider allows, never paying twice ([`cache`]) and never losing
//! a row ([`stage::teach`] writes rationale shards). [`server`] is a local
//! OpenAI-compatible teacher for the embedded default and the tests.

pub mod batch;
pub mod cache;
pub mod client;
pub mod error;
pub mod prompt;
pub mod protocol;
pub mod ratelimit;
pub mod reasoning;
pub mod server;
pub mod stage;

pub use client::{ClientConfig, TeacherClient};
pub use error::TeacherError;
