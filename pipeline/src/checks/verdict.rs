//! The verdict: knowledge transfer, style-only imitation, or no transfer,
//! judged on held-out data against the strongest floor.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::Score;
use super::stats::{Interval, ScoreTable, paired};
use super::style::Style;
use crate::model_id::ModelId;
use stepwise_student::data::Variant;

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
    pub student: ModelId,
    pub split: String,
    /// The strongest of the untrained student, the majority answer and chance.
    pub floor: ModelId,
    pub gain_over_floor: Interval,
    pub gain_over_base: Interval,
    pub gap_closed: Option<f64>,
    pub style_converged: bool,
    /// Distilled minus label-only on gold labels, same data (the paper's question).
    pub rationale_benefit: Option<Interval>,
    pub reasons: Vec<String>,
}

pub(crate) fn verdict(
    table: &ScoreTable,
    scores: &[Score],
    style: &BTreeMap<ModelId, Style>,
    student: ModelId,
    split: &str,
    samples: usize,
    seed: u64,
) -> Verdict {
    let acc = |m: ModelId| {
        scores
            .iter()
            .find(|s| s.model == m && s.split == split)
            .map(|s| s.accuracy.value)
    };
    // The strongest baseline that knows nothing of the task: on ties the earlier one.
    let floor = ModelId::FLOORS
        .into_iter()
        .filter(|m| acc(*m).is_some())
        .fold(ModelId::Base, |best, m| if acc(m) > acc(best) { m } else { best });
    let zero = Interval {
        value: 0.0,
        lo: 0.0,
        hi: 0.0,
    };
    let gain_floor = paired(table, student, floor, split, samples, seed).unwrap_or(zero);
    let gain_base = paired(table, student, ModelId::Base, split, samples, seed).unwrap_or(zero);
    let gap_closed = match (acc(student), acc(ModelId::Base), acc(ModelId::Teacher)) {
        (Some(s), Some(b), Some(t)) if (t - b).abs() > 1e-9 => Some((s - b) / (t - b)),
        _ => None,
    };
    let st = style.get(&student);
    let style_converged = st.is_some_and(Style::converged);
    let rationale_benefit = match student.student() {
        Some(s) if student.is_distilled() => paired(
            table,
            student,
            ModelId::Student(s.with_variant(Variant::LabelGold)),
            split,
            samples,
            seed,
        ),
        _ => None,
    };
    let mut reasons = vec![format!(
        "{student} accuracy on {split}: {:.3}; {floor} (the floor): {:.3}; gain {gain_floor}",
        acc(student).unwrap_or(0.0),
        acc(floor).unwrap_or(0.0)
    )];
    if let Some(t) = acc(ModelId::Teacher) {
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
        student,
        split: split.into(),
        floor,
        gain_over_floor: gain_floor,
        gain_over_base: gain_base,
        gap_closed,
        style_converged,
        rationale_benefit,
        reasons,
    }
}
