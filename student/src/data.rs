//! What a student learns from: the Distilling Step-by-Step tasks, the
//! baselines' data, tokenised sequences with target masks, and a data order
//! fixed by the seed.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use stepwise_datasets::Example;
use stepwise_datasets::shard::RationaleRow;

use crate::error::Result;
use crate::tokenizer::StudentTokenizer;

/// Which student is trained, and on what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// `[label]` and `[rationale]` tasks from the teacher's curated rows.
    Distill,
    /// Label only, on gold labels (standard fine-tuning).
    LabelGold,
    /// Label only, on the teacher's labels (standard distillation).
    LabelTeacher,
}

impl Variant {
    /// Whether this variant learns from the teacher's rows (and so depends
    /// on their curation).
    pub fn uses_teacher(self) -> bool {
        self != Variant::LabelGold
    }

    pub const ALL: [Variant; 3] = [Variant::Distill, Variant::LabelGold, Variant::LabelTeacher];
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Distill => "distill",
            Variant::LabelGold => "label-gold",
            Variant::LabelTeacher => "label-teacher",
        }
    }
    pub fn parse(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Which of the teacher's rows a student learns from. It chooses training
/// rows, so it belongs to a training run's identity (changing it retrains
/// and asks the teacher nothing).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Curation {
    /// Keep only rows whose answer agrees with gold.
    pub require_gold: bool,
    /// With several samples, keep answers with at least this vote share
    /// (and only the best-voted answer of an example).
    pub min_vote_share: f32,
    /// What the rationale task learns from. (Absent from the identity when
    /// `answer`, so identities from before it existed stay.)
    #[serde(default, skip_serializing_if = "RationaleSource::is_answer")]
    pub rationale_from: RationaleSource,
}

/// What a distilled student's rationale task learns from, when the teacher
/// is a reasoning model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RationaleSource {
    /// The visible step-by-step answer (the only text a plain model gives).
    #[default]
    Answer,
    /// The reasoning trace; rows without one are left out.
    Reasoning,
    /// The trace, then the visible answer; rows without a trace give the answer alone.
    Both,
}

impl RationaleSource {
    pub fn is_answer(&self) -> bool {
        *self == RationaleSource::Answer
    }

    /// The rationale `row` teaches from this source, if it has one.
    pub fn text(self, row: &RationaleRow) -> Option<String> {
        let trace = row.reasoning.as_deref().map(str::trim).filter(|t| !t.is_empty());
        match (self, trace) {
            (RationaleSource::Answer, _) => Some(row.rationale.clone()),
            (RationaleSource::Reasoning, t) => t.map(String::from),
            (RationaleSource::Both, Some(t)) => Some(format!("{t}\n\n{}", row.rationale)),
            (RationaleSource::Both, None) => Some(row.rationale.clone()),
        }
    }
}

impl Default for Curation {
    fn default() -> Self {
        Curation {
            require_gold: true,
            min_vote_share: 0.0,
            rationale_from: RationaleSource::Answer,
        }
    }
}

impl Curation {
    /// The kept rows, sorted by (example, sample), each with the rationale
    /// of [`Curation::rationale_from`] in `rationale`: shard order follows
    /// request completion, and nothing downstream may depend on it.
    pub fn select(&self, rows: &[RationaleRow]) -> Vec<RationaleRow> {
        let mut best: std::collections::HashMap<&str, f32> = std::collections::HashMap::new();
        for r in rows {
            let e = best.entry(r.example_id.as_str()).or_insert(0.0);
            *e = e.max(r.vote_share);
        }
        let mut kept: Vec<RationaleRow> = rows
            .iter()
            .filter(|r| r.teacher_label.is_some())
            .filter(|r| !self.require_gold || r.agrees_with_gold == Some(true))
            .filter(|r| {
                r.rationalized || (r.vote_share >= self.min_vote_share && r.vote_share >= best[r.example_id.as_str()])
            })
            .filter_map(|r| {
                let rationale = self.rationale_from.text(r)?;
                Some(RationaleRow { rationale, ..r.clone() })
            })
            .collect();
        kept.sort_by(|a, b| (&a.example_id, a.sample_index).cmp(&(&b.example_id, b.sample_index)));
        kept
    }
}

/// One training unit: an input with its label target and, for the distilled
/// variant, a rationale target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyExample {
    pub id: String,
    pub input: String,
    pub label: String,
    pub rationale: Option<String>,
}

/// The task a sequence trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Label,
    Rationale,
}

/// The prompt the student is given for `task`; generation uses the same text.
pub fn prompt(task: Task, input: &str) -> String {
    match task {
        Task::Label => format!("[label] {input}\nAnswer:"),
        Task::Rationale => format!("[rationale] {input}\nRationale:"),
    }
}

/// An example's text as the student sees it (choices listed for multiple choice).
pub fn input_text(input: &str, choices: Option<&[String]>) -> String {
    match choices {
        Some(cs) if !cs.is_empty() => {
            let opts: Vec<String> = cs
                .iter()
                .enumerate()
                .map(|(i, c)| format!("({}) {c}", stepwise_datasets::example::choice_letter(i)))
                .collect();
            format!("{input}\nOptions: {}", opts.join(" "))
        }
        _ => input.to_string(),
    }
}

/// Builds the training set of `variant`. `rows` are the curated teacher rows
/// (every sample kept, as the paper trains on all kept rationales); `gold` the
/// training examples with gold labels.
pub fn study_examples(variant: Variant, rows: &[RationaleRow], gold: &[Example]) -> Vec<StudyExample> {
    match variant {
        Variant::LabelGold => gold
            .iter()
            .map(|e| StudyExample {
                id: e.id.clone(),
                input: input_text(&e.input, e.choices.as_deref()),
                label: e.label.clone(),
                rationale: None,
            })
            .collect(),
        Variant::Distill | Variant::LabelTeacher => {
            // Sorted by (id, sample) so the set does not depend on shard order.
            let mut by_key: BTreeMap<(&str, u32), &RationaleRow> = BTreeMap::new();
            for r in rows {
                by_key.insert((r.example_id.as_str(), r.sample_index), r);
            }
            let mut out = Vec::new();
            let mut seen_label = std::collections::HashSet::new();
            for r in by_key.values() {
                let Some(label) = &r.teacher_label else { continue };
                let input = input_text(&r.input, r.choices.as_deref());
                if variant == Variant::LabelTeacher {
                    // One label per example: repeated samples would only weight it.
                    if !seen_label.insert(r.example_id.as_str()) {
                        continue;
                    }
                }
                out.push(StudyExample {
                    id: r.example_id.clone(),
                    input,
                    label: label.clone(),
                    rationale: (variant == Variant::Distill).then(|| r.rationale.clone()),
                });
            }
            out
        }
    }
}

/// A tokenised training sequence: `ids` = prompt + target + end, and the
/// index where the target starts (loss covers target tokens only).
#[derive(Debug, Clone)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub target_start: usize,
    pub task: Task,
}

/// Tokenises both tasks of each example, truncating from the prompt's left so
/// the target always survives `max_len`.
pub fn tokenize(examples: &[StudyExample], tok: &StudentTokenizer, max_len: usize) -> Result<Vec<Vec<Sequence>>> {
    let one = |task: Task, input: &str, target: &str| -> Result<Sequence> {
        let mut p = tok.encode(&prompt(task, input))?;
        let mut t = tok.encode(&format!(" {target}"))?;
        t.push(tok.eos_id);
        t.truncate(max_len.saturating_sub(8));
        let room = max_len - t.len();
        if p.len() > room {
            p.drain(..p.len() - room);
        }
        let target_start = p.len();
        p.extend(t);
        Ok(Sequence {
            ids: p,
            target_start,
            task,
        })
    };
    examples
        .iter()
        .map(|e| {
            let mut seqs = vec![one(Task::Label, &e.input, &e.label)?];
            if let Some(r) = &e.rationale {
                seqs.push(one(Task::Rationale, &e.input, r)?);
            }
            Ok(seqs)
        })
        .collect()
}

/// The order examples are visited in: epoch `e` is a permutation drawn from
/// (seed, e), so the example at any global position is known without
/// replaying earlier steps (which makes resume exact).
pub struct DataOrder {
    n: usize,
    seed: u64,
    cache: Option<(u64, Vec<usize>)>,
}

impl DataOrder {
    pub fn new(n: usize, seed: u64) -> DataOrder {
        DataOrder { n, seed, cache: None }
    }

    /// The example index at global position `pos` (epoch = pos / n).
    pub fn at(&mut self, pos: u64) -> usize {
        let epoch = pos / self.n as u64;
        if self.cache.as_ref().map(|c| c.0) != Some(epoch) {
            let mut perm: Vec<usize> = (0..self.n).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            perm.shuffle(&mut rng);
            self.cache = Some((epoch, perm));
        }
        self.cache.as_ref().expect("just set").1[(pos % self.n as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, rationale: &str, reasoning: Option<&str>) -> RationaleRow {
        RationaleRow {
            example_id: id.into(),
            task: "arith".into(),
            split: Some("train".into()),
            input: "q".into(),
            choices: None,
            gold_label: Some("4".into()),
            teacher_label: Some("4".into()),
            rationale: rationale.into(),
            sample_index: 0,
            vote_share: 1.0,
            agrees_with_gold: Some(true),
            rationalized: false,
            teacher_model: "m".into(),
            prompt_template: "arithmetic".into(),
            prompt_hash: "h".into(),
            temperature: 0.0,
            max_tokens: 64,
            seed: None,
            prompt_tokens: 10,
            completion_tokens: 10,
            latency_ms: 1,
            finish_reason: "stop".into(),
            created_at: 0,
            raw_completion: None,
            top_logprobs: None,
            reasoning: reasoning.map(String::from),
            reasoning_tokens: reasoning.map(|_| 3),
        }
    }

    #[test]
    fn the_rationale_task_learns_from_the_source_the_config_names() {
        let rows = [
            row("a", "So the answer is 4.", Some("2 + 2 = 4")),
            row("b", "2 + 2 = 4. So the answer is 4.", None),
        ];
        let with = |from| {
            Curation {
                rationale_from: from,
                ..Default::default()
            }
            .select(&rows)
            .into_iter()
            .map(|r| (r.example_id, r.rationale))
            .collect::<Vec<_>>()
        };
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            with(RationaleSource::Answer),
            [s("a", "So the answer is 4."), s("b", "2 + 2 = 4. So the answer is 4.")]
        );
        assert_eq!(
            with(RationaleSource::Reasoning),
            [s("a", "2 + 2 = 4")],
            "a row with no trace is left out"
        );
        assert_eq!(
            with(RationaleSource::Both),
            [
                s("a", "2 + 2 = 4\n\nSo the answer is 4."),
                s("b", "2 + 2 = 4. So the answer is 4.")
            ]
        );
        // The default source leaves a training run's identity as it was.
        let id = serde_json::to_string(&Curation::default()).unwrap();
        assert!(!id.contains("rationale_from"), "{id}");
    }
}
