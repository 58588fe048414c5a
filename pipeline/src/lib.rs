//! # stepwise-pipeline
//!
//! The orchestration of a run and the knowledge-versus-style checks, behind
//! the `stepwise` command line. Read in this order:
//!
//! - [`config`]: the `stepwise.toml` users write;
//! - [`plan`]: [`plan::Plan::resolve`] turns it once into the libraries' typed configs;
//! - [`run_dir`]: every path of a run directory;
//! - [`preflight`]: the checks that take seconds, before any stage;
//! - [`stages`]: data → teach → train → eval → report, each skipped when its
//!   recorded identity matches;
//! - [`checks`]: accuracy intervals, baselines, style, faithfulness,
//!   contamination and the verdict, from stored predictions only;
//! - [`report`]: markdown, HTML and plots;
//! - [`model_id`]: every model a run compares, as a type;
//! - [`tasks`]: the teach stage as N array tasks over storage by URL;
//! - [`commands`] and [`cli`]: the command line.
//!
//! The crate graph is one-way: `datasets` ← `teacher`, `student` ← `pipeline`.
//! [`gguf_teacher`] lives here because it joins the two: the student crate's
//! Llama behind the teacher crate's `ChatModel` trait.

pub mod checks;
pub mod cli;
pub mod commands;
pub mod config;
pub mod gguf_teacher;
pub mod model_id;
pub mod plan;
pub mod preflight;
pub mod report;
pub mod run_dir;
pub mod stages;
pub mod tasks;
