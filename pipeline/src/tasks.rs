//! The teach stage as N tasks over shared storage, run by an engine users
//! already have (Slurm job arrays, Kubernetes Indexed Jobs): no scheduler
//! here, and every retry, duplicate or lost worker harmless.
//!
//! ```text
//! <root>/plan/teach.json               create-only: the identity, N, the example ids of each task and their hash
//! <root>/examples/<split>.parquet      the plan's examples (their sha256 in the plan)
//! <root>/teach/tasks/<i>/attempts/<a>/ the sealed shards of one attempt; never changed once written
//! <root>/teach/_commits/<i>.json       create-only: the attempt that won task i, its files with rows, bytes, sha256
//! <root>/teach/_manifest.json          create-only, by finalize: the one thing readers use
//! ```
//!
//! The only primitive relied on is a create-only write ([`Store::put_create`]):
//! the first commit of a task wins, and a duplicate or retried worker can
//! only leave an attempt folder that no commit names ([`gc`] removes those).
//! A worker's own crash safety is the local stage's, in scratch space.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use stepwise_datasets::digest::{sha256_and_len, sha256_file};
use stepwise_datasets::shard::{MANIFEST_FILE, Manifest, SCHEMA_VERSION, ShardInfo, read_shard_keys};
use stepwise_store::{Created, Store};

/// The plan's key under the root.
pub const PLAN: &str = "plan/teach.json";
/// The folder of the plan's examples.
pub const EXAMPLES: &str = "examples";
/// The folder of the teach stage's tasks, commits and manifest.
pub const TEACH: &str = "teach";
const PLAN_VERSION: u32 = 1;

/// The exit status of a configuration error (`EX_CONFIG`): a scheduler can
/// be told not to retry it (a Kubernetes pod-failure policy, a Slurm
/// requeue rule), since a retry fails the same way.
pub const EXIT_CONFIG: u8 = 78;
/// The exit status of `teach finalize` when some tasks have not committed.
pub const EXIT_INCOMPLETE: u8 = 3;

/// A mistake in what the user gave (config, URL, plan, task index): retrying
/// cannot fix it.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Tasks that have not committed, named for resubmission.
#[derive(Debug)]
pub struct Incomplete {
    pub missing: Vec<u32>,
    pub tasks: u32,
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} task(s) have not committed: {}; resubmit them (Slurm: sbatch --array={} teach-array.sbatch; Kubernetes: apply the Indexed Job again, whose committed indexes exit at once), then finalize again",
            self.missing.len(),
            self.tasks,
            ranges(&self.missing, " "),
            ranges(&self.missing, ",")
        )
    }
}

impl std::error::Error for Incomplete {}

/// `3 5-7 9` (or with another separator): the indices as Slurm's `--array` reads them.
pub fn ranges(ids: &[u32], sep: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    out.join(sep)
}

/// The exit status `e` asks for.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<ConfigError>()) {
        EXIT_CONFIG
    } else if e.chain().any(|c| c.is::<Incomplete>()) {
        EXIT_INCOMPLETE
    } else {
        1
    }
}

/// A file the plan refers to, by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One task's share of the examples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSlice {
    /// Sorted.
    pub example_ids: Vec<String>,
    pub ids_sha256: String,
}

/// `plan/teach.json`: written once, read by every worker and by finalize.
/// The number of tasks comes from here, never from a scheduler's variables
/// (a single resubmitted index sees other counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPlan {
    pub version: u32,
    /// The teacher crate's identity of the work (`TeachConfig::identity`):
    /// the shard set's config hash.
    pub identity: String,
    pub examples: Vec<StoredFile>,
    pub tasks: Vec<TaskSlice>,
}

fn ids_sha256(ids: &[String]) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl TaskPlan {
    /// `ids` sorted and split into `tasks` contiguous slices whose sizes differ by at most one.
    pub fn new(identity: &str, mut ids: Vec<String>, tasks: usize, examples: Vec<StoredFile>) -> TaskPlan {
        ids.sort();
        ids.dedup();
        let n = tasks.max(1);
        let len = ids.len();
        let tasks = (0..n)
            .map(|i| {
                let part = ids[i * len / n..(i + 1) * len / n].to_vec();
                TaskSlice {
                    ids_sha256: ids_sha256(&part),
                    example_ids: part,
                }
            })
            .collect();
        TaskPlan {
            version: PLAN_VERSION,
            identity: identity.to_string(),
            examples,
            tasks,
        }
    }

    pub fn task_count(&self) -> u32 {
        self.tasks.len() as u32
    }

    pub fn task(&self, i: u32) -> Result<&TaskSlice> {
        self.tasks.get(i as usize).ok_or_else(|| {
            ConfigError(format!(
                "task {i}: the plan has {} task(s), 0 to {}",
                self.tasks.len(),
                self.tasks.len().saturating_sub(1)
            ))
            .into()
        })
    }

    /// The plan at `store`, if one was written.
    pub fn load(store: &Store) -> Result<Option<TaskPlan>> {
        let Some(b) = store.get_opt(PLAN)? else {
            return Ok(None);
        };
        let p: TaskPlan =
            serde_json::from_slice(&b).with_context(|| format!("{}: not a teach plan", store.url_of(PLAN)))?;
        if p.version != PLAN_VERSION {
            return Err(ConfigError(format!(
                "{}: plan version {}, this build reads {PLAN_VERSION}",
                store.url_of(PLAN),
                p.version
            ))
            .into());
        }
        Ok(Some(p))
    }

    /// The plan at `store`, or a configuration error saying how to make one.
    pub fn require(store: &Store) -> Result<TaskPlan> {
        TaskPlan::load(store)?.ok_or_else(|| {
            ConfigError(format!(
                "{}: no plan; run `stepwise teach plan --tasks N --store {store}` first",
                store.url_of(PLAN)
            ))
            .into()
        })
    }

    /// Writes the plan create-only. An identical plan already there is
    /// fine ([`Created::Exists`]); a different one is a configuration error.
    pub fn write(&self, store: &Store) -> Result<Created> {
        let body = serde_json::to_vec_pretty(self)?;
        match store.put_create(PLAN, body)? {
            Created::Created => Ok(Created::Created),
            Created::Exists => {
                let have = TaskPlan::require(store)?;
                if &have == self {
                    Ok(Created::Exists)
                } else {
                    Err(ConfigError(format!(
                        "{}: a different plan is already there (identity {}, {} tasks; this one: identity {}, {} tasks); plans are never replaced: use another root",
                        store.url_of(PLAN),
                        have.identity,
                        have.tasks.len(),
                        self.identity,
                        self.tasks.len()
                    ))
                    .into())
                }
            }
        }
    }

    /// Checks that the config a worker was given is the one planned.
    pub fn check_identity(&self, store: &Store, identity: &str) -> Result<()> {
        if self.identity != identity {
            return Err(ConfigError(format!(
                "{}: planned for teach identity {}, but this config's is {}; give the worker the config the plan was made with",
                store.url_of(PLAN),
                self.identity,
                identity
            ))
            .into());
        }
        Ok(())
    }
}

/// The local examples folder's `*.parquet` files, as the plan names them.
pub fn local_examples(dir: &Path) -> Result<Vec<StoredFile>> {
    let mut out = Vec::new();
    for n in parquet_names(dir)? {
        let (sha256, bytes) = sha256_and_len(&dir.join(&n))?;
        out.push(StoredFile {
            key: format!("{EXAMPLES}/{n}"),
            bytes,
            sha256,
        });
    }
    Ok(out)
}

fn parquet_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    Ok(names)
}

/// Uploads the plan's examples from the local examples folder (before the
/// plan is written: the plan names them by content).
pub fn upload_examples(store: &Store, plan: &TaskPlan, dir: &Path) -> Result<()> {
    for f in &plan.examples {
        store.put_file(&f.key, &dir.join(file_name(&f.key)), false)?;
    }
    Ok(())
}

/// The last part of a `/`-separated key.
fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// True when `path` holds exactly the bytes with this sha256.
fn has_digest(path: &Path, sha256: &str) -> bool {
    sha256_file(path).is_ok_and(|d| d == sha256)
}

/// Fetches the plan's examples into `dir`, checking each against the plan
/// (a file already there with the right digest is kept).
pub fn download_examples(store: &Store, plan: &TaskPlan, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    for f in &plan.examples {
        let path = dir.join(file_name(&f.key));
        if has_digest(&path, &f.sha256) {
            continue;
        }
        let bytes = store.get(&f.key)?;
        if sha256(&bytes) != f.sha256 {
            bail!(
                "{}: sha256 {} but the plan says {}",
                store.url_of(&f.key),
                sha256(&bytes),
                f.sha256
            );
        }
        stepwise_datasets::atomic::write_bytes(&path, &bytes)?;
    }
    Ok(())
}

/// `teach/_commits/<i>.json`: which attempt won task `i`, and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCommit {
    pub task: u32,
    pub identity: String,
    pub ids_sha256: String,
    pub attempt: String,
    /// Keys relative to `teach/`.
    pub files: Vec<ShardInfo>,
    pub rows: u64,
}

fn commit_key(i: u32) -> String {
    format!("_commits/{i}.json")
}

/// The commit of task `i`, if there is one.
pub fn load_commit(teach: &Store, i: u32) -> Result<Option<TaskCommit>> {
    let key = commit_key(i);
    let Some(b) = teach.get_opt(&key)? else {
        return Ok(None);
    };
    Ok(Some(serde_json::from_slice(&b).with_context(|| {
        format!("{}: not a task commit", teach.url_of(&key))
    })?))
}

/// A fresh attempt's name: when, where and which process, so that an
/// unreferenced folder says whose it was.
pub fn attempt_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(40)
        .collect();
    format!(
        "{}{:09}-{}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        if host.is_empty() { "host" } else { &host },
        std::process::id()
    )
}

/// What committing a task did.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// This attempt's commit was written.
    Committed(TaskCommit),
    /// Another attempt had committed first; this one's files are unreferenced.
    Lost { winner: TaskCommit, attempt: String },
}

/// Uploads the sealed shards of `shards` (a finished local shard set) under a
/// fresh attempt folder, then commits task `i` create-only.
pub fn commit(store: &Store, plan: &TaskPlan, i: u32, shards: &Path) -> Result<CommitOutcome> {
    let slice = plan.task(i)?;
    let m = Manifest::load(shards)?.with_context(|| format!("{}: no shards to commit", shards.display()))?;
    if m.config_hash != plan.identity {
        bail!(
            "{}: shards of identity {}, the plan's is {}",
            shards.display(),
            m.config_hash,
            plan.identity
        );
    }
    let teach = store.child(TEACH);
    let attempt = attempt_id();
    let mut files = Vec::new();
    for s in &m.shards {
        let key = format!("tasks/{i}/attempts/{attempt}/{}", s.file);
        teach.put_file(&key, &shards.join(&s.file), true)?;
        files.push(ShardInfo { file: key, ..s.clone() });
    }
    stepwise_datasets::atomic::crash_point("task:uploaded", Path::new(&format!("task-{i}")));
    let c = TaskCommit {
        task: i,
        identity: plan.identity.clone(),
        ids_sha256: slice.ids_sha256.clone(),
        attempt: attempt.clone(),
        rows: files.iter().map(|f| f.rows).sum(),
        files,
    };
    match teach.put_create(&commit_key(i), serde_json::to_vec_pretty(&c)?)? {
        Created::Created => Ok(CommitOutcome::Committed(c)),
        Created::Exists => {
            let winner = load_commit(&teach, i)?.context("a commit that exists reads back")?;
            Ok(CommitOutcome::Lost { winner, attempt })
        }
    }
}

/// What finalize did.
#[derive(Debug, Clone, PartialEq)]
pub struct Finalized {
    pub manifest: Manifest,
    /// The manifest was there already (this call wrote nothing).
    pub already: bool,
    pub examples: usize,
}

/// Checks every task's commit (identity, slice, each file's bytes and
/// sha256, its rows, no key twice, every example covered) and writes
/// `teach/_manifest.json` create-only. Missing commits are an
/// [`Incomplete`] error naming them.
pub fn finalize(store: &Store) -> Result<Finalized> {
    let plan = TaskPlan::require(store)?;
    let teach = store.child(TEACH);
    let examples: usize = plan.tasks.iter().map(|t| t.example_ids.len()).sum();
    if let Some(b) = teach.get_opt(MANIFEST_FILE)? {
        let manifest: Manifest =
            serde_json::from_slice(&b).with_context(|| format!("{}: not a manifest", teach.url_of(MANIFEST_FILE)))?;
        if manifest.config_hash != plan.identity {
            bail!(
                "{}: a manifest of identity {} under a plan of identity {}",
                teach.url_of(MANIFEST_FILE),
                manifest.config_hash,
                plan.identity
            );
        }
        return Ok(Finalized {
            manifest,
            already: true,
            examples,
        });
    }
    let mut commits = Vec::new();
    let mut missing = Vec::new();
    for i in 0..plan.task_count() {
        match load_commit(&teach, i)? {
            Some(c) => commits.push(c),
            None => missing.push(i),
        }
    }
    if !missing.is_empty() {
        return Err(Incomplete {
            missing,
            tasks: plan.task_count(),
        }
        .into());
    }
    let scratch = tempfile_path("finalize");
    let mut seen: HashSet<(String, u32)> = HashSet::new();
    let mut shards = Vec::new();
    for c in commits {
        let at = teach.url_of(&commit_key(c.task));
        let slice = plan.task(c.task)?;
        if c.identity != plan.identity || c.ids_sha256 != slice.ids_sha256 {
            bail!(
                "{at}: committed for another plan (identity {}, ids {})",
                c.identity,
                c.ids_sha256
            );
        }
        let ids: HashSet<&str> = slice.example_ids.iter().map(String::as_str).collect();
        let mut covered: HashSet<String> = HashSet::new();
        for f in &c.files {
            let url = teach.url_of(&f.file);
            let bytes = teach.get(&f.file)?;
            if bytes.len() as u64 != f.bytes || sha256(&bytes) != f.sha256 {
                bail!(
                    "{url}: {} bytes with sha256 {}, but {at} says {} bytes with {}",
                    bytes.len(),
                    sha256(&bytes),
                    f.bytes,
                    f.sha256
                );
            }
            std::fs::write(&scratch, &bytes).with_context(|| scratch.display().to_string())?;
            let keys = read_shard_keys(&scratch).with_context(|| url.clone())?;
            if keys.len() as u64 != f.rows {
                bail!("{url}: {} rows, but {at} says {}", keys.len(), f.rows);
            }
            for (id, sample) in keys {
                if !ids.contains(id.as_str()) {
                    bail!("{url}: example {id} is not in task {}'s slice", c.task);
                }
                covered.insert(id.clone());
                if !seen.insert((id.clone(), sample)) {
                    bail!("{url}: example {id} sample {sample} is written twice");
                }
            }
            shards.push(f.clone());
        }
        if covered.len() != ids.len() {
            bail!("{at}: rows for {} of the task's {} examples", covered.len(), ids.len());
        }
    }
    let _ = std::fs::remove_file(&scratch);
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        config_hash: plan.identity.clone(),
        total_rows: shards.iter().map(|s| s.rows).sum(),
        shards,
    };
    match teach.put_create(MANIFEST_FILE, serde_json::to_vec_pretty(&manifest)?)? {
        Created::Created => Ok(Finalized {
            manifest,
            already: false,
            examples,
        }),
        // Another finalize got there first, from the same commits.
        Created::Exists => finalize(store),
    }
}

fn tempfile_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(".stepwise-{what}-{}.parquet", attempt_id()))
}

/// What [`gc`] removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gc {
    pub removed_attempts: Vec<String>,
    pub removed_objects: usize,
    pub kept_attempts: usize,
}

/// Removes the attempt folders of committed tasks that their commit does
/// not name. An uncommitted task's attempts are kept: one may be uploading,
/// and its commit would name it.
pub fn gc(store: &Store, dry_run: bool) -> Result<Gc> {
    let teach = store.child(TEACH);
    let mut attempts: BTreeMap<(u32, String), Vec<String>> = BTreeMap::new();
    for e in teach.list("tasks")? {
        let parts: Vec<&str> = e.key.split('/').collect();
        if let ["tasks", i, "attempts", a, ..] = parts[..]
            && let Ok(i) = i.parse::<u32>()
        {
            attempts.entry((i, a.to_string())).or_default().push(e.key.clone());
        }
    }
    let mut out = Gc::default();
    let mut commits: BTreeMap<u32, Option<TaskCommit>> = BTreeMap::new();
    for ((i, a), keys) in attempts {
        let c = match commits.get(&i) {
            Some(c) => c.clone(),
            None => {
                let c = load_commit(&teach, i)?;
                commits.insert(i, c.clone());
                c
            }
        };
        match c {
            Some(c) if c.attempt != a => {
                if !dry_run {
                    for k in &keys {
                        teach.delete(k)?;
                    }
                }
                out.removed_objects += keys.len();
                out.removed_attempts.push(format!("tasks/{i}/attempts/{a}"));
            }
            _ => out.kept_attempts += 1,
        }
    }
    Ok(out)
}

/// Copies a finalized teach folder's shards into the local shard directory
/// `out` (`part-NNNNN.parquet` and a `_manifest.json`), checking each
/// file's sha256: what `stepwise train` and every local tool read.
pub fn pull(store: &Store, out: &Path) -> Result<Manifest> {
    let teach = store.child(TEACH);
    let b = teach.get_opt(MANIFEST_FILE)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: not finalized; run `stepwise teach finalize --store {store}`",
            teach.url_of(MANIFEST_FILE)
        )
    })?;
    let remote: Manifest = serde_json::from_slice(&b)?;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    if let Some(have) = Manifest::load(out)?
        && !have.shards.is_empty()
        && (have.config_hash != remote.config_hash || have.total_rows != remote.total_rows)
    {
        bail!(
            "{}: holds other shards (identity {}, {} rows); pull into an empty directory",
            out.display(),
            have.config_hash,
            have.total_rows
        );
    }
    let mut local = remote.clone();
    for (k, s) in remote.shards.iter().enumerate() {
        let name = format!("part-{k:05}.parquet");
        let path = out.join(&name);
        if !has_digest(&path, &s.sha256) {
            let bytes = teach.get(&s.file)?;
            if sha256(&bytes) != s.sha256 {
                bail!("{}: sha256 does not match the manifest", teach.url_of(&s.file));
            }
            stepwise_datasets::atomic::write_bytes(&path, &bytes)?;
        }
        local.shards[k].file = name;
    }
    local.store(out)?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_id_once_and_differ_by_at_most_one() {
        let ids: Vec<String> = (0..103).rev().map(|i| format!("id{i:03}")).collect();
        let p = TaskPlan::new("x", ids, 4, vec![]);
        let sizes: Vec<usize> = p.tasks.iter().map(|t| t.example_ids.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 103);
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        let all: Vec<&String> = p.tasks.iter().flat_map(|t| &t.example_ids).collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted and disjoint");
    }

    #[test]
    fn missing_tasks_are_named_as_slurm_array_ranges() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8], ","), "1-3,5,7-8");
        let e: anyhow::Error = Incomplete {
            missing: vec![2, 3],
            tasks: 4,
        }
        .into();
        assert_eq!(exit_code(&e), EXIT_INCOMPLETE);
        assert!(e.to_string().contains("--array=2-3"), "{e}");
        let c: anyhow::Error = anyhow::Error::new(ConfigError("x".into())).context("while planning");
        assert_eq!(exit_code(&c), EXIT_CONFIG);
    }

    #[test]
    fn a_different_plan_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_str().unwrap()).unwrap();
        let ids = || (0..10).map(|i| i.to_string()).collect::<Vec<_>>();
        let p = TaskPlan::new("a", ids(), 2, vec![]);
        assert_eq!(p.write(&s).unwrap(), Created::Created);
        assert_eq!(p.write(&s).unwrap(), Created::Exists);
        let e = TaskPlan::new("a", ids(), 3, vec![]).write(&s).unwrap_err();
        assert_eq!(exit_code(&e), EXIT_CONFIG, "{e}");
        assert_eq!(TaskPlan::require(&s).unwrap(), p);
    }
}
