//! Answer extraction and task-aware matching, shared by the teacher (curation)
//! and the student (evaluation) so both judge answers the same way.

use crate::example::{LabelKind, choice_letter};

/// The phrase rationales end with: "... So the answer is X."
pub const ANSWER_PHRASE: &str = "the answer is";

/// The answer a completion states: the text after the last "the answer is"
/// (or after GSM8K's `####`), up to the end of that sentence or line.
pub fn extract_answer(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    // Lowercasing can change byte lengths outside ASCII; only trust positions when it did not.
    let start = if lower.len() == text.len() {
        lower
            .rfind(ANSWER_PHRASE)
            .map(|i| i + ANSWER_PHRASE.len())
            .or_else(|| text.rfind("####").map(|i| i + 4))
    } else {
        text.rfind("####").map(|i| i + 4)
    }?;
    let rest = text[start..].trim_start_matches([':', ' ', '\t']);
    let end = rest
        .char_indices()
        .find(|&(i, c)| c == '\n' || (c == '.' && !rest[i + 1..].starts_with(|d: char| d.is_ascii_digit())))
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    let ans = rest[..end]
        .trim()
        .trim_matches(|c: char| c == '*' || c == '"' || c == '\'' || c == '`')
        .trim();
    (!ans.is_empty()).then(|| ans.to_string())
}

/// The first number in `s` ("$1,200.50 total" -> 1200.5).
pub fn first_number(s: &str) -> Option<f64> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let starts = c.is_ascii_digit()
            || (c == b'-'
                && bytes.get(i + 1).is_some_and(|d| d.is_ascii_digit())
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()));
        if starts {
            let mut j = i + 1;
            while j < bytes.len()
                && (bytes[j].is_ascii_digit()
                    || bytes[j] == b','
                    || (bytes[j] == b'.' && bytes.get(j + 1).is_some_and(|d| d.is_ascii_digit())))
            {
                j += 1;
            }
            return s[i..j].replace(',', "").parse().ok();
        }
        i += 1;
    }
    None
}

fn normalise_text(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Maps NLI and yes/no spellings onto one canonical class name.
pub fn canonical_class(s: &str) -> String {
    let n = normalise_text(s);
    let first = n.split(' ').next().unwrap_or("");
    match first {
        "e" | "entailment" | "entails" | "entail" | "entailed" => "entailment".into(),
        "n" | "neutral" => "neutral".into(),
        "c" | "contradiction" | "contradicts" | "contradict" | "contradictory" => "contradiction".into(),
        "yes" | "true" => "yes".into(),
        "no" | "false" => "no".into(),
        _ => n,
    }
}

/// The choice letter a prediction names: "B", "(b)", "B) text", or the text of a choice.
pub fn choice_of(pred: &str, choices: Option<&[String]>) -> Option<String> {
    let t = pred.trim().trim_start_matches('(');
    let mut cs = t.chars();
    if let Some(c) = cs.next() {
        let next = cs.next();
        if c.is_ascii_alphabetic() && next.is_none_or(|n| !n.is_alphanumeric()) {
            let letter = c.to_ascii_uppercase().to_string();
            let n = choices.map_or(26, |c| c.len());
            if (letter.as_bytes()[0] - b'A') < n as u8 {
                return Some(letter);
            }
        }
    }
    let want = normalise_text(pred);
    choices?
        .iter()
        .position(|c| normalise_text(c) == want)
        .map(choice_letter)
}

/// Whether a predicted answer matches the gold label under the task's rule.
pub fn labels_match(kind: LabelKind, pred: &str, gold: &str, choices: Option<&[String]>) -> bool {
    match kind {
        LabelKind::Number => match (first_number(pred), first_number(gold)) {
            (Some(p), Some(g)) => (p - g).abs() <= 1e-6 * g.abs().max(1.0),
            _ => false,
        },
        LabelKind::Choice => match (choice_of(pred, choices), choice_of(gold, choices)) {
            (Some(p), Some(g)) => p == g,
            _ => false,
        },
        LabelKind::Class => canonical_class(pred) == canonical_class(gold),
        LabelKind::Text => normalise_text(pred) == normalise_text(gold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_last_stated_answer() {
        assert_eq!(extract_answer("5 + 3 = 8. So the answer is 8.").as_deref(), Some("8"));
        assert_eq!(
            extract_answer("The answer is 3. Wait, the answer is 12.5.").as_deref(),
            Some("12.5")
        );
        assert_eq!(extract_answer("steps\n#### 1,234").as_deref(), Some("1,234"));
        assert_eq!(extract_answer("So the answer is **(B)**").as_deref(), Some("(B)"));
        assert_eq!(extract_answer("no conclusion here"), None);
    }

    #[test]
    fn matches_by_kind() {
        assert!(labels_match(LabelKind::Number, "$1,200", "1200", None));
        assert!(!labels_match(LabelKind::Number, "1201", "1200", None));
        assert!(labels_match(LabelKind::Number, "-3 apples", "-3", None));
        let ch = vec!["red".to_string(), "blue".to_string()];
        assert!(labels_match(LabelKind::Choice, "(b)", "B", Some(&ch)));
        assert!(labels_match(LabelKind::Choice, "Blue", "B", Some(&ch)));
        assert!(!labels_match(LabelKind::Choice, "C", "B", Some(&ch)));
        assert!(labels_match(LabelKind::Class, "Entailment.", "e", None));
        assert!(labels_match(LabelKind::Class, "Yes, because", "yes", None));
        assert!(!labels_match(LabelKind::Class, "neutral", "contradiction", None));
    }
}
