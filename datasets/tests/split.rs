//! Splits depend only on the seed and the ids.

use stepwise_datasets::arith::{ArithSpec, generate};
use stepwise_datasets::split::{SplitSpec, assign_splits, split_counts};
use stepwise_datasets::{Example, Split};

fn data() -> Vec<Example> {
    generate(&ArithSpec {
        seed: 11,
        in_distribution: 1000,
        out_of_distribution: 100,
        ..Default::default()
    })
}

fn splits(ex: &[Example]) -> std::collections::BTreeMap<String, Split> {
    ex.iter().map(|e| (e.id.clone(), e.split.unwrap())).collect()
}

#[test]
fn same_seed_same_split_whatever_the_order() {
    let spec = SplitSpec {
        seed: 5,
        val_fraction: 0.1,
        test_fraction: 0.2,
    };
    let mut a = data();
    assign_splits(&mut a, &spec).unwrap();
    let mut b = data();
    b.reverse();
    assign_splits(&mut b, &spec).unwrap();
    assert_eq!(splits(&a), splits(&b));
    let (counts, none) = split_counts(&a);
    assert_eq!(none, 0);
    assert_eq!(counts, [700, 100, 200, 100]);
}

#[test]
fn another_seed_gives_another_split_and_fixed_splits_are_kept() {
    let mut a = data();
    assign_splits(
        &mut a,
        &SplitSpec {
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut b = data();
    assign_splits(
        &mut b,
        &SplitSpec {
            seed: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let sa = splits(&a);
    let sb = splits(&b);
    let differ = sa.iter().filter(|(k, v)| sb[*k] != **v).count();
    assert!(differ > 100, "only {differ} examples moved");
    assert!(
        a.iter()
            .filter(|e| e.source == "arith:farm")
            .all(|e| e.split == Some(Split::TestOod))
    );
}

#[test]
fn bad_fractions_are_rejected() {
    let mut a = data();
    assert!(
        assign_splits(
            &mut a,
            &SplitSpec {
                seed: 0,
                val_fraction: 0.5,
                test_fraction: 0.5
            }
        )
        .is_err()
    );
}

/// `limit` draws a seeded sample, not the file's first rows: a file sorted by
/// subject (as MMLU's is) still gives a mix, and the sample keeps file order.
#[test]
fn a_limit_samples_across_a_sorted_file() {
    use stepwise_datasets::adapters::Format;
    use stepwise_datasets::source::{DataSpec, Source};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sorted.jsonl");
    let lines: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"question": "Problem number {i}?", "answer": "work\n#### {i}"}}"#))
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let spec = |seed| DataSpec {
        source: Source::Files {
            files: vec![path.clone()],
            format: Format::Gsm8k,
        },
        probes: None,
        split: SplitSpec {
            seed,
            ..Default::default()
        },
        limit: 20,
    };
    let answers = |ex: &[Example]| -> Vec<u32> { ex.iter().map(|e| e.label.parse().unwrap()).collect() };
    let a = answers(&spec(0).build().unwrap());
    assert_eq!(a.len(), 20);
    assert!(a.iter().any(|&n| n >= 100), "a prefix would stop at 19: {a:?}");
    assert!(a.windows(2).all(|w| w[0] < w[1]), "file order kept: {a:?}");
    assert_eq!(a, answers(&spec(0).build().unwrap()), "the same seed, the same sample");
    assert_ne!(a, answers(&spec(1).build().unwrap()), "another seed, another sample");
}
