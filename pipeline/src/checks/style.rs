//! Style, faithfulness and contamination: does the student write like the
//! teacher, does its answer follow from its own rationale, and did any test
//! input leak into training?

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use stepwise_datasets::Example;
use stepwise_datasets::answer::{extract_answer, labels_match};
use stepwise_datasets::arith::check_solution;
use stepwise_datasets::shard::RationaleRow;

use crate::model_id::ModelId;
use crate::stages::eval::Prediction;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Style {
    pub n: usize,
    /// Share of rationales in the teacher's format (they state "the answer is ...").
    pub format_adherence: f64,
    /// Mean unigram F1 between the model's and the teacher's rationale on the same input.
    pub unigram_overlap: f64,
    /// Pearson correlation of the two rationales' lengths in words.
    pub length_correlation: f64,
    /// Mean length of the model's rationales over the teacher's.
    pub length_ratio: f64,
}

impl Style {
    /// Converged on the teacher's style: its format, much of its wording, its length.
    pub fn converged(&self) -> bool {
        self.format_adherence >= 0.8 && self.unigram_overlap >= 0.5 && (0.67..=1.5).contains(&self.length_ratio)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Faithfulness {
    pub n: usize,
    /// Share whose answer (to the label prompt) equals the conclusion of its own rationale.
    pub answer_follows_rationale: f64,
    /// Arithmetic: share whose every step re-evaluates correctly, chains, and ends in the stated answer.
    pub steps_valid: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Contamination {
    pub test_inputs: usize,
    /// Test inputs that appear verbatim among training inputs.
    pub exact_duplicates: usize,
    /// Test examples whose id is among the rows trained on (must be 0).
    pub leaked_ids: usize,
    /// Share of test inputs sharing at least one word 13-gram with training inputs or rationales.
    pub ngram13_overlap: f64,
}

pub(crate) fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

pub(crate) fn unigram_f1(a: &str, b: &str) -> f64 {
    let (wa, wb) = (words(a), words(b));
    if wa.is_empty() || wb.is_empty() {
        return 0.0;
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &wb {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0;
    for w in &wa {
        if let Some(c) = counts.get_mut(w.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let p = common as f64 / wa.len() as f64;
    let r = common as f64 / wb.len() as f64;
    2.0 * p * r / (p + r)
}

pub(crate) fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Style of `model`'s rationales against the teacher's on the same inputs.
pub fn style(preds: &[Prediction], model: ModelId) -> Option<Style> {
    let teacher: HashMap<(&str, &str), &str> = preds
        .iter()
        .filter(|p| p.model == ModelId::Teacher)
        .filter_map(|p| Some(((p.split.as_str(), p.example_id.as_str()), p.rationale.as_deref()?)))
        .collect();
    let pairs: Vec<(&str, &str)> = preds
        .iter()
        .filter(|p| p.model == model)
        .filter_map(|p| {
            Some((
                p.rationale.as_deref()?,
                *teacher.get(&(p.split.as_str(), p.example_id.as_str()))?,
            ))
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let lens_m: Vec<f64> = pairs.iter().map(|(m, _)| words(m).len() as f64).collect();
    let lens_t: Vec<f64> = pairs.iter().map(|(_, t)| words(t).len() as f64).collect();
    Some(Style {
        n: pairs.len(),
        format_adherence: pairs.iter().filter(|(m, _)| extract_answer(m).is_some()).count() as f64 / n,
        unigram_overlap: pairs.iter().map(|(m, t)| unigram_f1(m, t)).sum::<f64>() / n,
        length_correlation: pearson(&lens_m, &lens_t),
        length_ratio: lens_m.iter().sum::<f64>() / lens_t.iter().sum::<f64>().max(1.0),
    })
}

/// Does the model's answer follow from its own rationale?
pub fn faithfulness(preds: &[Prediction], model: ModelId, tests: &HashMap<String, &Example>) -> Option<Faithfulness> {
    let with: Vec<&Prediction> = preds
        .iter()
        .filter(|p| p.model == model && p.rationale.is_some())
        .collect();
    if with.is_empty() {
        return None;
    }
    let n = with.len() as f64;
    let follows = with
        .iter()
        .filter(|p| {
            let e = tests.get(&p.example_id);
            match (extract_answer(p.rationale.as_deref().unwrap_or("")), e) {
                (Some(a), Some(e)) => labels_match(e.label_kind, &p.prediction, &a, e.choices.as_deref()),
                _ => false,
            }
        })
        .count() as f64;
    let arith = with.iter().all(|p| {
        tests
            .get(&p.example_id)
            .is_some_and(|e| e.task == stepwise_datasets::arith::TASK)
    });
    let steps_valid = arith.then(|| {
        with.iter()
            .filter(|p| check_solution(p.rationale.as_deref().unwrap_or("")).is_ok())
            .count() as f64
            / n
    });
    Some(Faithfulness {
        n: with.len(),
        answer_follows_rationale: follows / n,
        steps_valid,
    })
}

fn ngrams(text: &str, k: usize) -> Vec<String> {
    let w = words(text);
    if w.len() < k {
        vec![]
    } else {
        w.windows(k).map(|x| x.join(" ")).collect()
    }
}

pub fn contamination(train: &[Example], trained_rows: &[RationaleRow], tests: &[Example]) -> Contamination {
    let inputs: HashSet<&str> = train.iter().map(|e| e.input.as_str()).collect();
    let row_ids: HashSet<&str> = trained_rows.iter().map(|r| r.example_id.as_str()).collect();
    let mut grams: HashSet<String> = HashSet::new();
    for e in train {
        grams.extend(ngrams(&e.input, 13));
    }
    for r in trained_rows {
        grams.extend(ngrams(&r.rationale, 13));
    }
    let overlap = tests
        .iter()
        .filter(|e| ngrams(&e.input, 13).iter().any(|g| grams.contains(g)))
        .count();
    Contamination {
        test_inputs: tests.len(),
        exact_duplicates: tests.iter().filter(|e| inputs.contains(e.input.as_str())).count(),
        leaked_ids: tests.iter().filter(|e| row_ids.contains(e.id.as_str())).count(),
        ngram13_overlap: overlap as f64 / tests.len().max(1) as f64,
    }
}
