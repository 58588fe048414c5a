//! The toy task the trainer tests share: "add a b" with a one-step rationale.

use stepwise_student::data::{StudyExample, Task, prompt};
use stepwise_student::{Student, StudentTokenizer};

/// "add 3 4" -> "7", with a rationale that spells the step out; all 100
/// digit pairs, in an order fixed by `seed`.
pub fn toy(n: usize, seed: u64) -> Vec<StudyExample> {
    (0..n)
        .map(|i| {
            let k = (i as u64 * 37 + seed * 11) % 100;
            let (a, b) = (k / 10, k % 10);
            StudyExample {
                id: format!("toy-{seed}-{i}"),
                input: format!("add {a} {b}"),
                label: (a + b).to_string(),
                rationale: Some(format!("{a} plus {b} is {}. So the answer is {}.", a + b, a + b)),
            }
        })
        .collect()
}

/// A 96-token BPE over the examples' prompts, labels and rationales.
pub fn tokenizer(examples: &[StudyExample]) -> StudentTokenizer {
    let texts: Vec<String> = examples
        .iter()
        .flat_map(|e| {
            [
                prompt(Task::Label, &e.input),
                e.label.clone(),
                e.rationale.clone().unwrap_or_default(),
            ]
        })
        .collect();
    StudentTokenizer::train_bpe(texts.iter(), 96).unwrap()
}

/// Every weight of `s`, by name.
pub fn weights(s: &Student) -> Vec<(String, Vec<f32>)> {
    s.params
        .vars()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}
