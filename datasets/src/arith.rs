//! The built-in task: multi-step arithmetic word problems with exact answers.
//!
//! Each problem is a start value followed by 2-4 operations (+, -, *, /) that
//! keep every intermediate value a positive integer. Several surface template
//! families tell the same arithmetic in different words; one family
//! ([`HELD_OUT_FAMILY`]) is never trained on and forms the out-of-distribution
//! test split. Every problem carries a reference step-by-step solution in the
//! format the solver teacher uses, which [`check_solution`] re-evaluates.

use crate::example::{Example, LabelKind, Split};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The task name of built-in arithmetic examples.
pub const TASK: &str = "arith";
/// The template family kept for out-of-distribution tests only.
pub const HELD_OUT_FAMILY: &str = "farm";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }

    pub fn from_symbol(c: char) -> Option<Op> {
        match c {
            '+' => Some(Op::Add),
            '-' | '−' => Some(Op::Sub),
            '*' | 'x' | '×' => Some(Op::Mul),
            '/' | '÷' => Some(Op::Div),
            _ => None,
        }
    }

    /// Exact integer result, or `None` when it would not be a positive integer.
    pub fn apply(self, a: i64, b: i64) -> Option<i64> {
        match self {
            Op::Add => a.checked_add(b),
            Op::Sub => a.checked_sub(b),
            Op::Mul => a.checked_mul(b),
            Op::Div => (b != 0 && a % b == 0).then(|| a / b),
        }
    }
}

/// One surface form of the task: sentence templates with `{n}` (a name),
/// `{o}` (the counted thing), `{a}` (start value) and `{b}` (operand).
struct Family {
    name: &'static str,
    names: &'static [&'static str],
    objects: &'static [&'static str],
    start: &'static str,
    add: &'static str,
    sub: &'static str,
    mul: &'static str,
    div: &'static str,
    question: &'static str,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "shop",
        names: &["Ann", "Ben", "Chloe", "Dev", "Emma", "Farid"],
        objects: &["apples", "pencils", "stickers", "marbles", "cards"],
        start: "{n} has {a} {o}.",
        add: "{n} buys {b} more {o}.",
        sub: "{n} gives {b} {o} to a friend.",
        mul: "Then the number of {o} {n} has becomes {b} times as large.",
        div: "{n} shares the {o} equally among {b} boxes and keeps only one box.",
        question: "How many {o} does {n} have now?",
    },
    Family {
        name: "bakery",
        names: &["the baker"],
        objects: &["muffins", "cookies", "rolls", "pies"],
        start: "A bakery has {a} {o} on the shelf.",
        add: "The baker makes {b} more {o}.",
        sub: "Customers buy {b} {o}.",
        mul: "A big order comes in, so the baker makes the stock {b} times bigger.",
        div: "The {o} are packed equally onto {b} trays, and only one tray stays in the shop.",
        question: "How many {o} are in the shop at the end?",
    },
    Family {
        name: "bus",
        names: &["the driver"],
        objects: &["passengers"],
        start: "A bus leaves the depot with {a} passengers.",
        add: "At the next stop, {b} people get on.",
        sub: "At the following stop, {b} people get off.",
        mul: "At the station, the number of passengers grows to {b} times what it was.",
        div: "The passengers split into {b} equal groups, and only one group stays on the bus.",
        question: "How many passengers are on the bus at the end?",
    },
    Family {
        name: "savings",
        names: &["Gita", "Hugo", "Ivy", "Jon", "Kemal", "Lena"],
        objects: &["dollars"],
        start: "{n} has {a} dollars in a piggy bank.",
        add: "{n} earns {b} dollars mowing lawns.",
        sub: "{n} spends {b} dollars on a book.",
        mul: "After a lucky year, {n}'s savings are {b} times as much.",
        div: "{n} divides the money equally into {b} envelopes and keeps one envelope.",
        question: "How many dollars does {n} have now?",
    },
    Family {
        name: HELD_OUT_FAMILY,
        names: &["the farmer"],
        objects: &["sheep", "goats", "hens", "cows"],
        start: "In spring, a farm counts {a} {o} in its field.",
        add: "Later, {b} more {o} are brought from the market.",
        sub: "In summer, {b} {o} are sold to a neighbour.",
        mul: "By autumn, the herd has grown to {b} times its size.",
        div: "In winter, the {o} are divided evenly among {b} barns, and we count just one barn.",
        question: "How many {o} are counted at the end?",
    },
];

/// Names of the template families, the held-out one last.
pub fn family_names() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.name).collect()
}

/// A generated problem with its exact answer and reference solution.
#[derive(Debug, Clone, PartialEq)]
pub struct ArithProblem {
    pub family: &'static str,
    pub start: i64,
    pub steps: Vec<(Op, i64)>,
    pub answer: i64,
    pub question: String,
    pub solution: String,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct ArithSpec {
    pub seed: u64,
    /// Problems from the in-distribution families (split later into train/val/test).
    pub in_distribution: usize,
    /// Problems from the held-out family (always `test_ood`).
    pub out_of_distribution: usize,
    pub min_steps: usize,
    pub max_steps: usize,
    /// Largest starting amount; added and taken-away amounts scale with it
    /// (60 gives amounts up to 40 and values up to 500; 9 gives one-digit facts).
    pub max_number: i64,
}

impl Default for ArithSpec {
    fn default() -> Self {
        ArithSpec {
            seed: 0,
            in_distribution: 2000,
            out_of_distribution: 200,
            min_steps: 2,
            max_steps: 4,
            max_number: 60,
        }
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &'a [&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn fill(t: &str, name: &str, obj: &str, a: i64, b: i64) -> String {
    let s = t
        .replace("{n}", name)
        .replace("{o}", obj)
        .replace("{a}", &a.to_string())
        .replace("{b}", &b.to_string());
    capitalise(&s)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Picks the next operation and operand so the running value stays a small positive integer.
fn next_step(rng: &mut ChaCha8Rng, cur: i64, max_number: i64) -> (Op, i64) {
    let divisors: Vec<i64> = (2..=9).filter(|d| cur % d == 0 && cur / d >= 2).collect();
    let amount = (max_number * 2 / 3).max(2);
    let cap = max_number * 25 / 3;
    let mut ops = vec![Op::Add];
    if cur >= 3 {
        ops.push(Op::Sub);
    }
    if cur * 2 <= cap {
        ops.push(Op::Mul);
    }
    if !divisors.is_empty() {
        // Division is the rarest natural option; give it extra weight.
        ops.push(Op::Div);
        ops.push(Op::Div);
    }
    match ops[rng.random_range(0..ops.len())] {
        Op::Add => (Op::Add, rng.random_range(2..=amount)),
        Op::Sub => (Op::Sub, rng.random_range(1..cur.min(amount))),
        Op::Mul => {
            let max = (cap / cur).clamp(2, 5);
            (Op::Mul, rng.random_range(2..=max))
        }
        Op::Div => (Op::Div, divisors[rng.random_range(0..divisors.len())]),
    }
}

/// The reference rationale's sentence for one step; the solver teacher uses the same form.
pub fn step_sentence(op: Op, obj: &str, x: i64, b: i64, y: i64) -> String {
    let s = op.symbol();
    match op {
        Op::Add => format!("{b} more {obj} are added, so {x} {s} {b} = {y}."),
        Op::Sub => format!("{b} {obj} are taken away, so {x} {s} {b} = {y}."),
        Op::Mul => format!("The amount becomes {b} times as large, so {x} {s} {b} = {y}."),
        Op::Div => format!("It is split into {b} equal parts and one part is kept, so {x} {s} {b} = {y}."),
    }
}

fn problem(
    rng: &mut ChaCha8Rng,
    fam: &'static Family,
    min_steps: usize,
    max_steps: usize,
    max_number: i64,
) -> ArithProblem {
    let name = pick(rng, fam.names);
    let obj = pick(rng, fam.objects);
    let n_steps = rng.random_range(min_steps..=max_steps);
    let start = rng.random_range(5..=max_number.max(5));
    let mut cur = start;
    let mut sentences = vec![fill(fam.start, name, obj, start, 0)];
    let mut steps = Vec::with_capacity(n_steps);
    for _ in 0..n_steps {
        let (op, b) = next_step(rng, cur, max_number);
        let next = op.apply(cur, b).expect("next_step keeps values exact");
        let template = match op {
            Op::Add => fam.add,
            Op::Sub => fam.sub,
            Op::Mul => fam.mul,
            Op::Div => fam.div,
        };
        sentences.push(fill(template, name, obj, cur, b));
        steps.push((op, b));
        cur = next;
    }
    sentences.push(fill(fam.question, name, obj, start, 0));
    let told = ParsedProblem {
        family: fam.name,
        object: obj.to_string(),
        start,
        steps: steps.clone(),
    };
    let solution = told.rationale(&steps).expect("next_step keeps values exact");
    ArithProblem {
        family: fam.name,
        start,
        steps,
        answer: cur,
        question: sentences.join(" "),
        solution,
    }
}

/// Generates `n` problems from the named families, round-robin, reproducibly from `seed`.
pub fn generate_problems(
    seed: u64,
    n: usize,
    families: &[&str],
    min_steps: usize,
    max_steps: usize,
    max_number: i64,
) -> Vec<ArithProblem> {
    let fams: Vec<&'static Family> = FAMILIES.iter().filter(|f| families.contains(&f.name)).collect();
    assert!(!fams.is_empty(), "no known family among {families:?}");
    assert!(min_steps >= 1 && min_steps <= max_steps);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| problem(&mut rng, fams[i % fams.len()], min_steps, max_steps, max_number))
        .collect()
}

impl ArithProblem {
    pub fn to_example(&self, split: Option<Split>) -> Example {
        let source = format!("{TASK}:{}", self.family);
        let mut ex = Example::new(
            TASK,
            &source,
            self.question.clone(),
            None,
            self.answer.to_string(),
            LabelKind::Number,
        )
        .with_rationale(Some(self.solution.clone()));
        ex.split = split;
        ex
    }
}

/// The built-in dataset: in-distribution families (split unassigned) and the
/// held-out family (split `test_ood`). Duplicate questions are dropped.
pub fn generate(spec: &ArithSpec) -> Vec<Example> {
    let in_fams: Vec<&str> = FAMILIES
        .iter()
        .map(|f| f.name)
        .filter(|n| *n != HELD_OUT_FAMILY)
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(spec.in_distribution + spec.out_of_distribution);
    let parts = [
        (spec.seed, spec.in_distribution, in_fams, None),
        (
            spec.seed ^ 0x00d0_0d00,
            spec.out_of_distribution,
            vec![HELD_OUT_FAMILY],
            Some(Split::TestOod),
        ),
    ];
    for (seed, n, fams, split) in parts {
        if n == 0 {
            continue;
        }
        // Over-generate a little so dropping duplicates still yields `n` problems.
        let mut round = 0u64;
        let mut kept = 0;
        while kept < n {
            let batch = generate_problems(
                seed.wrapping_add(round),
                (n - kept) + 8,
                &fams,
                spec.min_steps,
                spec.max_steps,
                spec.max_number,
            );
            for p in batch {
                if kept < n && seen.insert(p.question.clone()) {
                    out.push(p.to_example(split));
                    kept += 1;
                }
            }
            round += 1;
        }
    }
    out
}

/// One `x op y = z` equation found in a rationale.
#[derive(Debug, Clone, PartialEq)]
pub struct Equation {
    pub lhs: f64,
    pub op: Op,
    pub rhs: f64,
    pub stated: f64,
}

impl Equation {
    pub fn value(&self) -> Option<f64> {
        match self.op {
            Op::Add => Some(self.lhs + self.rhs),
            Op::Sub => Some(self.lhs - self.rhs),
            Op::Mul => Some(self.lhs * self.rhs),
            Op::Div => (self.rhs != 0.0).then(|| self.lhs / self.rhs),
        }
    }

    pub fn is_correct(&self) -> bool {
        self.value()
            .is_some_and(|v| (v - self.stated).abs() <= 1e-6 * v.abs().max(1.0))
    }
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim_end_matches('.').replace(',', "").parse().ok()
}

/// Finds every `a op b = c` in `text` (numbers may contain commas or decimals).
pub fn equations(text: &str) -> Vec<Equation> {
    let toks: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 < toks.len() {
        let op = {
            let mut cs = toks[i + 1].chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) => Op::from_symbol(c),
                _ => None,
            }
        };
        let eq = toks[i + 3] == "=";
        let nums = (
            parse_number(toks[i].trim_start_matches(['(', '$'])),
            parse_number(toks[i + 2].trim_start_matches('$')),
            parse_number(toks[i + 4].trim_start_matches('$').trim_end_matches([')', ',', ';'])),
        );
        match (op, eq, nums) {
            (Some(op), true, (Some(lhs), Some(rhs), Some(stated))) => {
                out.push(Equation { lhs, op, rhs, stated });
                i += 4;
            }
            _ => i += 1,
        }
    }
    out
}

/// Re-evaluates a step-by-step arithmetic rationale: every equation must be
/// correct, each must start from the previous result, and the stated answer
/// must equal the last result. Returns the answer, or what is wrong.
pub fn check_solution(text: &str) -> Result<f64, String> {
    let eqs = equations(text);
    if eqs.is_empty() {
        return Err("no equation found".into());
    }
    for (i, e) in eqs.iter().enumerate() {
        if !e.is_correct() {
            return Err(format!(
                "step {}: {} {} {} = {} is wrong",
                i + 1,
                e.lhs,
                e.op.symbol(),
                e.rhs,
                e.stated
            ));
        }
        if i > 0 && (eqs[i - 1].stated - e.lhs).abs() > 1e-9 {
            return Err(format!(
                "step {} starts from {} but step {} gave {}",
                i + 1,
                e.lhs,
                i,
                eqs[i - 1].stated
            ));
        }
    }
    let last = eqs.last().map(|e| e.stated).unwrap_or_default();
    let stated = crate::answer::extract_answer(text)
        .and_then(|a| parse_number(&a))
        .ok_or_else(|| "no final answer stated".to_string())?;
    if (stated - last).abs() > 1e-9 {
        return Err(format!(
            "the stated answer {stated} differs from the last result {last}"
        ));
    }
    Ok(stated)
}

/// Matches one sentence against a template: literal parts must appear in
/// order, `{n}`/`{o}` match any words, `{a}`/`{b}` capture an integer.
fn match_template(template: &str, sentence: &str) -> Option<Option<i64>> {
    let t = template.to_lowercase();
    let s = sentence.to_lowercase();
    let mut parts: Vec<(&str, Option<&str>)> = Vec::new(); // (literal, placeholder after it)
    let mut rest = t.as_str();
    while let Some(i) = rest.find('{') {
        let j = rest[i..].find('}')? + i;
        parts.push((&rest[..i], Some(&rest[i + 1..j])));
        rest = &rest[j + 1..];
    }
    parts.push((rest, None));
    let mut pos = 0;
    let mut number = None;
    let mut pending: Option<&str> = None;
    for (lit, ph) in parts {
        let found = if pending.is_some() {
            // The literal follows a placeholder: find it after some text.
            if lit.is_empty() {
                Some(s.len())
            } else {
                s[pos..].find(lit).map(|k| k + pos)
            }
        } else {
            s[pos..].starts_with(lit).then_some(pos)
        }?;
        if let Some(p) = pending.take() {
            let captured = s[pos..found].trim();
            if captured.is_empty() {
                return None;
            }
            if p == "a" || p == "b" {
                number = Some(captured.parse::<i64>().ok()?);
            }
        }
        pos = found + lit.len();
        pending = ph;
    }
    (pos == s.len()).then_some(number)
}

/// Sentences of `text`, split at `.`, `?`, `!` and newlines, with a leading
/// one-word label such as `Q:` or `Question:` removed.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '?' | '!' | '\n') {
            let mut s = text[start..=i].trim();
            if let Some((label, rest)) = s.split_once(": ")
                && !label.contains(' ')
            {
                s = rest.trim();
            }
            if !s.is_empty() && s != "." {
                out.push(s);
            }
            start = i + 1;
        }
    }
    out
}

/// A problem recognised in text: which family, the start value and the steps.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedProblem {
    pub family: &'static str,
    pub object: String,
    pub start: i64,
    pub steps: Vec<(Op, i64)>,
}

impl ParsedProblem {
    pub fn answer(&self) -> Option<i64> {
        self.steps.iter().try_fold(self.start, |acc, (op, b)| op.apply(acc, *b))
    }

    /// A step-by-step rationale in the reference format, evaluated with `steps`.
    pub fn rationale(&self, steps: &[(Op, i64)]) -> Option<String> {
        let mut cur = self.start;
        let mut out = vec![format!("There are {} {} at the start.", self.start, self.object)];
        for (op, b) in steps {
            let next = op.apply(cur, *b)?;
            out.push(step_sentence(*op, &self.object, cur, *b, next));
            cur = next;
        }
        out.push(format!("So the answer is {cur}."));
        Some(out.join(" "))
    }
}

/// Recognises a built-in problem in `text` (the question, possibly inside a
/// longer prompt: the last matching run of sentences wins). This is how the
/// local `solver` teacher reads the questions it is sent.
pub fn parse_problem(text: &str) -> Option<ParsedProblem> {
    let sents = sentences(text);
    let mut best = None;
    for fam in FAMILIES {
        for (i, s) in sents.iter().enumerate() {
            let Some(Some(start)) = match_template(fam.start, s) else {
                continue;
            };
            let mut steps = Vec::new();
            let mut j = i + 1;
            while j < sents.len() {
                let step = [
                    (Op::Add, fam.add),
                    (Op::Sub, fam.sub),
                    (Op::Mul, fam.mul),
                    (Op::Div, fam.div),
                ]
                .into_iter()
                .find_map(|(op, t)| match_template(t, sents[j]).flatten().map(|b| (op, b)));
                match step {
                    Some(st) => steps.push(st),
                    None => break,
                }
                j += 1;
            }
            let asks = j < sents.len() && match_template(fam.question, sents[j]).is_some();
            if asks && !steps.is_empty() && best.as_ref().is_none_or(|(bi, _)| i >= *bi) {
                let object = fam
                    .objects
                    .iter()
                    .find(|o| s.contains(*o))
                    .copied()
                    .unwrap_or(fam.objects[0])
                    .to_string();
                best = Some((
                    i,
                    ParsedProblem {
                        family: fam.name,
                        object,
                        start,
                        steps,
                    },
                ));
            }
        }
    }
    // The last problem in the text is the one being asked (few-shot examples come first).
    best.map(|(_, p)| p)
}
