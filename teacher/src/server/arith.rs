//! The built-in teachers of the arithmetic problems: `solver` reads a
//! problem from the prompt and answers it exactly, step by step; `mimic`
//! answers in the same format and tone with wrong numbers (the style-only
//! teacher the checks must catch). Both answer in microseconds, so the
//! server calls them inline.

use super::{ChatModel, ModelJob, ModelOutput};
use crate::protocol::approx_tokens;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stepwise_datasets::arith::{Op, ParsedProblem, parse_problem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithTeacher {
    Solver,
    Mimic,
}

impl std::str::FromStr for ArithTeacher {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "solver" => Ok(ArithTeacher::Solver),
            "mimic" => Ok(ArithTeacher::Mimic),
            other => Err(format!("unknown teacher {other:?} (expected solver or mimic)")),
        }
    }
}

impl ChatModel for ArithTeacher {
    fn name(&self) -> String {
        match self {
            ArithTeacher::Solver => "solver".into(),
            ArithTeacher::Mimic => "mimic".into(),
        }
    }

    /// Answers the last user message, cut to `max_tokens` (four characters
    /// a token, as [`approx_tokens`] counts); `stop`, `temperature` and
    /// `top_p` do not apply to a deterministic teacher.
    fn complete(&self, jobs: &[ModelJob]) -> Vec<Result<ModelOutput, String>> {
        jobs.iter()
            .map(|job| {
                // The seed these teachers have always used, not `ModelJob::seed`:
                // the mimic's numbers for a given request stay what they were.
                let seed = job.request_seed.unwrap_or(0) as u64 ^ (job.sample as u64 + 1);
                Ok(instant_output(job, self.answer(last_user(job), seed)))
            })
            .collect()
    }

    fn batched(&self) -> bool {
        false
    }
}

impl ArithTeacher {
    /// The completion for a prompt; `seed` picks the mimic's wrong numbers.
    pub fn answer(self, question: &str, seed: u64) -> String {
        let Some(p) = parse_problem(question) else {
            return "I can only solve the built-in arithmetic problems, and I cannot read one here. So the answer is unknown."
                .into();
        };
        match self {
            ArithTeacher::Solver => p
                .rationale(&p.steps)
                .unwrap_or_else(|| "The problem has no exact answer. So the answer is unknown.".into()),
            ArithTeacher::Mimic => mimic(&p, seed),
        }
    }
}

/// Same format and tone, wrong numbers.
fn mimic(p: &ParsedProblem, seed: u64) -> String {
    // Shift the operands of + and - (or a multiplier) so the chain stays
    // exact and self-consistent but ends wrong.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ p.start as u64);
    let truth = p.answer();
    for _ in 0..32 {
        let k = rng.random_range(1..=9);
        let steps: Vec<(Op, i64)> = p
            .steps
            .iter()
            .map(|&(op, b)| match op {
                Op::Add | Op::Sub => (op, b + k),
                Op::Mul => (op, b + 1),
                Op::Div => (op, b),
            })
            .collect();
        let wrong = chain_text(p, &steps);
        if let Some(text) = wrong.filter(|(a, _)| Some(*a) != truth && *a > 0).map(|(_, t)| t) {
            return text;
        }
    }
    // Divisions got in the way: get a single step wrong, latest first, keeping the chain exact.
    for i in (0..p.steps.len()).rev() {
        let Some(cur) = p.steps[..i].iter().try_fold(p.start, |acc, (op, b)| op.apply(acc, *b)) else {
            continue;
        };
        let (op, b) = p.steps[i];
        for k in 1..=9i64 {
            let wrong = match op {
                Op::Add | Op::Sub => (op, b + k),
                Op::Mul => (op, b + k),
                Op::Div => match (2..=9).filter(|d| *d != b && cur % d == 0).nth(k as usize - 1) {
                    Some(d) => (op, d),
                    None => break,
                },
            };
            let mut steps = p.steps.clone();
            steps[i] = wrong;
            if let Some((_, text)) = chain_text(p, &steps).filter(|(a, _)| Some(*a) != truth) {
                return text;
            }
        }
    }
    // Still nothing exact: state a wrong total in the same tone.
    let ans = truth.unwrap_or(0) + rng.random_range(1..=9);
    format!(
        "There are {} {} at the start. Counting every change gives {ans}. So the answer is {ans}.",
        p.start, p.object
    )
}

/// The answer and rationale of `p` told with `steps`, if every value stays a positive integer.
fn chain_text(p: &ParsedProblem, steps: &[(Op, i64)]) -> Option<(i64, String)> {
    let ans = steps
        .iter()
        .try_fold(p.start, |acc, (op, b)| op.apply(acc, *b).filter(|v| *v > 0))?;
    Some((ans, p.rationale(steps)?))
}

/// The last user message of `job`: what an instant teacher answers.
pub(super) fn last_user(job: &ModelJob) -> &str {
    job.messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .unwrap_or("")
}

/// An instant teacher's answer `text` to `job`: cut to its `max_tokens`,
/// tokens counted at four characters each ([`approx_tokens`]).
pub(super) fn instant_output(job: &ModelJob, text: String) -> ModelOutput {
    let (text, finish_reason) = truncate_to_tokens(text, job.max_tokens.unwrap_or(u32::MAX));
    ModelOutput {
        logprobs: None,
        completion_tokens: approx_tokens(&text),
        prompt_tokens: job.messages.iter().map(|m| approx_tokens(&m.content)).sum(),
        text,
        finish_reason,
    }
}

/// `text` cut to `max_tokens` at four characters a token (on a character
/// boundary), and the finish reason that says whether it was cut.
fn truncate_to_tokens(text: String, max_tokens: u32) -> (String, &'static str) {
    let max_chars = max_tokens as usize * 4;
    if text.len() <= max_chars {
        return (text, "stop");
    }
    let mut cut = max_chars;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (text[..cut].to_string(), "length")
}
