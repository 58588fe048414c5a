//! Rationale shards: round trip, atomic sealing, crash recovery, and clear errors.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use stepwise_datasets::shard::{
    self, JOURNAL_COMMIT, JOURNAL_FILE, MANIFEST_FILE, RationaleRow, ShardSet, TokenLogprob, TopLogprob, read_dir_rows,
    read_shard, validate_dir, write_shard,
};

fn row(i: usize, sample: u32) -> RationaleRow {
    RationaleRow {
        example_id: format!("ex{i:06}"),
        task: "arith".into(),
        split: (i % 3 != 0).then(|| "train".into()),
        input: format!("Ann has {i} apples. She buys 2 more. How many? — ünïcode ✓"),
        choices: (i % 2 == 0).then(|| vec!["A".into(), format!("choice {i}")]),
        gold_label: Some((i + 2).to_string()),
        teacher_label: (i % 5 != 0).then(|| (i + 2).to_string()),
        rationale: format!("There are {i} apples. {i} + 2 = {}. So the answer is {}.", i + 2, i + 2),
        sample_index: sample,
        vote_share: 0.75,
        agrees_with_gold: (i % 7 != 0).then_some(i % 5 != 0),
        rationalized: i % 11 == 0,
        teacher_model: "solver".into(),
        prompt_template: "arith-cot-v1".into(),
        prompt_hash: "abc123".into(),
        temperature: 0.7,
        max_tokens: 256,
        seed: (i % 4 != 0).then_some(i as i64),
        prompt_tokens: 100 + i as u32,
        completion_tokens: 40,
        latency_ms: 12,
        finish_reason: "stop".into(),
        created_at: 1_763_900_000_000 + i as i64,
        raw_completion: (i % 2 == 1).then(|| format!("raw {i}")),
        top_logprobs: match i % 6 {
            1 => Some(vec![
                TokenLogprob {
                    token: format!(" {i}"),
                    logprob: -0.25,
                    top_logprobs: vec![
                        TopLogprob {
                            token: format!(" {i}"),
                            logprob: -0.25,
                        },
                        TopLogprob {
                            token: " ✓".into(),
                            logprob: -3.5,
                        },
                    ],
                },
                TokenLogprob {
                    token: ".".into(),
                    logprob: 0.0,
                    top_logprobs: vec![],
                },
            ]),
            2 => Some(vec![]),
            _ => None,
        },
        reasoning: (i % 4 == 1).then(|| format!("Let me think: {i} and 2 more.")),
        reasoning_tokens: (i % 4 == 1).then_some(7 + i as u32),
    }
}

fn rows(range: std::ops::Range<usize>) -> Vec<RationaleRow> {
    range.map(|i| row(i, 0)).collect()
}

fn keys(rs: &[RationaleRow]) -> Vec<(String, u32)> {
    rs.iter().map(|r| r.key()).collect()
}

#[test]
fn a_shard_round_trips_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("part-00000.parquet");
    let want = rows(0..200);
    let info = write_shard(&p, &want).unwrap();
    assert_eq!(info.rows, 200);
    assert_eq!(info.bytes, fs::metadata(&p).unwrap().len());
    assert_eq!(read_shard(&p).unwrap(), want);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
}

#[test]
fn a_shard_set_seals_by_size_and_lists_each_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (mut set, rec) = ShardSet::open(dir.path(), "cfg1", 100).unwrap();
    assert_eq!(rec.sealed_rows, 0);
    for chunk in rows(0..250).chunks(30) {
        set.append(chunk.to_vec()).unwrap();
    }
    let m = set.finish().unwrap();
    assert_eq!(m.shards.len(), 3);
    assert_eq!(m.shards.iter().map(|s| s.rows).collect::<Vec<_>>(), [120, 120, 10]);
    assert_eq!(m.total_rows, 250);
    assert_eq!(read_dir_rows(dir.path()).unwrap(), rows(0..250));
    assert!(validate_dir(dir.path()).unwrap().is_empty());
    assert_eq!(fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len(), 0);
}

#[test]
fn resume_after_a_kill_between_rows_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut set, _) = ShardSet::open(dir.path(), "cfg", 10).unwrap();
        for r in rows(0..13) {
            set.append(vec![r]).unwrap();
        }
        // Killed here: one shard sealed, three rows only in the journal.
    }
    let (mut set, rec) = ShardSet::open(dir.path(), "cfg", 10).unwrap();
    assert_eq!((rec.sealed_rows, rec.replayed_rows, rec.duplicates_skipped), (10, 3, 0));
    assert_eq!(set.rows_written(), 13);
    assert!(set.contains("ex000012", 0) && !set.contains("ex000013", 0));
    // The resumed run offers everything again; only new rows are taken.
    assert_eq!(set.append(rows(0..20)).unwrap(), 7);
    set.finish().unwrap();
    assert_eq!(keys(&read_dir_rows(dir.path()).unwrap()), keys(&rows(0..20)));
    assert!(validate_dir(dir.path()).unwrap().is_empty());
}

#[test]
fn a_row_torn_by_a_kill_mid_append_is_dropped_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut set, _) = ShardSet::open(dir.path(), "cfg", 100).unwrap();
        set.append(rows(0..5)).unwrap();
    }
    let line = serde_json::to_string(&row(5, 0)).unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(JOURNAL_FILE))
        .unwrap();
    std::io::Write::write_all(&mut f, &line.as_bytes()[..line.len() / 2]).unwrap();
    drop(f);
    let (set, rec) = ShardSet::open(dir.path(), "cfg", 100).unwrap();
    assert!(rec.torn_tail);
    assert_eq!(rec.replayed_rows, 5);
    set.finish().unwrap();
    assert_eq!(keys(&read_dir_rows(dir.path()).unwrap()), keys(&rows(0..5)));
}

#[test]
fn an_append_cut_short_is_dropped_whole_so_an_example_never_has_some_samples() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut set, _) = ShardSet::open(dir.path(), "cfg", 100).unwrap();
        set.append(vec![row(0, 0), row(0, 1)]).unwrap();
    }
    // Killed while appending example 1's two samples: the first line is whole,
    // the second is not, and the commit line never came.
    let (a, b) = (
        serde_json::to_string(&row(1, 0)).unwrap(),
        serde_json::to_string(&row(1, 1)).unwrap(),
    );
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(JOURNAL_FILE))
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{a}\n{b}\n").as_bytes()).unwrap();
    drop(f);
    let (set, rec) = ShardSet::open(dir.path(), "cfg", 100).unwrap();
    assert!(rec.torn_tail);
    assert_eq!(rec.replayed_rows, 2);
    assert!(!set.contains("ex000001", 0) && !set.contains("ex000001", 1));
    assert!(!set.example_ids().contains("ex000001"));
    set.finish().unwrap();
    assert_eq!(keys(&read_dir_rows(dir.path()).unwrap()), keys(&[row(0, 0), row(0, 1)]));
}

#[test]
fn resume_after_a_kill_between_shards_adopts_the_shard_and_skips_journal_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (mut set, _) = ShardSet::open(dir.path(), "cfg", 10).unwrap();
    set.append(rows(0..10)).unwrap(); // sealed: part-00000
    set.append(rows(10..15)).unwrap(); // pending
    let manifest_before = fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
    let journal_before = fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
    set.append(rows(15..20)).unwrap(); // seals part-00001
    drop(set);
    // Recreate the state of a kill after part-00001 was renamed into place
    // but before the manifest was updated and the journal truncated.
    fs::write(dir.path().join(MANIFEST_FILE), manifest_before).unwrap();
    let mut j = journal_before;
    assert!(dir.path().join("part-00001.parquet").exists());
    for r in rows(15..20) {
        j.extend(serde_json::to_vec(&r).unwrap());
        j.push(b'\n');
    }
    j.extend(format!("{JOURNAL_COMMIT}\n").as_bytes());
    fs::write(dir.path().join(JOURNAL_FILE), j).unwrap();
    // And a half-written next shard under its temporary name.
    fs::write(dir.path().join(".part-00002.parquet.tmp"), b"PAR1 half").unwrap();

    let (set, rec) = ShardSet::open(dir.path(), "cfg", 10).unwrap();
    assert_eq!(rec.adopted_shards, 1);
    assert_eq!(rec.duplicates_skipped, 10);
    assert_eq!(rec.replayed_rows, 0);
    assert_eq!(rec.removed_temporaries, 1);
    let m = set.finish().unwrap();
    assert_eq!(m.total_rows, 20);
    assert_eq!(keys(&read_dir_rows(dir.path()).unwrap()), keys(&rows(0..20)));
    assert!(validate_dir(dir.path()).unwrap().is_empty());
}

/// A tiny deterministic generator so the "random" kill points are reproducible.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn twenty_kills_at_random_points_end_with_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<RationaleRow> = (0..300).flat_map(|i| (0..2).map(move |s| row(i, s))).collect();
    let mut rng = Lcg(42);
    for _ in 0..20 {
        let (mut set, _) = ShardSet::open(dir.path(), "cfg", 25).unwrap();
        // Each run resumes: it offers only the examples not written yet, in its own batches.
        let todo: Vec<&RationaleRow> = all
            .iter()
            .filter(|r| !set.contains(&r.example_id, r.sample_index))
            .collect();
        let stop_after = rng.below(120) as usize;
        for chunk in todo.chunks(2).take(stop_after) {
            set.append(chunk.iter().map(|r| (*r).clone()).collect()).unwrap();
        }
        if rng.below(3) == 0 {
            // Killed in the middle of writing a journal line.
            let line = serde_json::to_string(&row(999, 0)).unwrap();
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join(JOURNAL_FILE))
                .unwrap();
            std::io::Write::write_all(
                &mut f,
                &line.as_bytes()[..rng.below(line.len() as u64 - 1) as usize + 1],
            )
            .unwrap();
        }
    }
    let (mut set, _) = ShardSet::open(dir.path(), "cfg", 25).unwrap();
    set.append(all.clone()).unwrap();
    set.finish().unwrap();
    let got = read_dir_rows(dir.path()).unwrap();
    let unique: HashSet<_> = keys(&got).into_iter().collect();
    assert_eq!(got.len(), all.len(), "no duplicates");
    assert_eq!(unique, keys(&all).into_iter().collect::<HashSet<_>>(), "no loss");
    assert!(validate_dir(dir.path()).unwrap().is_empty());
}

#[test]
fn a_truncated_shard_is_rejected_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut set, _) = ShardSet::open(dir.path(), "cfg", 50).unwrap();
    set.append(rows(0..50)).unwrap();
    set.finish().unwrap();
    let p = dir.path().join("part-00000.parquet");
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let msg = read_shard(&p).unwrap_err().to_string();
    assert!(msg.contains("part-00000.parquet") && msg.contains("truncated"), "{msg}");
    let msg = ShardSet::open(dir.path(), "cfg", 50).err().unwrap().to_string();
    assert!(msg.contains("part-00000.parquet"), "{msg}");
    let problems = validate_dir(dir.path()).unwrap();
    assert!(problems.iter().any(|p| p.0.contains("sha256")), "{problems:?}");
}

fn write_parquet(
    path: &Path,
    batch: &arrow::array::RecordBatch,
    props: Option<parquet::file::properties::WriterProperties>,
) {
    let mut w = parquet::arrow::ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), props).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[test]
fn a_foreign_or_wrong_schema_file_is_rejected_with_what_is_wrong() {
    use arrow::array::{RecordBatch, StringArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    // Plain Parquet from someone else.
    let foreign = dir.path().join("foreign.parquet");
    let b = RecordBatch::try_from_iter(vec![("question", Arc::new(StringArray::from(vec!["q"])) as _)]).unwrap();
    write_parquet(&foreign, &b, None);
    let msg = read_shard(&foreign).unwrap_err().to_string();
    assert!(
        msg.contains("foreign.parquet") && msg.contains("not a stepwise rationale shard"),
        "{msg}"
    );
    // Our footer, but a column missing.
    let missing = dir.path().join("missing.parquet");
    let full = shard::rows_to_batch(&rows(0..3));
    let idx = full.schema().index_of("rationale").unwrap();
    let mut cut = full.clone();
    cut.remove_column(idx);
    write_parquet(&missing, &cut, Some(shard::writer_properties()));
    let msg = read_shard(&missing).unwrap_err().to_string();
    assert!(
        msg.contains("missing.parquet") && msg.contains("\"rationale\" is missing"),
        "{msg}"
    );
    // Our footer, a column of the wrong type.
    let wrong = dir.path().join("wrong.parquet");
    let mut cols = full.columns().to_vec();
    let si = full.schema().index_of("sample_index").unwrap();
    cols[si] = Arc::new(StringArray::from(vec!["0", "0", "0"]));
    let mut fields: Vec<_> = full.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[si] = arrow::datatypes::Field::new("sample_index", arrow::datatypes::DataType::Utf8, false);
    let b = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap();
    write_parquet(&wrong, &b, Some(shard::writer_properties()));
    let msg = read_shard(&wrong).unwrap_err().to_string();
    assert!(msg.contains("\"sample_index\" has type Utf8, expected UInt32"), "{msg}");
    // Not Parquet at all.
    let junk = dir.path().join("junk.parquet");
    fs::write(&junk, b"hello, world").unwrap();
    let msg = read_shard(&junk).unwrap_err().to_string();
    assert!(
        msg.contains("junk.parquet") && msg.contains("not a complete Parquet file"),
        "{msg}"
    );
}

#[test]
fn a_version_1_shard_still_reads_with_no_reasoning_and_its_logprobs_text_parsed() {
    use arrow::array::{RecordBatch, StringArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    // A version-1 file as earlier builds wrote it: no reasoning columns,
    // `top_logprobs` as JSON text (here in OpenAI's shape on row 0).
    let mut want: Vec<RationaleRow> = rows(0..3)
        .into_iter()
        .map(|mut r| {
            (r.top_logprobs, r.reasoning, r.reasoning_tokens) = (None, None, None);
            r
        })
        .collect();
    let v2 = shard::rows_to_batch(&want);
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in v2.schema().fields().iter().zip(v2.columns()) {
        match f.name().as_str() {
            "reasoning" | "reasoning_tokens" => {}
            "top_logprobs" => {
                fields.push(arrow::datatypes::Field::new(
                    "top_logprobs",
                    arrow::datatypes::DataType::Utf8,
                    true,
                ));
                cols.push(Arc::new(StringArray::from(vec![
                    Some(r#"[{"token": "4", "logprob": -0.1, "bytes": [52], "top_logprobs": [{"token": "4", "logprob": -0.1}, {"token": "5", "logprob": -2.5}]}]"#),
                    None,
                    Some("not json"),
                ])) as arrow::array::ArrayRef);
            }
            _ => {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
            }
        }
    }
    let b = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap();
    let v1 = dir.path().join("part-00000.parquet");
    let props = |v: &str| {
        stepwise_datasets::table::properties_of_kind(shard::KIND, &[(shard::SCHEMA_VERSION_KEY, v.to_string())])
    };
    write_parquet(&v1, &b, Some(props("1")));
    want[0].top_logprobs = Some(vec![TokenLogprob {
        token: "4".into(),
        logprob: -0.1,
        top_logprobs: vec![
            TopLogprob {
                token: "4".into(),
                logprob: -0.1,
            },
            TopLogprob {
                token: "5".into(),
                logprob: -2.5,
            },
        ],
    }]);
    assert_eq!(read_shard(&v1).unwrap(), want);
    // A version this build does not know is refused, naming what it reads.
    let v3 = dir.path().join("v3.parquet");
    write_parquet(&v3, &shard::rows_to_batch(&rows(0..3)), Some(props("3")));
    let msg = read_shard(&v3).unwrap_err().to_string();
    assert!(
        msg.contains("v3.parquet") && msg.contains("version 3") && msg.contains("versions 1 to 2"),
        "{msg}"
    );
}

#[test]
fn shards_from_another_config_are_not_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut set, _) = ShardSet::open(dir.path(), "cfg-a", 5).unwrap();
    set.append(rows(0..5)).unwrap();
    set.finish().unwrap();
    let msg = ShardSet::open(dir.path(), "cfg-b", 5).err().unwrap().to_string();
    assert!(msg.contains("cfg-a") && msg.contains("cfg-b"), "{msg}");
}
