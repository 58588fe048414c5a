//! Statistics: accuracies with percentile-bootstrap intervals, and paired
//! differences between two models on the same examples.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::baselines::ChanceScore;
use crate::model_id::ModelId;
use crate::stages::eval::Prediction;

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

/// Per-example scores of each (model, split), ordered by example id: 1 or 0
/// for a model's answers, the probability of a right guess for `chance`.
pub type ScoreTable = BTreeMap<(ModelId, String), Vec<(String, f64)>>;

/// The [`ScoreTable`] of the predictions and the chance baseline.
pub fn score_table(preds: &[Prediction], chance: &[ChanceScore]) -> ScoreTable {
    let mut t = ScoreTable::new();
    for p in preds {
        let v = if p.correct { 1.0 } else { 0.0 };
        t.entry((p.model, p.split.clone()))
            .or_default()
            .push((p.example_id.clone(), v));
    }
    for c in chance {
        t.entry((ModelId::Chance, c.split.clone()))
            .or_default()
            .push((c.example_id.clone(), c.p));
    }
    for v in t.values_mut() {
        v.sort_by(|a, b| a.0.cmp(&b.0));
    }
    t
}

pub fn scores_of<'a>(t: &'a ScoreTable, model: ModelId, split: &str) -> &'a [(String, f64)] {
    t.get(&(model, split.to_string())).map(|v| v.as_slice()).unwrap_or(&[])
}

/// Paired bootstrap of `a` minus `b` on the same examples of `split`.
pub fn paired(t: &ScoreTable, a: ModelId, b: ModelId, split: &str, samples: usize, seed: u64) -> Option<Interval> {
    let (ca, cb) = (scores_of(t, a, split), scores_of(t, b, split));
    if ca.is_empty() || ca.len() != cb.len() || ca.iter().zip(cb).any(|(x, y)| x.0 != y.0) {
        return None;
    }
    let va: Vec<f64> = ca.iter().map(|x| x.1).collect();
    let vb: Vec<f64> = cb.iter().map(|x| x.1).collect();
    Some(bootstrap(&va, Some(&vb), samples, seed))
}
