//! Deterministic train/val/test splits.
//!
//! Examples are ranked by a keyed hash of (seed, id) and cut at exact counts:
//! the result depends only on the seed and the set of ids, never on file order
//! or platform. Examples whose split is already set (the held-out family, a
//! source's own test file) keep it.

use crate::example::{Example, Split};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SplitSpec {
    pub seed: u64,
    pub val_fraction: f64,
    pub test_fraction: f64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            seed: 0,
            val_fraction: 0.1,
            test_fraction: 0.2,
        }
    }
}

fn rank_key(seed: u64, id: &str) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 8];
    k.copy_from_slice(&d[..8]);
    k
}

/// Assigns `split` to every example that has none. Returns the number assigned.
pub fn assign_splits(examples: &mut [Example], spec: &SplitSpec) -> Result<usize, String> {
    let (v, t) = (spec.val_fraction, spec.test_fraction);
    if !(0.0..1.0).contains(&v) || !(0.0..1.0).contains(&t) || v + t >= 1.0 {
        return Err(format!(
            "split fractions must be in [0, 1) and leave room for training: val {v}, test {t}"
        ));
    }
    let mut free: Vec<(usize, [u8; 8])> = examples
        .iter()
        .enumerate()
        .filter(|(_, e)| e.split.is_none())
        .map(|(i, e)| (i, rank_key(spec.seed, &e.id)))
        .collect();
    // Ties are impossible in practice; the id breaks them anyway so order never matters.
    free.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| examples[a.0].id.cmp(&examples[b.0].id)));
    let n = free.len();
    let n_test = (n as f64 * t).round() as usize;
    let n_val = (n as f64 * v).round() as usize;
    for (rank, (i, _)) in free.iter().enumerate() {
        let split = if rank < n_test {
            Split::Test
        } else if rank < n_test + n_val {
            Split::Val
        } else {
            Split::Train
        };
        examples[*i].split = Some(split);
    }
    Ok(n)
}

/// Counts per split, in [`Split::ALL`] order, plus unassigned.
pub fn split_counts(examples: &[Example]) -> ([usize; 4], usize) {
    let mut c = [0usize; 4];
    let mut none = 0;
    for e in examples {
        match e.split {
            Some(s) => c[Split::ALL.iter().position(|x| *x == s).unwrap_or(0)] += 1,
            None => none += 1,
        }
    }
    (c, none)
}
