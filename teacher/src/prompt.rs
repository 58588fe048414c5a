//! Few-shot chain-of-thought prompts, one file per task kind. The built-in
//! files live in `teacher/prompts/`; a user points `prompt_dir` at a copy to
//! edit them. Every prompt ends its rationale with "So the answer is X", which
//! [`stepwise_datasets::answer::extract_answer`] reads back.

use crate::error::TeacherError;
use crate::protocol::Message;
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

/// A loaded set of templates.
#[derive(Debug, Clone)]
pub struct Prompts {
    templates: Vec<(String, String)>,
}

impl Prompts {
    /// The built-in templates, each replaced by `<dir>/<name>.txt` when that file exists.
    pub fn load(dir: Option<&Path>) -> Result<Prompts, TeacherError> {
        let mut templates = Vec::new();
        for (name, text) in BUILTIN {
            let text = match dir.map(|d| d.join(format!("{name}.txt"))) {
                Some(p) if p.exists() => std::fs::read_to_string(&p).map_err(|e| TeacherError::Io(p.clone(), e))?,
                _ => text.to_string(),
            };
            if !text.contains("{input}") {
                return Err(TeacherError::Config(format!(
                    "prompt template {name:?} has no {{input}} placeholder"
                )));
            }
            templates.push((name.to_string(), text));
        }
        Ok(Prompts { templates })
    }

    /// Every template as (name, text): what the teacher is asked with.
    pub fn templates(&self) -> &[(String, String)] {
        &self.templates
    }

    /// The chat messages for `ex`; `hint` adds the gold answer (STaR rationalisation).
    pub fn render(&self, ex: &Example, hint: Option<&str>) -> (String, Vec<Message>) {
        let name = template_for(ex);
        let t = &self
            .templates
            .iter()
            .find(|(n, _)| n == name)
            .expect("every template name is built in")
            .1;
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
        let mut user = t
            .trim_end()
            .replace("{input}", ex.input.trim())
            .replace("{choices}", &choices);
        if let Some(h) = hint {
            user.push_str(&format!(
                " (Hint: the correct answer is {h}. Explain why, step by step.)"
            ));
        }
        (
            name.to_string(),
            vec![Message::new("system", SYSTEM), Message::new("user", user)],
        )
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
