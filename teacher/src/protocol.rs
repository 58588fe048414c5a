//! The OpenAI-compatible `/v1/chat/completions` wire format: the subset every
//! provider (OpenAI, vLLM, llama.cpp, Ollama) speaks.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: f32,
    pub max_tokens: u32,
    /// Samples per request (self-consistency).
    #[serde(default = "one")]
    pub n: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Text that ends a completion (not included in it).
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub stop: Vec<String>,
}

/// OpenAI's `stop` is a string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => vec![],
    })
}

/// Few-shot templates continue with another "Q:"; a completion ends before it.
pub const FEW_SHOT_STOP: &str = "\nQ:";

fn one() -> u32 {
    1
}

/// Rough token count, four characters a token: the local server has no
/// tokenizer, and a budget estimate needs only an upper-bound-ish guess
/// (providers report exact counts in `usage`).
pub fn approx_tokens(text: &str) -> u32 {
    (text.len().min(u32::MAX as usize) as u32).div_ceil(4)
}

impl ChatRequest {
    /// [`approx_tokens`] over every message.
    pub fn approx_prompt_tokens(&self) -> u32 {
        self.messages.iter().map(|m| approx_tokens(&m.content)).sum()
    }

    /// The cache key: SHA-256 of the canonical JSON body (field order fixed by
    /// the struct; no credentials are part of it).
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let body = serde_json::to_vec(self).expect("request serialises");
        hex::encode(Sha256::digest(body))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    pub id: String,
    #[serde(default = "chat_completion")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

fn chat_completion() -> String {
    "chat.completion".into()
}
