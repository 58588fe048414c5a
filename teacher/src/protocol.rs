//! The OpenAI-compatible `/v1/chat/completions` wire format: the subset every
//! provider (OpenAI, vLLM, llama.cpp, Ollama) speaks.

use serde::{Deserialize, Serialize};
pub use stepwise_datasets::shard::{TokenLogprob, TopLogprob};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    /// Read as the API allows it: a string, `null` (a refusal, or a reply
    /// that is all tool calls) or a list of text parts, joined.
    #[serde(default, deserialize_with = "content_text")]
    pub content: String,
    /// Why the model declined, when it did (`content` is then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// A reasoning model's chain of thought as DeepSeek and older vLLM
    /// return it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The same as current vLLM and OpenRouter return it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            refusal: None,
            reasoning_content: None,
            reasoning: None,
        }
    }

    /// The chain of thought from whichever field carries it (a server that
    /// fills both gives the same text twice).
    pub fn reasoning_field(&self) -> Option<&str> {
        [&self.reasoning_content, &self.reasoning]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|r| !r.trim().is_empty())
    }
}

/// One element of a list-form `content`.
#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// `content` as a string, `null`, or text parts (`[{"type": "text", "text":
/// ...}]`, what current SDKs send), joined with newlines as vLLM joins them.
/// Any other part type is an error naming it: this crate has no images or
/// audio to give a model.
fn content_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<ContentPart>),
        Null(()),
    }
    match Content::deserialize(d).map_err(|_| D::Error::custom("expected a string, null or a list of content parts"))? {
        Content::Text(s) => Ok(s),
        Content::Null(()) => Ok(String::new()),
        Content::Parts(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (i, p) in parts.into_iter().enumerate() {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => texts.push(t),
                    ("text", None) => {
                        return Err(D::Error::custom(format!("content part {i}: a text part needs `text`")));
                    }
                    (other, _) => {
                        return Err(D::Error::custom(format!(
                            "content part {i} is of type {other:?}; only \"text\" parts are supported"
                        )));
                    }
                }
            }
            Ok(texts.join("\n"))
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
    /// How hard a reasoning model thinks (`low`, `medium`, `high`), passed
    /// through as OpenAI, vLLM and OpenRouter read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Ask for `logprobs` with this many alternatives a token (0: the
    /// chosen token's only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
}

/// OpenAI's `stop` is a string or a list of strings.
pub(crate) fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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
    /// Whether logprobs are asked for (`logprobs: true` on the wire).
    pub fn wants_logprobs(&self) -> bool {
        self.top_logprobs.is_some()
    }

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
    /// The completion's tokens with their log-probabilities, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Logprobs>,
}

/// A choice's `logprobs`: OpenAI's `content` list (`refusal` is not kept).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Logprobs {
    #[serde(default)]
    pub content: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
    /// Reasoning tokens among the completion tokens, where reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

impl Usage {
    pub fn reasoning_tokens(&self) -> Option<u32> {
        self.completion_tokens_details.and_then(|d| d.reasoning_tokens)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u32>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_tolerantly_content_parts_null_with_refusal_and_no_usage() {
        let body = r#"{"model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": [{"type": "text", "text": "So"},
                {"type": "text", "text": "the answer is 4."}]}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": null, "refusal": "I cannot help."}},
            {"index": 2, "message": {"role": "assistant"}, "finish_reason": "stop", "logprobs": null}]}"#;
        let r: ChatResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.choices[0].message.content, "So\nthe answer is 4.");
        assert_eq!(r.choices[1].message.content, "");
        assert_eq!(r.choices[1].message.refusal.as_deref(), Some("I cannot help."));
        assert_eq!(r.choices[2].message.content, "");
        assert_eq!(r.usage, None);
    }

    #[test]
    fn the_request_hash_does_not_change_with_the_refusal_field() {
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message::new("user", "q")],
            temperature: 0.0,
            max_tokens: 8,
            n: 1,
            seed: None,
            stop: vec![],
            reasoning_effort: None,
            top_logprobs: None,
        };
        // The hash of this request before `refusal` existed: caches and
        // shards written then stay valid.
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"q"}],"temperature":0.0,"max_tokens":8,"n":1}"#
        );
    }
}
