//! Few-shot chain-of-thought prompts, one file per task kind. The built-in
//! files live in `teacher/prompts/`; a user points `prompt_dir` at a copy to
//! edit them. Every prompt ends its rationale with "So the answer is X", which
//! [`stepwise_datasets::answer::extract_answer`] reads back.
//!
//! A template is written once, as `Q:`/`A:` text, and sent in one of two
//! [`PromptStyle`]s: as chat turns (the instruction in the system message,
//! each example a user question and an assistant answer, then the question),
//! which instruct models follow, or as the plain text in one user message,
//! for servers that continue text rather than apply a chat template.

use crate::error::TeacherError;
use crate::protocol::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use stepwise_datasets::example::choice_letter;
use stepwise_datasets::{Example, LabelKind};

pub const SYSTEM: &str = "You are a careful teacher. Reason step by step and end with \"So the answer is X.\"";

const BUILTIN: &[(&str, &str)] = &[
    ("arithmetic", include_str!("../prompts/arithmetic.txt")),
    ("multiple_choice", include_str!("../prompts/multiple_choice.txt")),
    ("nli", include_str!("../prompts/nli.txt")),
    ("yes_no", include_str!("../prompts/yes_no.txt")),
    ("open", include_str!("../prompts/open.txt")),
];

/// The template name for an example: by label kind and classes.
pub fn template_for(ex: &Example) -> &'static str {
    match ex.label_kind {
        LabelKind::Number => "arithmetic",
        LabelKind::Choice => "multiple_choice",
        LabelKind::Class if ex.choices.as_ref().is_some_and(|c| c.iter().any(|x| x == "entailment")) => "nli",
        LabelKind::Class => "yes_no",
        LabelKind::Text => "open",
    }
}

/// How a template is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptStyle {
    /// Few-shot examples as user/assistant turns.
    #[default]
    Chat,
    /// The template's text as one user message.
    Plain,
}

impl PromptStyle {
    pub const ALL: [PromptStyle; 2] = [PromptStyle::Chat, PromptStyle::Plain];

    pub fn as_str(self) -> &'static str {
        match self {
            PromptStyle::Chat => "chat",
            PromptStyle::Plain => "plain",
        }
    }
}

/// A template read as turns: the instruction, the worked examples, and the
/// question (with `{input}` and maybe `{choices}`).
#[derive(Debug, Clone, PartialEq)]
struct Turns {
    instruction: String,
    shots: Vec<(String, String)>,
    question: String,
}

/// A `Q: ...` line's question without its label.
fn unlabel(q: &str) -> &str {
    q.strip_prefix("Q:").map(str::trim_start).unwrap_or(q)
}

/// Reads a template's blocks (separated by blank lines): those before the
/// first example are the instruction; an example is a question and a line
/// starting `A:` with its answer; the block with `{input}` is the question,
/// its `A:` left empty.
fn turns(name: &str, text: &str) -> Result<Turns, String> {
    let text = text.replace("\r\n", "\n");
    let blocks: Vec<&str> = text.split("\n\n").map(str::trim).filter(|b| !b.is_empty()).collect();
    let mut instruction = Vec::new();
    let mut shots = Vec::new();
    let mut question = None;
    for b in blocks {
        let lines: Vec<&str> = b.lines().collect();
        let a_at = lines.iter().position(|l| l.trim_start().starts_with("A:"));
        if b.contains("{input}") {
            let q_lines = &lines[..a_at.unwrap_or(lines.len())];
            if a_at.is_some_and(|k| {
                lines[k..]
                    .iter()
                    .any(|l| !l.trim().trim_start_matches("A:").trim().is_empty())
            }) {
                return Err(format!(
                    "template {name:?}: the {{input}} block's A: must be empty (the teacher writes it)"
                ));
            }
            question = Some(unlabel(&q_lines.join("\n")).to_string());
            continue;
        }
        match (a_at, question.is_some()) {
            (_, true) => return Err(format!("template {name:?}: text after the {{input}} block")),
            (None, false) if shots.is_empty() => instruction.push(b.to_string()),
            (None, false) => {
                return Err(format!(
                    "template {name:?}: a block without an A: line between the examples: {:?}",
                    b.chars().take(60).collect::<String>()
                ));
            }
            (Some(k), false) => {
                let q = unlabel(&lines[..k].join("\n")).to_string();
                let mut a = vec![lines[k].trim_start().trim_start_matches("A:").trim_start()];
                a.extend(&lines[k + 1..]);
                let a = a.join("\n").trim().to_string();
                if q.is_empty() || a.is_empty() {
                    return Err(format!("template {name:?}: an example needs a question and an answer"));
                }
                shots.push((q, a));
            }
        }
    }
    Ok(Turns {
        instruction: instruction.join("\n\n"),
        shots,
        question: question.ok_or_else(|| format!("template {name:?} has no {{input}} placeholder"))?,
    })
}

/// A loaded set of templates.
#[derive(Debug, Clone)]
pub struct Prompts {
    templates: Vec<(String, String)>,
    style: PromptStyle,
    /// Each template as turns (chat style only), in `templates`' order.
    turns: Vec<Option<Turns>>,
}

impl Prompts {
    /// The built-in templates, each replaced by `<dir>/<name>.txt` when
    /// that file exists. In chat style every template must read as turns;
    /// the error names the file.
    pub fn load(dir: Option<&Path>, style: PromptStyle) -> Result<Prompts, TeacherError> {
        let mut templates = Vec::new();
        let mut all_turns = Vec::new();
        for (name, text) in BUILTIN {
            let (text, from) = match dir.map(|d| d.join(format!("{name}.txt"))) {
                Some(p) if p.exists() => (
                    std::fs::read_to_string(&p).map_err(|e| TeacherError::Io(p.clone(), e))?,
                    p.display().to_string(),
                ),
                _ => (text.to_string(), format!("built-in {name}.txt")),
            };
            if !text.contains("{input}") {
                return Err(TeacherError::Config(format!(
                    "prompt template {name:?} ({from}) has no {{input}} placeholder"
                )));
            }
            let t = match style {
                PromptStyle::Chat => Some(turns(name, &text).map_err(|e| {
                    TeacherError::Config(format!(
                        "{from}: {e}; write it as an instruction, Q:/A: examples and a last `Q: {{input}}` / `A:`, or set teacher.prompt_style = \"plain\""
                    ))
                })?),
                PromptStyle::Plain => None,
            };
            templates.push((name.to_string(), text));
            all_turns.push(t);
        }
        Ok(Prompts {
            templates,
            style,
            turns: all_turns,
        })
    }

    /// Every template as (name, text): what the teacher is asked with.
    pub fn templates(&self) -> &[(String, String)] {
        &self.templates
    }

    pub fn style(&self) -> PromptStyle {
        self.style
    }

    /// The mean length, in characters, of the worked examples' answers of
    /// the template `ex` is asked with: what a teacher that follows them
    /// writes (a time estimate's guess at answer length).
    pub fn example_answer_chars(&self, ex: &Example) -> Option<usize> {
        let name = template_for(ex);
        let k = self.templates.iter().position(|(n, _)| n == name)?;
        let shots = match &self.turns[k] {
            Some(t) => t.shots.clone(),
            None => turns(name, &self.templates[k].1).ok()?.shots,
        };
        (!shots.is_empty()).then(|| shots.iter().map(|(_, a)| a.len()).sum::<usize>() / shots.len())
    }

    /// The chat messages for `ex`; `hint` adds the gold answer (STaR rationalisation).
    pub fn render(&self, ex: &Example, hint: Option<&str>) -> (String, Vec<Message>) {
        let name = template_for(ex);
        let k = self
            .templates
            .iter()
            .position(|(n, _)| n == name)
            .expect("every template name is built in");
        let t = &self.templates[k].1;
        let choices = ex
            .choices
            .as_ref()
            .map(|cs| {
                cs.iter()
                    .enumerate()
                    .map(|(i, c)| format!("({}) {c}", choice_letter(i)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let fill = |t: &str| t.replace("{input}", ex.input.trim()).replace("{choices}", &choices);
        let hinted = |mut user: String| {
            if let Some(h) = hint {
                user.push_str(&format!(
                    " (Hint: the correct answer is {h}. Explain why, step by step.)"
                ));
            }
            user
        };
        let messages = match &self.turns[k] {
            None => vec![
                Message::new("system", SYSTEM),
                Message::new("user", hinted(fill(t.trim_end()))),
            ],
            Some(turns) => {
                let system = if turns.instruction.is_empty() {
                    SYSTEM.to_string()
                } else {
                    format!("{SYSTEM} {}", turns.instruction)
                };
                let mut m = vec![Message::new("system", system)];
                for (q, a) in &turns.shots {
                    m.push(Message::new("user", q.clone()));
                    m.push(Message::new("assistant", a.clone()));
                }
                m.push(Message::new("user", hinted(fill(&turns.question))));
                m
            }
        };
        (name.to_string(), messages)
    }
}

/// A short hash of a rendered prompt, stored with each row for provenance.
pub fn prompt_hash(messages: &[Message]) -> String {
    let mut h = Sha256::new();
    for m in messages {
        h.update(m.role.as_bytes());
        h.update([0]);
        h.update(m.content.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepwise_datasets::arith::{ArithSpec, generate};

    #[test]
    fn every_built_in_template_reads_as_chat_turns() {
        for (name, text) in BUILTIN {
            let t = turns(name, text).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !t.instruction.is_empty() && !t.shots.is_empty() || *name == "open",
                "{name}: {t:?}"
            );
            assert!(
                t.question.contains("{input}") && !t.question.starts_with("Q:"),
                "{name}: {t:?}"
            );
            for (q, a) in &t.shots {
                assert!(
                    !q.starts_with("Q:") && !a.starts_with("A:") && a.contains("So the answer is"),
                    "{name}: {q:?} {a:?}"
                );
            }
        }
    }

    #[test]
    fn chat_style_sends_examples_as_turns_and_plain_style_as_one_message() {
        let ex = &generate(&ArithSpec {
            seed: 1,
            in_distribution: 1,
            out_of_distribution: 0,
            ..Default::default()
        })[0];
        let chat = Prompts::load(None, PromptStyle::Chat).unwrap();
        let (_, m) = chat.render(ex, None);
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user", "assistant", "user"]);
        assert!(
            m[0].content.starts_with(SYSTEM) && m[0].content.contains("a op b = c"),
            "{}",
            m[0].content
        );
        assert!(m[1].content.starts_with("Ann has 12 apples"), "{}", m[1].content);
        assert!(m[2].content.starts_with("There are 12 apples") && m[2].content.ends_with("So the answer is 14."));
        assert_eq!(m[5].content, ex.input.trim());
        let (_, hinted) = chat.render(ex, Some("7"));
        assert!(
            hinted[5]
                .content
                .ends_with("(Hint: the correct answer is 7. Explain why, step by step.)")
        );

        let plain = Prompts::load(None, PromptStyle::Plain).unwrap();
        let (_, p) = plain.render(ex, None);
        assert_eq!(p.len(), 2);
        assert!(
            p[1].content.starts_with("Solve the problem")
                && p[1].content.ends_with(&format!("Q: {}\nA:", ex.input.trim()))
        );
    }

    #[test]
    fn a_template_that_is_not_turns_is_refused_in_chat_style_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("arithmetic.txt"),
            "Solve it.\n\n{input} -- answer:\n\nThanks!",
        )
        .unwrap();
        let err = Prompts::load(Some(dir.path()), PromptStyle::Chat)
            .unwrap_err()
            .to_string();
        assert!(err.contains("arithmetic.txt") && err.contains("prompt_style"), "{err}");
        Prompts::load(Some(dir.path()), PromptStyle::Plain).unwrap();
    }
}
