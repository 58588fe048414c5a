//! Baselines that know nothing of the task: the majority answer and a
//! uniform guess. With the untrained student they make the verdict's floor.

use std::collections::{BTreeMap, HashMap, HashSet};
use stepwise_datasets::answer::labels_match;
use stepwise_datasets::{Example, LabelKind};

use crate::model_id::ModelId;
use crate::stages::eval::{Prediction, split_name};

/// Predictions of the majority-answer baseline: the most common training label
/// of the example's task, always (of all training labels when its task has none
/// in training, as a held-out probe does).
pub fn majority_predictions(train: &[Example], tests: &[Example]) -> Vec<Prediction> {
    let mut counts: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for e in train {
        for task in [e.task.as_str(), ""] {
            *counts.entry(task).or_default().entry(e.label.as_str()).or_default() += 1;
        }
    }
    let top = |task: &str| {
        counts
            .get(task)
            .or_else(|| counts.get(""))
            .and_then(|c| c.iter().max_by_key(|(l, c)| (**c, std::cmp::Reverse(**l))))
            .map(|(l, _)| l.to_string())
            .unwrap_or_default()
    };
    tests
        .iter()
        .map(|e| {
            let top = top(&e.task);
            Prediction {
                model: ModelId::Majority,
                split: split_name(e),
                example_id: e.id.clone(),
                input: e.input.clone(),
                gold: e.label.clone(),
                correct: labels_match(e.label_kind, &top, &e.label, e.choices.as_deref()),
                prediction: top,
                rationale: None,
            }
        })
        .collect()
}

/// One test example's chance of being answered right by a uniform guess.
#[derive(Debug, Clone, PartialEq)]
pub struct ChanceScore {
    pub split: String,
    pub example_id: String,
    pub p: f64,
}

/// The chance baseline: 1/(number of choices) for multiple choice, 1/(number of
/// classes the task uses, at least 2) for class labels; splits whose answers are
/// numbers or free text (nothing to guess among) get none. It is the floor for
/// a probe whose answers look nothing like the training labels (MMLU letters
/// after yes/no training), where the majority answer scores 0 and would make a
/// student that guesses letters look knowledgeable.
pub fn chance_scores(train: &[Example], tests: &[Example]) -> Vec<ChanceScore> {
    let mut classes: HashMap<&str, HashSet<String>> = HashMap::new();
    for e in train.iter().chain(tests).filter(|e| e.label_kind == LabelKind::Class) {
        classes
            .entry(e.task.as_str())
            .or_default()
            .insert(e.label.trim().to_lowercase());
    }
    let mut out: Vec<ChanceScore> = tests
        .iter()
        .map(|e| {
            let p = match e.label_kind {
                LabelKind::Choice => e
                    .choices
                    .as_ref()
                    .filter(|c| !c.is_empty())
                    .map_or(0.0, |c| 1.0 / c.len() as f64),
                LabelKind::Class => 1.0 / classes.get(e.task.as_str()).map_or(2, |c| c.len().max(2)) as f64,
                LabelKind::Number | LabelKind::Text => 0.0,
            };
            ChanceScore {
                split: split_name(e),
                example_id: e.id.clone(),
                p,
            }
        })
        .collect();
    let guessable: HashSet<String> = out.iter().filter(|c| c.p > 0.0).map(|c| c.split.clone()).collect();
    out.retain(|c| guessable.contains(&c.split));
    out
}
