//! Did the student learn the teacher's knowledge, or only its style?
//! Everything here is computed from the stored predictions, so the checks
//! can be re-run without the models, and nothing here knows about the
//! orchestrator beyond the [`Prediction`] row.
//!
//! - [`stats`]: accuracy intervals and paired differences (bootstrap);
//! - [`baselines`]: the majority answer and chance;
//! - [`style`]: style against the teacher, faithfulness, contamination;
//! - [`verdict`]: the verdict and its reasons.

pub mod baselines;
pub mod stats;
pub mod style;
pub mod verdict;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use stepwise_datasets::Example;
use stepwise_datasets::shard::RationaleRow;

pub use baselines::{ChanceScore, chance_scores, majority_predictions};
pub use stats::{Interval, bootstrap};
pub use style::{Contamination, Faithfulness, Style, contamination, faithfulness, style};
pub use verdict::{Verdict, VerdictKind};

use crate::model_id::ModelId;
use crate::stages::eval::Prediction;
use stats::{paired, score_table, scores_of};
use stepwise_student::data::Variant;
use verdict::verdict;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Score {
    pub model: ModelId,
    pub split: String,
    pub n: usize,
    pub accuracy: Interval,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub scores: Vec<Score>,
    pub gains: Vec<Gain>,
    pub style: BTreeMap<ModelId, Style>,
    pub faithfulness: BTreeMap<ModelId, Faithfulness>,
    pub contamination: Contamination,
    pub verdict: Verdict,
    /// Held-out out-of-distribution verdict, when there is such a split.
    pub verdict_ood: Option<Verdict>,
}

/// Paired differences between two models on one split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gain {
    pub split: String,
    pub model: ModelId,
    pub over: ModelId,
    pub diff: Interval,
}

/// All the checks, and the verdict on `split` for `student`.
#[allow(clippy::too_many_arguments)]
pub fn compute(
    preds_in: &[Prediction],
    train: &[Example],
    trained_rows: &[RationaleRow],
    tests: &[Example],
    students: &[ModelId],
    judged: ModelId,
    samples: usize,
    seed: u64,
) -> Metrics {
    let mut preds = preds_in.to_vec();
    preds.extend(majority_predictions(train, tests));
    let table = score_table(&preds, &chance_scores(train, tests));
    let mut splits: Vec<String> = preds
        .iter()
        .map(|p| p.split.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    splits.sort();
    let mut models: Vec<ModelId> = vec![ModelId::Teacher, ModelId::Majority, ModelId::Chance, ModelId::Base];
    models.extend(students.iter().copied());
    let mut scores = Vec::new();
    for split in &splits {
        for &m in &models {
            let c: Vec<f64> = scores_of(&table, m, split).iter().map(|x| x.1).collect();
            if !c.is_empty() {
                scores.push(Score {
                    model: m,
                    split: split.clone(),
                    n: c.len(),
                    accuracy: bootstrap(&c, None, samples, seed),
                });
            }
        }
    }
    let mut gains = Vec::new();
    for split in &splits {
        for &s in students {
            for over in ModelId::FLOORS {
                if let Some(d) = paired(&table, s, over, split, samples, seed) {
                    gains.push(Gain {
                        split: split.clone(),
                        model: s,
                        over,
                        diff: d,
                    });
                }
            }
        }
        // Distilled against label-only at equal data: at each swept fraction too.
        for &a in students.iter().filter(|s| s.is_distilled()) {
            let sa = a.student().expect("a distilled student");
            for b in [Variant::LabelGold, Variant::LabelTeacher].map(|v| ModelId::Student(sa.with_variant(v))) {
                if let Some(d) = paired(&table, a, b, split, samples, seed) {
                    gains.push(Gain {
                        split: split.clone(),
                        model: a,
                        over: b,
                        diff: d,
                    });
                }
            }
        }
    }
    let test_map: HashMap<String, &Example> = tests.iter().map(|e| (e.id.clone(), e)).collect();
    let mut style_m = BTreeMap::new();
    let mut faith = BTreeMap::new();
    for &m in models.iter().filter(|m| !m.is_computed()) {
        if let Some(s) = style(&preds, m).filter(|_| m != ModelId::Teacher) {
            style_m.insert(m, s);
        }
        if let Some(f) = faithfulness(&preds, m, &test_map) {
            faith.insert(m, f);
        }
    }
    let verdict_on = |split: &str| verdict(&table, &scores, &style_m, judged, split, samples, seed);
    let main_split = if splits.iter().any(|s| s == "test") {
        "test"
    } else {
        splits.first().map(|s| s.as_str()).unwrap_or("test")
    };
    Metrics {
        verdict: verdict_on(main_split),
        verdict_ood: splits.iter().any(|s| s == "test_ood").then(|| verdict_on("test_ood")),
        scores,
        gains,
        style: style_m,
        faithfulness: faith,
        contamination: contamination(train, trained_rows, tests),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use style::{pearson, unigram_f1};

    #[test]
    fn bootstrap_interval_covers_the_mean_and_narrows_with_n() {
        let a: Vec<f64> = (0..100).map(|i| (i % 4 == 0) as u8 as f64).collect();
        let i = bootstrap(&a, None, 1000, 1);
        assert!((i.value - 0.25).abs() < 1e-12 && i.lo < 0.25 && i.hi > 0.25, "{i}");
        let big: Vec<f64> = (0..10_000).map(|i| (i % 4 == 0) as u8 as f64).collect();
        let j = bootstrap(&big, None, 300, 1);
        assert!(j.hi - j.lo < (i.hi - i.lo) / 5.0, "{i} vs {j}");
        let same = bootstrap(&a, Some(&a), 200, 1);
        assert_eq!((same.lo, same.hi), (0.0, 0.0));
    }

    #[test]
    fn unigram_f1_and_pearson() {
        assert!((unigram_f1("a b c", "a b c") - 1.0).abs() < 1e-12);
        assert_eq!(unigram_f1("x y", "a b"), 0.0);
        assert!((pearson(&[1., 2., 3.], &[2., 4., 6.]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1., 2., 3.], &[3., 2., 1.]) + 1.0).abs() < 1e-12);
    }

    use stepwise_datasets::{LabelKind, Split};

    fn yes_no(i: usize, split: Split) -> Example {
        let label = if i % 3 == 0 { "no" } else { "yes" };
        Example::new(
            "strategyqa",
            "sqa",
            format!("q{i}?"),
            None,
            label.into(),
            LabelKind::Class,
        )
        .with_split(split)
    }

    fn lettered(i: usize) -> Example {
        let choices = ["w", "x", "y", "z"].map(|c| format!("{c}{i}")).to_vec();
        let label = ["A", "B", "C", "D"][i % 4].to_string();
        Example::new(
            "mmlu",
            "mmlu",
            format!("m{i}?"),
            Some(choices),
            label,
            LabelKind::Choice,
        )
        .with_split(Split::TestOod)
    }

    fn answers(model: &str, tests: &[Example], right: impl Fn(usize) -> bool) -> Vec<Prediction> {
        let model: ModelId = model.parse().unwrap();
        tests
            .iter()
            .enumerate()
            .map(|(i, e)| Prediction {
                model,
                split: crate::stages::eval::split_name(e),
                example_id: e.id.clone(),
                input: e.input.clone(),
                gold: e.label.clone(),
                prediction: if right(i) { e.label.clone() } else { "?".into() },
                correct: right(i),
                rationale: None,
            })
            .collect()
    }

    #[test]
    fn chance_is_one_over_the_choices_or_classes_and_absent_for_numbers() {
        let train: Vec<Example> = (0..30).map(|i| yes_no(i, Split::Train)).collect();
        let mut tests: Vec<Example> = (0..8).map(lettered).collect();
        tests.push(yes_no(100, Split::Test));
        tests.push(
            Example::new("arith", "arith", "1+1".into(), None, "2".into(), LabelKind::Number).with_split(Split::Val),
        );
        let c = chance_scores(&train, &tests);
        assert_eq!(c.len(), 9, "the numeric-only split has nothing to guess: {c:?}");
        assert!(c.iter().filter(|c| c.split == "test_ood").all(|c| c.p == 0.25));
        assert_eq!(c.iter().find(|c| c.split == "test").unwrap().p, 0.5);
        // The majority answer is per task; a probe task absent from training gets
        // the overall one, which never matches a letter.
        let m = majority_predictions(&train, &tests);
        assert!(m.iter().all(|p| p.prediction == "yes"));
        assert!(m.iter().filter(|p| p.split == "test_ood").all(|p| !p.correct));
    }

    /// The False Promise setting: yes/no training, a lettered probe. A student
    /// that answers 10% of four-way questions right knows less than a guesser, so
    /// the floor is chance, not the majority answer (0 on letters).
    #[test]
    fn a_probe_with_other_labels_is_judged_against_chance() {
        let train: Vec<Example> = (0..60).map(|i| yes_no(i, Split::Train)).collect();
        let mut tests: Vec<Example> = (0..40).map(|i| yes_no(1000 + i, Split::Test)).collect();
        tests.extend((0..200).map(lettered));
        let d: ModelId = "distill".parse().unwrap();
        let judge = |right_ood: fn(usize) -> bool| {
            let mut preds = answers("base", &tests, |_| false);
            preds.extend(answers("distill", &tests, |i| {
                if i < 40 { i % 3 != 0 } else { right_ood(i) }
            }));
            compute(&preds, &train, &[], &tests, &[d], d, 500, 7)
        };
        let weak = judge(|i| i % 10 == 0);
        let v = weak.verdict_ood.as_ref().unwrap();
        assert_eq!(v.floor, "chance");
        assert!((v.gain_over_floor.value - (0.1 - 0.25)).abs() < 1e-9, "{v:?}");
        assert_ne!(v.kind, VerdictKind::KnowledgeTransfer, "{v:?}");
        let chance = weak
            .scores
            .iter()
            .find(|s| s.model == "chance" && s.split == "test_ood")
            .unwrap();
        assert!((chance.accuracy.value - 0.25).abs() < 1e-12 && chance.accuracy.lo == 0.25);
        let strong = judge(|i| i % 10 < 6);
        let v = strong.verdict_ood.as_ref().unwrap();
        assert_eq!(
            (v.floor, v.kind),
            (ModelId::Chance, VerdictKind::KnowledgeTransfer),
            "{v:?}"
        );
        assert!(v.gain_over_floor.lo > 0.2, "{v:?}");
        // In distribution the majority answer ("yes", 2/3 of the labels) beats
        // chance (1/2) and is the floor; distill answers exactly the yeses.
        assert_eq!(strong.verdict.floor, "majority");
    }

    #[test]
    fn distilled_and_label_only_are_paired_at_every_fraction() {
        let train: Vec<Example> = (0..20).map(|i| yes_no(i, Split::Train)).collect();
        let tests: Vec<Example> = (0..20).map(|i| yes_no(100 + i, Split::Test)).collect();
        let students: Vec<ModelId> = ["distill-f500", "label-gold-f500", "distill", "label-gold"]
            .map(|s| s.parse().unwrap())
            .into();
        let mut preds = answers("base", &tests, |_| false);
        for (s, k) in students.iter().zip([10, 5, 20, 15]) {
            preds.extend(answers(&s.to_string(), &tests, |i| i < k));
        }
        let m = compute(&preds, &train, &[], &tests, &students, students[2], 200, 1);
        let gain = |a: &str, b: &str| {
            m.gains
                .iter()
                .find(|g| g.model == a && g.over == b)
                .map(|g| g.diff.value)
        };
        assert_eq!(gain("distill-f500", "label-gold-f500"), Some(0.25));
        assert_eq!(gain("distill", "label-gold"), Some(0.25));
        assert_eq!(gain("distill-f500", "label-gold"), None, "only equal data is paired");
    }
}
