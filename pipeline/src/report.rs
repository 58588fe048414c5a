//! `report.md`, a self-contained `report.html` (plots inline as SVG) and
//! `metrics.json`, from one document model so the two never disagree.

use anyhow::Result;
use plotters::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use stepwise_datasets::atomic::write_bytes;
use stepwise_student::train::{LogLine, TrainSummary};

use crate::checks::{Interval, Metrics};

pub enum Block {
    Heading(usize, String),
    Para(String),
    List(Vec<String>),
    Table(Vec<String>, Vec<Vec<String>>),
    /// A plot: file name under `plots/`, alt text, SVG text.
    Plot(String, String, String),
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn to_markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for b in blocks {
        match b {
            Block::Heading(l, t) => out.push_str(&format!("{} {t}\n\n", "#".repeat(*l))),
            Block::Para(t) => out.push_str(&format!("{t}\n\n")),
            Block::List(items) => {
                for i in items {
                    out.push_str(&format!("- {i}\n"));
                }
                out.push('\n');
            }
            Block::Table(head, rows) => {
                out.push_str(&format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len())));
                for r in rows {
                    out.push_str(&format!("| {} |\n", r.join(" | ")));
                }
                out.push('\n');
            }
            Block::Plot(file, alt, _) => out.push_str(&format!("![{alt}](plots/{file})\n\n")),
        }
    }
    out
}

pub fn to_html(title: &str, blocks: &[Block]) -> String {
    let mut out = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}\
         th{{background:#f4f4f4}}code{{background:#f4f4f4;padding:0 .2em}}</style></head><body>\n",
        esc(title)
    );
    let inline = |t: &str| {
        // **bold** and `code`, the only markdown the report uses inline.
        let mut s = esc(t);
        while let (Some(a), true) = (s.find("**"), s.matches("**").count() >= 2) {
            s.replace_range(a..a + 2, "<b>");
            let b = s.find("**").expect("pair");
            s.replace_range(b..b + 2, "</b>");
        }
        while let (Some(a), true) = (s.find('`'), s.matches('`').count() >= 2) {
            s.replace_range(a..a + 1, "<code>");
            let b = s.find('`').expect("pair");
            s.replace_range(b..b + 1, "</code>");
        }
        s
    };
    for b in blocks {
        match b {
            Block::Heading(l, t) => out.push_str(&format!("<h{l}>{}</h{l}>\n", inline(t))),
            Block::Para(t) => out.push_str(&format!("<p>{}</p>\n", inline(t))),
            Block::List(items) => {
                out.push_str("<ul>");
                for i in items {
                    out.push_str(&format!("<li>{}</li>", inline(i)));
                }
                out.push_str("</ul>\n");
            }
            Block::Table(head, rows) => {
                out.push_str("<table><tr>");
                for h in head {
                    out.push_str(&format!("<th>{}</th>", inline(h)));
                }
                out.push_str("</tr>");
                for r in rows {
                    out.push_str("<tr>");
                    for c in r {
                        out.push_str(&format!("<td>{}</td>", inline(c)));
                    }
                    out.push_str("</tr>");
                }
                out.push_str("</table>\n");
            }
            Block::Plot(_, alt, svg) => out.push_str(&format!(
                "<figure>{svg}<figcaption>{}</figcaption></figure>\n",
                esc(alt)
            )),
        }
    }
    out.push_str("</body></html>\n");
    out
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type Series = (String, Vec<(f64, f64)>, bool);

/// A line chart; each series is (name, points, dashed).
pub fn line_chart(title: &str, x: &str, y: &str, series: &[Series], y_from_zero: bool) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (720, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let pts = series.iter().flat_map(|s| s.1.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(a, b) in pts {
            x0 = x0.min(a);
            x1 = x1.max(a);
            y0 = y0.min(b);
            y1 = y1.max(b);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if y_from_zero {
            y0 = 0.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(x0..x1.max(x0 + 1e-9), y0..y1 + pad)?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (name, points, dashed)) in series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let style = if *dashed { c.stroke_width(1) } else { c.stroke_width(2) };
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))?
                .label(name.clone())
                .legend(move |(a, b)| PathElement::new(vec![(a, b), (a + 18, b)], c.stroke_width(2)));
            if *dashed || points.len() < 12 {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(buf)
}

/// Accuracy with intervals: one point and a vertical bar per (model, split).
pub fn interval_chart(title: &str, items: &[(String, Interval)]) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (720, 40 + 26 * items.len() as u32 + 60)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = items.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(170)
            .build_cartesian_2d(0f64..1f64, (0..n).into_segmented())?;
        let labels: Vec<String> = items.iter().map(|(l, _)| l.clone()).collect();
        chart
            .configure_mesh()
            .x_desc("accuracy (bootstrap 95% interval)")
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()?;
        for (i, (_, iv)) in items.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(iv.lo, SegmentValue::CenterOf(i)), (iv.hi, SegmentValue::CenterOf(i))],
                c.stroke_width(3),
            )))?;
            chart.draw_series(std::iter::once(Circle::new(
                (iv.value, SegmentValue::CenterOf(i)),
                4,
                c.filled(),
            )))?;
        }
        root.present()?;
    }
    Ok(buf)
}

/// A parameter count as people quote it: "0.79M", "135M".
fn millions(n: usize) -> String {
    let m = n as f64 / 1e6;
    if m >= 10.0 {
        format!("{m:.0}M")
    } else {
        format!("{m:.2}M")
    }
}

/// Everything the report needs besides the metrics.
pub struct ReportInput<'a> {
    pub title: String,
    pub metrics: &'a Metrics,
    pub logs: &'a BTreeMap<String, Vec<LogLine>>,
    pub summaries: &'a BTreeMap<String, TrainSummary>,
    /// (variant, fraction, split) -> accuracy, when the run sweeps fractions.
    pub sweep: Vec<(String, f64, String, Interval)>,
    pub notes: Vec<String>,
}

pub fn build(inp: &ReportInput) -> Result<Vec<Block>> {
    let m = inp.metrics;
    let v = &m.verdict;
    let mut b = vec![Block::Heading(1, inp.title.clone())];
    b.push(Block::Heading(2, format!("Verdict: **{}**", v.kind.as_str())));
    b.push(Block::Para(format!(
        "Student `{}` judged on the held-out `{}` split.",
        v.student, v.split
    )));
    let mut reasons = v.reasons.clone();
    if let Some(rb) = &v.rationale_benefit {
        reasons.push(format!(
            "rationale benefit (distilled − label-only on gold labels, same data): {rb}"
        ));
    }
    reasons.push(format!("gain over the untrained student: {}", v.gain_over_base));
    b.push(Block::List(reasons));
    if let Some(o) = &m.verdict_ood {
        b.push(Block::Heading(
            3,
            format!("Out of distribution (`{}`): **{}**", o.split, o.kind.as_str()),
        ));
        let mut r = o.reasons.clone();
        if let Some(rb) = &o.rationale_benefit {
            r.push(format!(
                "rationale benefit (distilled − label-only on gold labels): {rb}"
            ));
        }
        b.push(Block::List(r));
    }
    b.push(Block::Heading(2, "Accuracy".into()));
    b.push(Block::Para(
        "Task-aware matching (numbers with tolerance, choice letters, class names); 95% percentile bootstrap intervals. \
         `majority` always answers the most common training label of the example's task: the floor any student reaches \
         by learning the answer distribution alone. `chance` is a uniform guess (1/choices, 1/classes), the floor on a \
         probe whose answers look nothing like the training labels. The verdict's floor is the strongest of these and \
         the untrained student."
            .into(),
    ));
    b.push(Block::Table(
        vec![
            "model".into(),
            "split".into(),
            "n".into(),
            "accuracy [95% interval]".into(),
        ],
        m.scores
            .iter()
            .map(|s| {
                vec![
                    s.model.to_string(),
                    s.split.clone(),
                    s.n.to_string(),
                    s.accuracy.to_string(),
                ]
            })
            .collect(),
    ));
    let items: Vec<(String, Interval)> = m
        .scores
        .iter()
        .map(|s| (format!("{} / {}", s.model, s.split), s.accuracy))
        .collect();
    b.push(Block::Plot(
        "accuracy.svg".into(),
        "Accuracy per model and split".into(),
        interval_chart("Accuracy", &items)?,
    ));
    b.push(Block::Heading(2, "Paired differences".into()));
    b.push(Block::Table(
        vec![
            "split".into(),
            "model".into(),
            "minus".into(),
            "difference [95% interval]".into(),
        ],
        m.gains
            .iter()
            .map(|g| {
                vec![
                    g.split.clone(),
                    g.model.to_string(),
                    g.over.to_string(),
                    g.diff.to_string(),
                ]
            })
            .collect(),
    ));
    if !inp.sweep.is_empty() {
        b.push(Block::Heading(2, "Accuracy against training-data fraction".into()));
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (var, f, split, iv) in &inp.sweep {
            series
                .entry(format!("{var} / {split}"))
                .or_default()
                .push((f * 100.0, iv.value));
        }
        let s: Vec<Series> = series
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                (k, v, false)
            })
            .collect();
        b.push(Block::Table(
            vec!["variant".into(), "fraction".into(), "split".into(), "accuracy".into()],
            inp.sweep
                .iter()
                .map(|(v, f, s, i)| vec![v.clone(), format!("{:.1}%", f * 100.0), s.clone(), i.to_string()])
                .collect(),
        ));
        b.push(Block::Plot(
            "sweep.svg".into(),
            "Accuracy against the share of training data".into(),
            line_chart("Accuracy vs training data", "% of training data", "accuracy", &s, true)?,
        ));
    }
    b.push(Block::Heading(2, "Style against the teacher".into()));
    b.push(Block::Para(
        "On the same test inputs. Converged = format ≥ 0.8, unigram overlap ≥ 0.5, length ratio within [0.67, 1.5]."
            .into(),
    ));
    b.push(Block::Table(
        vec![
            "model".into(),
            "n".into(),
            "format".into(),
            "unigram overlap".into(),
            "length corr.".into(),
            "length ratio".into(),
        ],
        m.style
            .iter()
            .map(|(k, s)| {
                vec![
                    k.to_string(),
                    s.n.to_string(),
                    format!("{:.3}", s.format_adherence),
                    format!("{:.3}", s.unigram_overlap),
                    format!("{:.3}", s.length_correlation),
                    format!("{:.3}", s.length_ratio),
                ]
            })
            .collect(),
    ));
    b.push(Block::Heading(2, "Faithfulness".into()));
    b.push(Block::Table(
        vec![
            "model".into(),
            "n".into(),
            "answer = rationale's conclusion".into(),
            "every step re-evaluates".into(),
        ],
        m.faithfulness
            .iter()
            .map(|(k, f)| {
                vec![
                    k.to_string(),
                    f.n.to_string(),
                    format!("{:.3}", f.answer_follows_rationale),
                    f.steps_valid.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into()),
                ]
            })
            .collect(),
    ));
    let c = &m.contamination;
    b.push(Block::Heading(2, "Contamination".into()));
    b.push(Block::List(vec![
        format!("test inputs: {}", c.test_inputs),
        format!("verbatim in the training inputs: {}", c.exact_duplicates),
        format!("test examples among the rows trained on: {}", c.leaked_ids),
        format!(
            "share of test inputs sharing a word 13-gram with training inputs or rationales: {:.3} (templated tasks share phrasing by construction)",
            c.ngram13_overlap
        ),
    ]));
    b.push(Block::Heading(2, "Training".into()));
    b.push(Block::Table(
        vec![
            "student".into(),
            "parameters trained / total".into(),
            "steps".into(),
            "epochs".into(),
            "best step (val)".into(),
            "val accuracy".into(),
            "final train loss".into(),
            "tokens/s".into(),
            "seconds".into(),
        ],
        inp.summaries
            .iter()
            .map(|(k, s)| {
                vec![
                    k.to_string(),
                    format!("{} / {}", millions(s.trainable_parameters), millions(s.parameters)),
                    s.steps.to_string(),
                    format!("{:.1}", s.epochs),
                    s.best_step.map(|x| x.to_string()).unwrap_or_default(),
                    s.best_accuracy.map(|x| format!("{x:.3}")).unwrap_or_default(),
                    format!("{:.3}", s.final_train_loss),
                    format!("{:.0}", s.tokens_per_second),
                    format!("{:.1}", s.seconds),
                ]
            })
            .collect(),
    ));
    let mut series: Vec<Series> = Vec::new();
    for (name, log) in inp.logs {
        let train: Vec<(f64, f64)> = log
            .iter()
            .filter(|l| l.kind == "train")
            .map(|l| (l.step as f64, l.loss))
            .collect();
        // Smooth the per-step loss over a short window so the curve reads.
        let w = 10usize;
        let smooth: Vec<(f64, f64)> = train
            .iter()
            .enumerate()
            .map(|(i, &(x, _))| {
                let lo = i.saturating_sub(w - 1);
                (x, train[lo..=i].iter().map(|p| p.1).sum::<f64>() / (i + 1 - lo) as f64)
            })
            .collect();
        series.push((format!("{name} train"), smooth, false));
        let val: Vec<(f64, f64)> = log
            .iter()
            .filter(|l| l.kind == "val")
            .map(|l| (l.step as f64, l.loss))
            .collect();
        if !val.is_empty() {
            series.push((format!("{name} val (label)"), val, true));
        }
    }
    if !series.is_empty() {
        b.push(Block::Plot(
            "loss.svg".into(),
            "Training loss (10-step mean) and validation label loss".into(),
            line_chart("Loss", "step", "loss", &series, true)?,
        ));
    }
    if !inp.notes.is_empty() {
        b.push(Block::Heading(2, "Notes".into()));
        b.push(Block::List(inp.notes.clone()));
    }
    Ok(b)
}

/// Writes report.md, report.html, plots/*.svg and metrics.json into `dir`.
pub fn write(dir: &Path, inp: &ReportInput) -> Result<()> {
    let blocks = build(inp)?;
    std::fs::create_dir_all(dir.join("plots"))?;
    for b in &blocks {
        if let Block::Plot(file, _, svg) = b {
            write_bytes(&dir.join("plots").join(file), svg.as_bytes())?;
        }
    }
    write_bytes(&dir.join("report.md"), to_markdown(&blocks).as_bytes())?;
    write_bytes(&dir.join("report.html"), to_html(&inp.title, &blocks).as_bytes())?;
    let metrics = json!({
        "verdict": inp.metrics.verdict,
        "verdict_ood": inp.metrics.verdict_ood,
        "scores": inp.metrics.scores,
        "gains": inp.metrics.gains,
        "style": inp.metrics.style,
        "faithfulness": inp.metrics.faithfulness,
        "contamination": inp.metrics.contamination,
        "training": inp.summaries,
        "sweep": inp.sweep.iter().map(|(v, f, s, i)| json!({"variant": v, "fraction": f, "split": s, "accuracy": i})).collect::<Vec<_>>(),
    });
    write_bytes(&dir.join("metrics.json"), &serde_json::to_vec_pretty(&metrics)?)?;
    Ok(())
}
