//! The server's side of the chat-completions API as OpenAI documents it:
//! requests parsed with every optional field optional and the API's
//! defaults ([`ChatCall::parse`]), and errors in the API's shape with the
//! status codes the SDKs map to exceptions ([`ApiError`]).
//!
//! The client's own [`ChatRequest`](crate::protocol::ChatRequest) stays
//! strict and canonical (it is hashed for the cache); what other clients
//! send is read here, once, into a [`ChatCall`].

use crate::protocol::{Message, one_or_many};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// An error as the OpenAI API answers it: `{"error": {"message", "type",
/// "param", "code"}}` under the status an SDK turns into its exception
/// (`BadRequestError`, `AuthenticationError`, `NotFoundError`,
/// `RateLimitError`, `InternalServerError`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    /// The request field at fault, as a path (`messages[0].content`).
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is wrong and resending it will not help.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// 400 for a prompt the model's context cannot hold with the answer.
    pub fn context_length(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad_request(message, Some("messages"))
        }
    }

    /// 404 for a model the server does not serve, as OpenAI words it.
    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist or you do not have access to it."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 401: a missing or wrong API key (never echoed back).
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect API key provided.".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn rate_limited() -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "Rate limit reached; retry after the time in Retry-After.".into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    /// 500: the server failed; resending may work.
    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The `{"error": ...}` object (also what a stream sends when it fails midway).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The request as it arrives: what the API marks optional is optional, and
/// (as vLLM does) fields this server has no use for are ignored.
#[derive(Deserialize)]
struct Wire {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default, deserialize_with = "one_or_many")]
    stop: Vec<String>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// How a streamed answer is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streaming {
    /// `stream_options.include_usage`: one last chunk with the usage.
    pub include_usage: bool,
}

/// Most samples one request may ask for.
pub const MAX_N: u32 = 128;

/// A chat request read with the API's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCall {
    pub model: String,
    /// Roles are `system`, `user` or `assistant` (`developer` is read as
    /// `system`, which chat templates know).
    pub messages: Vec<Message>,
    /// Default 1, as the API's.
    pub temperature: f32,
    /// Default 1.
    pub top_p: f32,
    /// `max_completion_tokens`, else `max_tokens`; `None` is "until the
    /// model stops", within the backend's own limit.
    pub max_tokens: Option<u32>,
    /// Default 1.
    pub n: u32,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    /// `Some` when `stream` is true.
    pub stream: Option<Streaming>,
    /// `Some(k)` with `logprobs: true`: the chosen tokens' log-probabilities
    /// and `k` alternatives each.
    pub top_logprobs: Option<u32>,
}

impl ChatCall {
    /// Parses and checks a request body; the error names the field at fault.
    pub fn parse(body: &[u8]) -> Result<ChatCall, ApiError> {
        let de = &mut serde_json::Deserializer::from_slice(body);
        let w: Wire = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return ApiError::bad_request(format!("the body is not valid JSON: {inner}"), None);
            }
            // A missing field is reported at its parent's path.
            let msg = inner.to_string();
            let param = match msg.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
                Some(field) if path == "." => field.to_string(),
                Some(field) => format!("{path}.{field}"),
                None => path,
            };
            ApiError::bad_request(format!("{param}: {msg}"), Some(&param))
        })?;
        if w.messages.is_empty() {
            return Err(ApiError::bad_request(
                "messages: at least one message is required",
                Some("messages"),
            ));
        }
        let mut messages = w.messages;
        for (i, m) in messages.iter_mut().enumerate() {
            match m.role.as_str() {
                "system" | "user" | "assistant" => {}
                "developer" => m.role = "system".into(),
                other => {
                    let param = format!("messages[{i}].role");
                    return Err(ApiError::bad_request(
                        format!("{param}: role {other:?} is not supported (system, developer, user or assistant)"),
                        Some(&param),
                    ));
                }
            }
        }
        let temperature = w.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad_request(
                format!("temperature: {temperature} is not between 0 and 2"),
                Some("temperature"),
            ));
        }
        let top_p = w.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_request(
                format!("top_p: {top_p} is not in (0, 1]"),
                Some("top_p"),
            ));
        }
        let n = w.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::bad_request(
                format!("n: {n} is not between 1 and {MAX_N}"),
                Some("n"),
            ));
        }
        let (max_tokens, key) = match (w.max_completion_tokens, w.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        if max_tokens == Some(0) {
            return Err(ApiError::bad_request(format!("{key}: must be at least 1"), Some(key)));
        }
        let top_logprobs = match (w.logprobs, w.top_logprobs) {
            (Some(true), k) => Some(k.unwrap_or(0)),
            (_, Some(_)) => {
                return Err(ApiError::bad_request(
                    "top_logprobs: needs logprobs: true",
                    Some("top_logprobs"),
                ));
            }
            _ => None,
        };
        if let Some(k) = top_logprobs.filter(|k| *k > 20) {
            return Err(ApiError::bad_request(
                format!("top_logprobs: {k} is over 20"),
                Some("top_logprobs"),
            ));
        }
        let stream = (w.stream == Some(true)).then(|| Streaming {
            include_usage: w.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        });
        Ok(ChatCall {
            model: w.model,
            messages,
            temperature,
            top_p,
            max_tokens,
            n,
            stop: w.stop.into_iter().filter(|s| !s.is_empty()).collect(),
            top_logprobs,
            seed: w.seed,
            stream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: serde_json::Value) -> Result<ChatCall, ApiError> {
        ChatCall::parse(body.to_string().as_bytes())
    }

    #[test]
    fn only_model_and_messages_are_required_and_defaults_are_the_apis() {
        let c = parse(serde_json::json!({"model": "solver", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(
            (c.temperature, c.top_p, c.n, c.max_tokens, c.stream),
            (1.0, 1.0, 1, None, None)
        );
        let e = parse(serde_json::json!({"messages": []})).unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("model")));
    }

    #[test]
    fn content_parts_are_joined_and_other_part_types_name_the_field() {
        let c = parse(
            serde_json::json!({"model": "m", "messages": [{"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
        )
        .unwrap();
        assert_eq!(c.messages[0].role, "system");
        assert_eq!(c.messages[1].content, "a\nb");
        let e = parse(serde_json::json!({"model": "m", "messages": [{"role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
        assert!(e.message.contains("image_url"), "{}", e.message);
    }

    #[test]
    fn max_completion_tokens_wins_and_unknown_fields_are_ignored() {
        let c = parse(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 5, "max_completion_tokens": 9, "stop": "\n", "frequency_penalty": 0,
            "stream": true, "stream_options": {"include_usage": true}, "user": "u1"}),
        )
        .unwrap();
        assert_eq!(c.max_tokens, Some(9));
        assert_eq!(c.stop, vec!["\n".to_string()]);
        assert_eq!(c.stream, Some(Streaming { include_usage: true }));
    }

    #[test]
    fn out_of_range_values_are_400s_naming_the_field() {
        for (field, value) in [
            ("temperature", serde_json::json!(3.0)),
            ("top_p", serde_json::json!(0.0)),
            ("n", serde_json::json!(0)),
            ("max_tokens", serde_json::json!(0)),
            ("top_logprobs", serde_json::json!(3)),
        ] {
            let mut body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            body[field] = value;
            let e = parse(body).unwrap_err();
            assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some(field)), "{e:?}");
        }
        let c = parse(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "logprobs": true, "top_logprobs": 5}),
        )
        .unwrap();
        assert_eq!(c.top_logprobs, Some(5));
        let mut over =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": true});
        over["top_logprobs"] = serde_json::json!(21);
        assert_eq!(parse(over).unwrap_err().param.as_deref(), Some("top_logprobs"));
        let e = ChatCall::parse(b"{not json").unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        let e = parse(serde_json::json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }
}
