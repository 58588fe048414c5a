//! # stepwise-student
//!
//! Small students trained on a teacher's labels and rationales with candle.
//!
//! - [`layers`]: projections, masks, the KV cache and dropout, shared by both models.
//! - [`llama`]: a decoder-only model of the Llama / Qwen2 family written for
//!   training (every op carries a gradient; full-sequence logits; a KV cache
//!   for generation; HF tensor names).
//! - [`t5`]: an encoder-decoder of the T5 family (relative position buckets,
//!   HF's conventions), written for training, with a cached greedy decoder.
//! - [`tokenizer`]: load `tokenizer.json`, or train a byte-level BPE in-process;
//!   chat templates.
//! - [`gguf`]: pretrained weights and tokenizers from GGUF files, dequantised.
//! - [`gguf_export`]: a trained decoder as a GGUF file (f16, q8_0, q4_k_m) for llama.cpp / Ollama.
//! - [`data`]: the `[label]` / `[rationale]` tasks, the baselines' data, the
//!   seeded data order.
//! - [`train`]: the Distilling Step-by-Step trainer (AdamW, schedule,
//!   clipping, accumulation, log-spaced checkpoints, exact resume, best on
//!   validation).
//! - [`generate`]: batched greedy decoding.
//! - [`device`]: CPU by default, CUDA with `--features cuda`, chosen at run time.

pub mod alloc;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_export;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod ops;
pub mod optim;
pub mod params;
pub mod student;
pub mod t5;
pub mod tokenizer;
pub mod train;

pub use data::{StudyExample, Variant};
pub use error::{Result, StudentError};
pub use llama::Config;
pub use student::{Model, ModelConfig, Student};
pub use t5::T5Config;
pub use tokenizer::{ChatMessage, StudentTokenizer};
pub use train::{TrainConfig, TrainSummary, ValExample};
