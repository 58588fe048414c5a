//! Teacher-stage throughput and client CPU (DESIGN.md section 7).
//!
//! `cargo bench -p stepwise-teacher --bench throughput [-- LATENCY_MS N]`
//! starts the local solver server with a fixed latency in a child process,
//! runs the teach stage (client, cache and shard writing) at concurrency 64
//! and 256, and prints throughput against the bound C/L and the client's CPU
//! seconds per 1,000 requests; then the same with Python asyncio + httpx
//! (bench/teacher_client_httpx.py, run with .venv/bin/python or $STEPWISE_PYTHON)
//! and with bespokelabs-curator (bench/teacher_peer.py, with $STEPWISE_PEER_PYTHON).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stepwise_datasets::arith::{ArithSpec, generate};
use stepwise_teacher::ClientConfig;
use stepwise_teacher::prompt::{PromptStyle, Prompts};
use stepwise_teacher::server::{self, ServerConfig};
use stepwise_teacher::stage::{Price, TeachConfig, paths_in, teach};

/// (user, system) CPU seconds of this process.
fn cpu_seconds() -> (f64, f64) {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(u.ru_utime), t(u.ru_stime))
}

fn serve_child(latency_ms: u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = ServerConfig {
            latency: Duration::from_millis(latency_ms),
            ..Default::default()
        };
        let srv = server::start("127.0.0.1:0", cfg).await.unwrap();
        println!("{}", srv.base_url());
        // Serve until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
        srv.shutdown().await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if std::env::var_os("STEPWISE_BENCH_SERVE").is_some() {
        return serve_child(args.first().and_then(|a| a.parse().ok()).unwrap_or(200));
    }
    let latency_ms: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(200);
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4000);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg(latency_ms.to_string())
        .env("STEPWISE_BENCH_SERVE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_string();
    let examples = generate(&ArithSpec {
        seed: 1,
        in_distribution: n,
        out_of_distribution: 0,
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("server: local solver, {latency_ms} ms latency, separate process; {n} requests per run");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let py = std::env::var_os("STEPWISE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    for c in [64usize, 256] {
        // One JSON body per answer, as the httpx client asks; then streamed
        // (the default), to show what streaming costs the client.
        for stream in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = TeachConfig {
                client: ClientConfig {
                    base_url: url.clone(),
                    concurrency: c,
                    stream,
                    ..Default::default()
                },
                temperature: 0.0,
                max_tokens: 256,
                n: 1,
                seed: None,
                model_digest: None,
                prompts: Prompts::load(None, PromptStyle::Plain).unwrap(),
                rows_per_shard: 100_000,
                price: Price::default(),
                budget_usd: None,
                rationalize: false,
                keep_raw: false,
                reasoning_effort: None,
                top_logprobs: None,
            };
            let (t, cpu0) = (Instant::now(), cpu_seconds());
            let s = rt.block_on(teach(&examples, cfg, &paths_in(dir.path()))).unwrap();
            let cpu1 = cpu_seconds();
            let (wall, user, sys) = (t.elapsed().as_secs_f64(), cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
            let cpu = user + sys;
            assert_eq!(s.rows_written as usize, n);
            let bound = c as f64 / (latency_ms as f64 / 1000.0);
            let rps = n as f64 / wall;
            let label = if stream { "streamed" } else { "stepwise" };
            println!(
                "{label:<9} C={c:<4} {rps:8.1} req/s = {:5.1}% of C/L = {bound:.0};  client CPU {:.3} s per 1000 requests ({:.3} user, {:.3} system)",
                100.0 * rps / bound,
                1000.0 * cpu / n as f64,
                1000.0 * user / n as f64,
                1000.0 * sys / n as f64
            );
            if stream {
                continue;
            }
            // The Python sides: asyncio + httpx, and a peer tool users pick
            // for this job (bespokelabs-curator, bench/teacher_peer.py, from
            // $STEPWISE_PEER_PYTHON); each skipped when its Python is missing.
            let peer_py = std::env::var_os("STEPWISE_PEER_PYTHON").map(PathBuf::from);
            for (name, python, script) in [
                ("httpx", Some(py.clone()), "bench/teacher_client_httpx.py"),
                ("curator", peer_py, "bench/teacher_peer.py"),
            ] {
                let Some(python) = python else {
                    println!("{name:<9} C={c:<4} skipped: set STEPWISE_PEER_PYTHON (see bench/teacher_peer.py)");
                    continue;
                };
                let out = dir.path().join(format!("{name}.jsonl"));
                match Command::new(&python)
                    .arg(root.join(script))
                    .args([&url, &n.to_string(), &c.to_string(), out.to_str().unwrap()])
                    .output()
                {
                    Ok(o) if o.status.success() => {
                        let line = String::from_utf8_lossy(&o.stdout);
                        let f = |k: &str| -> f64 {
                            line.split_whitespace()
                                .find_map(|kv| kv.strip_prefix(k))
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(f64::NAN)
                        };
                        let (pw, pc) = (f("wall_s="), f("cpu_s="));
                        println!(
                            "{name:<9} C={c:<4} {:8.1} req/s = {:5.1}% of C/L;  client CPU {:.3} s per 1000 requests;  CPU ratio {name}/stepwise {:.1}x, throughput stepwise/{name} {:.2}x",
                            n as f64 / pw,
                            100.0 * n as f64 / pw / bound,
                            1000.0 * pc / n as f64,
                            pc / cpu,
                            rps / (n as f64 / pw)
                        );
                    }
                    Ok(o) => println!("{name} side failed: {}", String::from_utf8_lossy(&o.stderr)),
                    Err(e) => println!("cannot run {} ({e}): run scripts/setup-data.sh", python.display()),
                }
            }
        }
    }
    drop(child.stdin.take());
    let _ = child.wait();
}
