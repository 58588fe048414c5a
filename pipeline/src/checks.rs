//! Did the student learn the teacher's knowledge, or only its style?
//! (DESIGN.md section 6.) Everything here is computed from the stored
//! predictions, so the checks can be re-run without the models.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use stepwise_datasets::answer::{extract_answer, labels_match};
use stepwise_datasets::arith::check_solution;
use stepwise_datasets::shard::RationaleRow;
use stepwise_datasets::{Example, LabelKind};

use crate::stages::Prediction;

/// A point estimate with a bootstrap 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} [{:.3}, {:.3}]", self.value, self.lo, self.hi)
    }
}

/// Percentile bootstrap of mean(a) - mean(b) (b empty: of mean(a)), with
/// the same resampled examples for both (a paired comparison). Values are
/// per-example scores: 0 or 1 for a model's answers, the probability of a
/// right guess for the chance baseline.
pub fn bootstrap(a: &[f64], b: Option<&[f64]>, samples: usize, seed: u64) -> Interval {
    let n = a.len();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let value = mean(a) - b.map(mean).unwrap_or(0.0);
    if n == 0 {
        return Interval {
            value,
            lo: value,
            hi: value,
        };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats: Vec<f64> = (0..samples.max(1))
        .map(|_| {
            let mut d = 0.0;
            for _ in 0..n {
                let i = rng.random_range(0..n);
                d += a[i] - b.map(|b| b[i]).unwrap_or(0.0);
            }
            d / n as f64
        })
        .collect();
    stats.sort_by(|x, y| x.total_cmp(y));
    let q = |p: f64| stats[((stats.len() - 1) as f64 * p).round() as usize];
    Interval {
        value,
        lo: q(0.025),
        hi: q(0.975),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Score {
    pub model: String,
    pub split: String,
    pub n: usize,
    pub accuracy: Interval,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    KnowledgeTransfer,
    StyleOnlyImitation,
    NoTransfer,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::KnowledgeTransfer => "knowledge transfer",
            VerdictKind::StyleOnlyImitation => "style-only imitation",
            VerdictKind::NoTransfer => "no transfer",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub kind: VerdictKind,
    /// The student judged, and the held-out split it was judged on.
    pub student: String,
    pub split: String,
    /// The strongest of the untrained student, the majority answer and chance.
    pub floor: String,
    pub gain_over_floor: Interval,
    pub gain_over_base: Interval,
    pub gap_closed: Option<f64>,
    pub style_converged: bool,
    /// Distilled minus label-only on gold labels, same data (the paper's question).
    pub rationale_benefit: Option<Interval>,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub scores: Vec<Score>,
    pub gains: Vec<Gain>,
    pub style: BTreeMap<String, Style>,
    pub faithfulness: BTreeMap<String, Faithfulness>,
    pub contamination: Contamination,
    pub verdict: Verdict,
    /// Held-out out-of-distribution verdict, when there is such a split.
    pub verdict_ood: Option<Verdict>,
}

/// Paired differences between two models on one split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gain {
    pub split: String,
    pub model: String,
    pub over: String,
    pub diff: Interval,
}

/// Per-example scores of each (model, split), ordered by example id: 1 or 0
/// for a model's answers, the probability of a right guess for `chance`.
type ScoreTable = BTreeMap<(String, String), Vec<(String, f64)>>;

fn score_table(preds: &[Prediction], chance: &[ChanceScore]) -> ScoreTable {
    let mut t = ScoreTable::new();
    for p in preds {
        let v = if p.correct { 1.0 } else { 0.0 };
        t.entry((p.model.clone(), p.split.clone()))
            .or_default()
            .push((p.example_id.clone(), v));
    }
    for c in chance {
        t.entry(("chance".into(), c.split.clone()))
            .or_default()
            .push((c.example_id.clone(), c.p));
    }
    for v in t.values_mut() {
        v.sort_by(|a, b| a.0.cmp(&b.0));
    }
    t
}

fn scores_of<'a>(t: &'a ScoreTable, model: &str, split: &str) -> &'a [(String, f64)] {
    t.get(&(model.to_string(), split.to_string()))
        .map(|v| v.as_slice())
        .unwrap_or(&[])
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

fn unigram_f1(a: &str, b: &str) -> f64 {
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

fn pearson(x: &[f64], y: &[f64]) -> f64 {
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
pub fn style(preds: &[Prediction], model: &str) -> Option<Style> {
    let teacher: HashMap<(&str, &str), &str> = preds
        .iter()
        .filter(|p| p.model == "teacher")
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
pub fn faithfulness(preds: &[Prediction], model: &str, tests: &HashMap<String, &Example>) -> Option<Faithfulness> {
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
                model: "majority".into(),
                split: crate::stages::split_name(e),
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
                split: crate::stages::split_name(e),
                example_id: e.id.clone(),
                p,
            }
        })
        .collect();
    let guessable: HashSet<String> = out.iter().filter(|c| c.p > 0.0).map(|c| c.split.clone()).collect();
    out.retain(|c| guessable.contains(&c.split));
    out
}

fn paired(t: &ScoreTable, a: &str, b: &str, split: &str, samples: usize, seed: u64) -> Option<Interval> {
    let (ca, cb) = (scores_of(t, a, split), scores_of(t, b, split));
    if ca.is_empty() || ca.len() != cb.len() || ca.iter().zip(cb).any(|(x, y)| x.0 != y.0) {
        return None;
    }
    let va: Vec<f64> = ca.iter().map(|x| x.1).collect();
    let vb: Vec<f64> = cb.iter().map(|x| x.1).collect();
    Some(bootstrap(&va, Some(&vb), samples, seed))
}

/// All the checks, and the verdict on `split` for `student`.
#[allow(clippy::too_many_arguments)]
pub fn compute(
    preds_in: &[Prediction],
    train: &[Example],
    trained_rows: &[RationaleRow],
    tests: &[Example],
    students: &[String],
    judged: &str,
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
    let mut models: Vec<String> = vec!["teacher".into(), "majority".into(), "chance".into(), "base".into()];
    models.extend(students.iter().cloned());
    let mut scores = Vec::new();
    for split in &splits {
        for m in &models {
            let c: Vec<f64> = scores_of(&table, m, split).iter().map(|x| x.1).collect();
            if !c.is_empty() {
                scores.push(Score {
                    model: m.clone(),
                    split: split.clone(),
                    n: c.len(),
                    accuracy: bootstrap(&c, None, samples, seed),
                });
            }
        }
    }
    let mut gains = Vec::new();
    for split in &splits {
        for s in students {
            for over in ["base", "majority", "chance"] {
                if let Some(d) = paired(&table, s, over, split, samples, seed) {
                    gains.push(Gain {
                        split: split.clone(),
                        model: s.clone(),
                        over: over.into(),
                        diff: d,
                    });
                }
            }
        }
        // Distilled against label-only at equal data: at each swept fraction too.
        for a in students.iter().filter(|s| s.starts_with("distill")) {
            for b in ["label-gold", "label-teacher"].map(|b| a.replacen("distill", b, 1)) {
                if let Some(d) = paired(&table, a, &b, split, samples, seed) {
                    gains.push(Gain {
                        split: split.clone(),
                        model: a.clone(),
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
    for m in models.iter().filter(|m| !matches!(m.as_str(), "majority" | "chance")) {
        if let Some(s) = style(&preds, m).filter(|_| m != "teacher") {
            style_m.insert(m.clone(), s);
        }
        if let Some(f) = faithfulness(&preds, m, &test_map) {
            faith.insert(m.clone(), f);
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

fn verdict(
    table: &ScoreTable,
    scores: &[Score],
    style: &BTreeMap<String, Style>,
    student: &str,
    split: &str,
    samples: usize,
    seed: u64,
) -> Verdict {
    let acc = |m: &str| {
        scores
            .iter()
            .find(|s| s.model == m && s.split == split)
            .map(|s| s.accuracy.value)
    };
    // The strongest baseline that knows nothing of the task: on ties the earlier one.
    let floor = ["base", "majority", "chance"]
        .into_iter()
        .filter(|m| acc(m).is_some())
        .fold("base", |best, m| if acc(m) > acc(best) { m } else { best });
    let zero = Interval {
        value: 0.0,
        lo: 0.0,
        hi: 0.0,
    };
    let gain_floor = paired(table, student, floor, split, samples, seed).unwrap_or(zero);
    let gain_base = paired(table, student, "base", split, samples, seed).unwrap_or(zero);
    let gap_closed = match (acc(student), acc("base"), acc("teacher")) {
        (Some(s), Some(b), Some(t)) if (t - b).abs() > 1e-9 => Some((s - b) / (t - b)),
        _ => None,
    };
    let st = style.get(student);
    let style_converged = st.is_some_and(Style::converged);
    let rationale_benefit = if student.starts_with("distill") {
        paired(
            table,
            student,
            &student.replacen("distill", "label-gold", 1),
            split,
            samples,
            seed,
        )
    } else {
        None
    };
    let mut reasons = vec![format!(
        "{student} accuracy on {split}: {:.3}; {floor} (the floor): {:.3}; gain {gain_floor}",
        acc(student).unwrap_or(0.0),
        acc(floor).unwrap_or(0.0)
    )];
    if let Some(t) = acc("teacher") {
        reasons.push(format!(
            "teacher accuracy {t:.3}; gap closed {}",
            gap_closed.map(|g| format!("{g:.3}")).unwrap_or_else(|| "n/a".into())
        ));
    }
    match st {
        Some(s) => reasons.push(format!(
            "style against the teacher: format {:.2}, unigram overlap {:.2}, length correlation {:.2}, length ratio {:.2} ({})",
            s.format_adherence,
            s.unigram_overlap,
            s.length_correlation,
            s.length_ratio,
            if s.converged() { "converged" } else { "not converged" }
        )),
        None => reasons.push("no rationales from this student, so no style comparison".into()),
    }
    let kind = if gain_floor.lo > 0.0 {
        reasons.push("the gain over the floor is above zero beyond the 95% interval".into());
        VerdictKind::KnowledgeTransfer
    } else if style_converged {
        reasons
            .push("the style converged on the teacher's while the gain is not above zero beyond the interval".into());
        VerdictKind::StyleOnlyImitation
    } else {
        reasons.push("no gain beyond the interval, and the style did not converge".into());
        VerdictKind::NoTransfer
    };
    Verdict {
        kind,
        student: student.into(),
        split: split.into(),
        floor: floor.into(),
        gain_over_floor: gain_floor,
        gain_over_base: gain_base,
        gap_closed,
        style_converged,
        rationale_benefit,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    use stepwise_datasets::Split;

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
        tests
            .iter()
            .enumerate()
            .map(|(i, e)| Prediction {
                model: model.into(),
                split: crate::stages::split_name(e),
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
        let judge = |right_ood: fn(usize) -> bool| {
            let mut preds = answers("base", &tests, |_| false);
            preds.extend(answers("distill", &tests, |i| {
                if i < 40 { i % 3 != 0 } else { right_ood(i) }
            }));
            compute(&preds, &train, &[], &tests, &["distill".into()], "distill", 500, 7)
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
            (v.floor.as_str(), v.kind),
            ("chance", VerdictKind::KnowledgeTransfer),
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
        let students: Vec<String> = ["distill-f500", "label-gold-f500", "distill", "label-gold"]
            .map(String::from)
            .into();
        let mut preds = answers("base", &tests, |_| false);
        for (s, k) in students.iter().zip([10, 5, 20, 15]) {
            preds.extend(answers(s, &tests, |i| i < k));
        }
        let m = compute(&preds, &train, &[], &tests, &students, "distill", 200, 1);
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
