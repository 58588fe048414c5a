//! The `gold` teacher: it knows the answer to every question of one set of
//! examples and nothing else. It answers with the example's own reference
//! rationale (where the data ships one: GSM8K solutions, e-SNLI
//! explanations, StrategyQA facts) and its gold label, as "So the answer is
//! X." — a perfect teacher of exactly those facts. It stands in for a
//! knowledgeable model where none can run (tests, an offline first try of a
//! knowledge task) and gives the human-rationale baseline of Distilling
//! Step-by-Step with the pipeline's own machinery.

use super::arith::{instant_output, last_user};
use super::{ChatModel, ModelJob, ModelOutput};
use std::collections::HashMap;
use stepwise_datasets::Example;

/// What the gold teacher says for a question it was not given.
pub const UNKNOWN: &str = "I do not know this one. So the answer is unknown.";

pub struct GoldTeacher {
    /// The trimmed input of each example, to its completion.
    answers: HashMap<String, String>,
    /// Inputs, longest first: the fallback search of a prompt that wraps
    /// the question in more text than the template's chat turn.
    by_length: Vec<String>,
}

impl GoldTeacher {
    /// The teacher of `examples`; of two with the same input, the first.
    pub fn new(examples: &[Example]) -> Self {
        let mut answers = HashMap::new();
        for e in examples {
            answers
                .entry(e.input.trim().to_string())
                .or_insert_with(|| completion(e));
        }
        let mut by_length: Vec<String> = answers.keys().cloned().collect();
        by_length.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        GoldTeacher { answers, by_length }
    }

    /// The completion for a user message: the example whose input it is,
    /// or the question after its last `Q:` (a plain-text prompt), or
    /// failing both the longest input it contains.
    pub fn answer(&self, message: &str) -> &str {
        let m = message.trim();
        let after_q = m.rfind("Q:").map(|i| {
            let q = &m[i + 2..];
            q[..q.rfind("\nA:").unwrap_or(q.len())].trim()
        });
        [Some(m), after_q]
            .into_iter()
            .flatten()
            .find_map(|k| self.answers.get(k))
            .or_else(|| {
                self.by_length
                    .iter()
                    .find(|k| m.contains(k.as_str()))
                    .and_then(|k| self.answers.get(k))
            })
            .map(String::as_str)
            .unwrap_or(UNKNOWN)
    }
}

/// The reference rationale (its own "So the answer is" kept, else added)
/// and the gold label.
fn completion(e: &Example) -> String {
    let conclusion = format!("So the answer is {}.", e.label);
    match e
        .reference_rationale
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        Some(r) if r.contains("So the answer is") => r.to_string(),
        Some(r) => {
            let sep = if r.ends_with(['.', '!', '?']) { " " } else { ". " };
            format!("{r}{sep}{conclusion}")
        }
        None => conclusion,
    }
}

impl ChatModel for GoldTeacher {
    fn name(&self) -> String {
        "gold".into()
    }

    /// Answers the last user message, cut to `max_tokens` (four characters
    /// a token, as `approx_tokens` counts).
    fn complete(&self, jobs: &[ModelJob]) -> Vec<Result<ModelOutput, String>> {
        jobs.iter()
            .map(|job| Ok(instant_output(job, self.answer(last_user(job)).to_string())))
            .collect()
    }

    fn batched(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepwise_datasets::LabelKind;
    use stepwise_datasets::answer::extract_answer;

    fn fact(q: &str, a: &str, why: Option<&str>) -> Example {
        let mut e = Example::new("facts", "test", q.into(), None, a.into(), LabelKind::Text);
        e.reference_rationale = why.map(String::from);
        e
    }

    #[test]
    fn answers_its_own_questions_with_their_rationale_and_gold_label_and_no_others() {
        let t = GoldTeacher::new(&[
            fact(
                "What is the capital of Vorlund?",
                "Quenta",
                Some("Vorlund lies in the north. Its capital is Quenta"),
            ),
            fact("What is the capital of Osk?", "Brill", None),
            fact("What is the capital of Vorlund?", "Other", None),
        ]);
        let a = t.answer("What is the capital of Vorlund?");
        assert_eq!(
            a,
            "Vorlund lies in the north. Its capital is Quenta. So the answer is Quenta."
        );
        assert_eq!(
            extract_answer(a).as_deref(),
            Some("Quenta"),
            "the first of two with one input"
        );
        assert_eq!(t.answer("  What is the capital of Osk?\n"), "So the answer is Brill.");
        // A plain-text few-shot prompt: the question after the last Q:.
        let plain = "Answer briefly.\n\nQ: What is the capital of Norway?\nA: Oslo. So the answer is Oslo.\n\nQ: What is the capital of Osk?\nA:";
        assert_eq!(t.answer(plain), "So the answer is Brill.");
        // Wrapped in other text: the longest input it contains.
        assert_eq!(
            t.answer("Please: What is the capital of Vorlund? Thanks"),
            t.answer("What is the capital of Vorlund?")
        );
        assert_eq!(t.answer("What is the capital of Narnia?"), UNKNOWN);
    }
}
