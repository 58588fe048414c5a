//! The report stage: the checks computed from the stored predictions, and
//! `report.md`, `report.html`, `plots/*.svg`, `metrics.json`. Cheap, so it
//! always runs.

use anyhow::Result;
use std::collections::BTreeMap;
use stepwise_datasets::Split;
use stepwise_datasets::examples_file::read_split;
use stepwise_student::train::{LogLine, TrainSummary};

use crate::checks::{self, Metrics};
use crate::config::TeacherKind;
use crate::model_id::ModelId;
use crate::plan::Plan;
use crate::report::{self, ReportInput};

/// Training logs of every trained student, by name.
pub fn training_logs(plan: &Plan) -> Result<BTreeMap<String, Vec<LogLine>>> {
    let mut out = BTreeMap::new();
    for &s in &plan.students.runs {
        let p = plan.dir.student_log(s);
        if p.exists() {
            out.insert(s.to_string(), stepwise_student::train::read_log(&p)?);
        }
    }
    Ok(out)
}

pub fn run(plan: &Plan) -> Result<Metrics> {
    let dir = &plan.dir;
    let preds = super::eval::read_predictions(&dir.predictions())?;
    let train = read_split(&dir.examples(), Split::Train)?;
    let mut tests = read_split(&dir.examples(), Split::Test)?;
    tests.extend(read_split(&dir.examples(), Split::TestOod)?);
    let ids: std::collections::HashSet<&str> = preds.iter().map(|p| p.example_id.as_str()).collect();
    tests.retain(|e| ids.contains(e.id.as_str()));
    let rows = super::teach::train_split_rows(dir, &train)?;
    let students: Vec<ModelId> = plan.students.runs.iter().map(|s| ModelId::Student(*s)).collect();
    let judged = ModelId::Student(plan.students.judged());
    let metrics = checks::compute(
        &preds,
        &train,
        &rows,
        &tests,
        &students,
        judged,
        plan.eval.bootstrap,
        plan.seed,
    );
    let logs = training_logs(plan)?;
    let mut summaries: BTreeMap<String, TrainSummary> = BTreeMap::new();
    for &s in &plan.students.runs {
        if let Some(sum) = super::train::summary(dir, s)? {
            summaries.insert(s.to_string(), sum);
        }
    }
    let mut sweep = Vec::new();
    if plan.config.students.fractions.len() > 1 {
        for &s in &plan.students.runs {
            for sc in metrics.scores.iter().filter(|sc| sc.model == ModelId::Student(s)) {
                sweep.push((
                    s.variant.as_str().to_string(),
                    s.fraction(),
                    sc.split.clone(),
                    sc.accuracy,
                ));
            }
        }
    }
    let mut notes = vec![format!("resolved config: `{}`", dir.config().display())];
    if plan.config.teacher.kind == TeacherKind::Local {
        notes.push(format!(
            "teacher: the built-in `{}` server, queried over HTTP on loopback",
            plan.config.teacher.backend.as_str()
        ));
    }
    report::write(
        dir.root(),
        &ReportInput {
            title: format!("stepwise report: {}", plan.config.run.name),
            metrics: &metrics,
            logs: &logs,
            summaries: &summaries,
            sweep,
            notes,
        },
    )?;
    Ok(metrics)
}
