//! The normalised example every stage works on.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// How a gold label is compared with a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    /// A number, compared with a tolerance ("1,200" == "1200.0").
    Number,
    /// A choice letter among `choices` ("A", "B", ...).
    Choice,
    /// A class name from a closed set (NLI labels, yes/no).
    Class,
    /// Free text, compared after normalisation.
    Text,
}

/// Which part of the data an example belongs to.
///
/// `TestOod` holds out-of-distribution examples (for the built-in task, the
/// held-out template family): they are only ever evaluated on, like `Test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    Test,
    TestOod,
}

impl Split {
    pub const ALL: [Split; 4] = [Split::Train, Split::Val, Split::Test, Split::TestOod];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
            Split::TestOod => "test_ood",
        }
    }

    /// True for the splits that must never be trained on or used for model selection.
    pub fn is_held_out(self) -> bool {
        matches!(self, Split::Test | Split::TestOod)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "valid" | "validation" | "dev" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            "test_ood" | "ood" => Ok(Split::TestOod),
            other => Err(format!(
                "unknown split {other:?} (expected train, val, test or test_ood)"
            )),
        }
    }
}

impl LabelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelKind::Number => "number",
            LabelKind::Choice => "choice",
            LabelKind::Class => "class",
            LabelKind::Text => "text",
        }
    }
}

impl FromStr for LabelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "number" => Ok(LabelKind::Number),
            "choice" => Ok(LabelKind::Choice),
            "class" => Ok(LabelKind::Class),
            "text" => Ok(LabelKind::Text),
            other => Err(format!(
                "unknown label kind {other:?} (expected number, choice, class or text)"
            )),
        }
    }
}

/// One task instance, whatever format it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Stable id: a hash of the source name and the content, so the same
    /// example gets the same id on every machine and every run.
    pub id: String,
    /// Task name, e.g. `arith`, `gsm8k`, `cqa`, `anli`.
    pub task: String,
    /// The text the model sees (question, or premise + hypothesis).
    pub input: String,
    /// Answer options for multiple-choice tasks, in order (label "A" is the first).
    pub choices: Option<Vec<String>>,
    /// The gold label, as a string.
    pub label: String,
    pub label_kind: LabelKind,
    /// Assigned by [`crate::split::assign_splits`]; `None` until then unless the source fixed it.
    pub split: Option<Split>,
    /// Where it came from: a dataset name, or `arith:<family>` for the built-in task.
    pub source: String,
    /// A human-written explanation or solution shipped with the data (GSM8K
    /// solutions, e-SNLI explanations, StrategyQA facts), if any.
    pub reference_rationale: Option<String>,
}

impl Example {
    /// Builds an example and derives its stable id from `source` and the content.
    pub fn new(
        task: &str,
        source: &str,
        input: String,
        choices: Option<Vec<String>>,
        label: String,
        label_kind: LabelKind,
    ) -> Self {
        let id = stable_id(source, &input, choices.as_deref(), &label);
        Example {
            id,
            task: task.to_string(),
            input,
            choices,
            label,
            label_kind,
            split: None,
            source: source.to_string(),
            reference_rationale: None,
        }
    }

    pub fn with_rationale(mut self, rationale: Option<String>) -> Self {
        self.reference_rationale = rationale.filter(|r| !r.trim().is_empty());
        self
    }

    pub fn with_split(mut self, split: Split) -> Self {
        self.split = Some(split);
        self
    }
}

/// 16 hex characters of SHA-256 over the source name and the content.
pub fn stable_id(source: &str, input: &str, choices: Option<&[String]>, label: &str) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0u8]);
    h.update(input.as_bytes());
    h.update([0u8]);
    if let Some(cs) = choices {
        for c in cs {
            h.update(c.as_bytes());
            h.update([1u8]);
        }
    }
    h.update([0u8]);
    h.update(label.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// The letter of the `i`-th choice: 0 -> "A".
pub fn choice_letter(i: usize) -> String {
    char::from(b'A' + (i as u8 % 26)).to_string()
}
