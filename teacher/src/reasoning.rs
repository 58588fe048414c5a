//! A reasoning model's chain of thought, apart from its visible answer.
//! Servers return it three ways: in `message.reasoning_content` (DeepSeek,
//! older vLLM), in `message.reasoning` (current vLLM, OpenRouter), or
//! inline between `<think>` and `</think>` in `content` (llama.cpp and
//! vLLM without a reasoning parser) — sometimes with no opening tag, when
//! the chat template already opened the block and the completion starts
//! inside it. The visible answer is what the answer is read from.

use crate::protocol::Message;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// The chain of thought (if any) and the visible answer of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Split<'a> {
    pub reasoning: Option<String>,
    pub visible: &'a str,
}

/// Splits `m`: a reasoning field wins; otherwise an inline `<think>` block
/// is taken out of the content. A block never closed (the answer ran out
/// of tokens while thinking) is all reasoning and no answer.
pub fn split(m: &Message) -> Split<'_> {
    let content = m.content.as_str();
    if let Some(r) = m.reasoning_field() {
        // A server may also echo the block inline; the answer is after it.
        let visible = content.find(CLOSE).map_or(content, |i| &content[i + CLOSE.len()..]);
        return Split {
            reasoning: Some(r.trim().to_string()),
            visible: visible.trim(),
        };
    }
    let trimmed = content.trim_start();
    match (trimmed.strip_prefix(OPEN), content.find(CLOSE)) {
        (_, Some(end)) => {
            let before = &content[..end];
            let thought = before.find(OPEN).map_or(before, |i| &before[i + OPEN.len()..]);
            Split {
                reasoning: Some(thought.trim().to_string()).filter(|t| !t.is_empty()),
                visible: content[end + CLOSE.len()..].trim(),
            }
        }
        (Some(rest), None) => Split {
            reasoning: Some(rest.trim().to_string()).filter(|t| !t.is_empty()),
            visible: "",
        },
        (None, None) => Split {
            reasoning: None,
            visible: content.trim(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(content: &str, rc: Option<&str>, r: Option<&str>) -> Message {
        let mut m = Message::new("assistant", content);
        m.reasoning_content = rc.map(String::from);
        m.reasoning = r.map(String::from);
        m
    }

    #[test]
    fn each_of_the_four_forms_gives_the_thought_and_the_visible_answer() {
        let want = |s: Split, r: Option<&str>, v: &str| {
            assert_eq!(s.reasoning.as_deref(), r);
            assert_eq!(s.visible, v);
        };
        want(
            split(&msg("So the answer is 4.", Some("2 + 2 = 4"), None)),
            Some("2 + 2 = 4"),
            "So the answer is 4.",
        );
        want(
            split(&msg("So the answer is 4.", None, Some("2 + 2 = 4"))),
            Some("2 + 2 = 4"),
            "So the answer is 4.",
        );
        want(
            split(&msg("<think>\n2 + 2 = 4\n</think>\n\nSo the answer is 4.", None, None)),
            Some("2 + 2 = 4"),
            "So the answer is 4.",
        );
        // The template opened the block: the completion starts inside it.
        want(
            split(&msg("2 + 2 = 4\n</think>\nSo the answer is 4.", None, None)),
            Some("2 + 2 = 4"),
            "So the answer is 4.",
        );
        // Out of tokens while thinking: no answer to read.
        want(split(&msg("<think>\n2 + 2 is", None, None)), Some("2 + 2 is"), "");
        // No reasoning at all, and an empty field is none.
        want(
            split(&msg(" So the answer is 4.\n", Some(" "), None)),
            None,
            "So the answer is 4.",
        );
        // Both fields, as some servers fill them: the first.
        want(
            split(&msg("<think>x</think>So the answer is 4.", Some("a"), Some("a"))),
            Some("a"),
            "So the answer is 4.",
        );
    }
}
