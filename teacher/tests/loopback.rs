//! The client and the teach stage against the local server over real HTTP on loopback.

use std::time::{Duration, Instant};
use stepwise_datasets::Example;
use stepwise_datasets::answer::extract_answer;
use stepwise_datasets::arith::{ArithSpec, check_solution, generate};
use stepwise_datasets::shard::read_dir_rows;
use stepwise_teacher::prompt::{PromptStyle, Prompts};
use stepwise_teacher::protocol::{ChatRequest, Message};
use stepwise_teacher::server::{self, ArithTeacher, ChatModel, Fault, Faults, ServerConfig};
use stepwise_teacher::stage::{Price, TeachConfig, paths_in, teach};
use stepwise_teacher::{ClientConfig, TeacherClient, TeacherError};

fn examples(n: usize) -> Vec<Example> {
    let mut ex = generate(&ArithSpec {
        seed: 5,
        in_distribution: n,
        out_of_distribution: 0,
        ..Default::default()
    });
    ex.iter_mut()
        .for_each(|e| e.split = Some(stepwise_datasets::Split::Train));
    ex
}

fn client_cfg(base_url: String) -> ClientConfig {
    ClientConfig {
        base_url,
        concurrency: 8,
        idle_timeout: Duration::from_secs(5),
        max_retries: 6,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..Default::default()
    }
}

fn teach_cfg(client: ClientConfig) -> TeachConfig {
    TeachConfig {
        client,
        temperature: 0.0,
        max_tokens: 256,
        n: 1,
        seed: Some(1),
        model_digest: None,
        prompts: Prompts::load(None, PromptStyle::Chat).unwrap(),
        rows_per_shard: 50,
        price: Price {
            prompt_per_mtok: 1.0,
            completion_per_mtok: 2.0,
        },
        budget_usd: None,
        rationalize: false,
        keep_raw: false,
        reasoning_effort: None,
        top_logprobs: None,
    }
}

fn req(q: &str) -> ChatRequest {
    ChatRequest {
        model: "solver".into(),
        messages: vec![Message::new("user", q)],
        temperature: 0.0,
        max_tokens: 256,
        n: 1,
        seed: None,
        stop: vec![],
        reasoning_effort: None,
        top_logprobs: None,
    }
}

async fn server_with(faults: Faults) -> server::LocalServer {
    server::start(
        "127.0.0.1:0",
        ServerConfig {
            faults,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_solver_answers_exactly_and_the_mimic_wrongly_in_the_same_format() {
    let ex = &examples(1)[0];
    for (teacher, right) in [(ArithTeacher::Solver, true), (ArithTeacher::Mimic, false)] {
        let srv = server::start(
            "127.0.0.1:0",
            ServerConfig {
                model: std::sync::Arc::new(teacher),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let c = TeacherClient::new(client_cfg(srv.base_url())).unwrap();
        let mut r = req(&ex.input);
        r.model = teacher.name();
        let got = c.complete(&r, 100).await.unwrap();
        let text = &got.response.choices[0].message.content;
        let ans = extract_answer(text).unwrap();
        assert_eq!(ans == ex.label, right, "{teacher:?}: {text}");
        assert!(text.starts_with("There are ") && text.contains(" = "), "{text}");
        if right {
            check_solution(text).unwrap();
        }
        srv.shutdown().await;
    }
}

#[tokio::test]
async fn every_fault_class_is_retried() {
    for fault in [
        Fault::RateLimited,
        Fault::ServerError,
        Fault::Garbage,
        Fault::Truncated,
        Fault::Stall,
    ] {
        let srv = server_with(Faults {
            script: vec![fault, fault],
            retry_after_s: 0,
            stall: Duration::from_secs(3),
            ..Default::default()
        })
        .await;
        let mut cfg = client_cfg(srv.base_url());
        cfg.idle_timeout = Duration::from_millis(500);
        let c = TeacherClient::new(cfg).unwrap();
        let got = c
            .complete(&req(&examples(1)[0].input), 100)
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(got.attempts, 3, "{fault:?}");
        srv.shutdown().await;
    }
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let srv = server_with(Faults {
        script: vec![Fault::RateLimited],
        retry_after_s: 1,
        ..Default::default()
    })
    .await;
    let c = TeacherClient::new(client_cfg(srv.base_url())).unwrap();
    let t = Instant::now();
    let got = c.complete(&req(&examples(1)[0].input), 100).await.unwrap();
    assert_eq!(got.attempts, 2);
    assert!(t.elapsed() >= Duration::from_secs(1), "retried after {:?}", t.elapsed());
    srv.shutdown().await;
}

#[tokio::test]
async fn a_request_that_keeps_failing_is_recorded_not_written() {
    let srv = server_with(Faults {
        p_server_error: 1.0,
        ..Default::default()
    })
    .await;
    let mut cfg = client_cfg(srv.base_url());
    cfg.max_retries = 2;
    let c = TeacherClient::new(cfg.clone()).unwrap();
    match c.complete(&req("x"), 10).await {
        Err(TeacherError::Request { attempts, reason }) => {
            assert_eq!(attempts, 3);
            assert!(reason.contains("500"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(dir.path());
    let s = teach(&examples(4), teach_cfg(cfg), &paths).await.unwrap();
    assert_eq!((s.failed, s.rows_written), (4, 0));
    let failures = std::fs::read_to_string(&paths.failures).unwrap();
    assert_eq!(failures.lines().count(), 4);
    assert!(failures.contains("HTTP 500"));
    assert!(read_dir_rows(&paths.shards).unwrap().is_empty());
    srv.shutdown().await;
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let srv = server_with(Faults {
        script: vec![Fault::Unauthorized],
        ..Default::default()
    })
    .await;
    let c = TeacherClient::new(client_cfg(srv.base_url())).unwrap();
    match c.complete(&req("x"), 10).await {
        Err(TeacherError::Request { attempts, reason }) => {
            assert_eq!((attempts, reason.contains("401")), (1, true), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn the_request_rate_stays_at_the_limit() {
    let srv = server_with(Faults::default()).await;
    let mut cfg = client_cfg(srv.base_url());
    cfg.requests_per_minute = Some(1200); // 20 per second
    cfg.concurrency = 16;
    let c = std::sync::Arc::new(TeacherClient::new(cfg).unwrap());
    let ex = examples(1).remove(0);
    let n = 41;
    let t = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, q) = (c.clone(), ex.input.clone());
            tokio::spawn(async move { c.complete(&req(&q), 10).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // n requests spaced evenly span n-1 intervals.
    let rate = (n - 1) as f64 / t.elapsed().as_secs_f64();
    assert!(
        (rate - 20.0).abs() <= 2.0,
        "measured {rate:.2} requests/s against a limit of 20"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn the_stage_writes_one_row_per_sample_and_the_cache_prevents_resending() {
    let srv = server_with(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(dir.path());
    let ex = examples(30);
    let mut cfg = teach_cfg(client_cfg(srv.base_url()));
    cfg.n = 2;
    let s = teach(&ex, cfg.clone(), &paths).await.unwrap();
    assert_eq!(
        (s.requests_sent, s.rows_written, s.agree_with_gold, s.failed),
        (30, 60, 60, 0)
    );
    assert!(s.cost_usd > 0.0 && s.prompt_tokens > 0);
    let rows = read_dir_rows(&paths.shards).unwrap();
    assert_eq!(rows.len(), 60);
    assert!(
        rows.iter()
            .all(|r| r.vote_share == 1.0 && r.prompt_template == "arithmetic")
    );
    // Re-run: everything is in the shards; nothing is asked.
    let s2 = teach(&ex, cfg.clone(), &paths).await.unwrap();
    assert_eq!((s2.already_done, s2.requests_sent), (30, 0));
    // Fresh shards, same cache: answered from the cache.
    let mut p2 = paths_in(&dir.path().join("again"));
    p2.cache = paths.cache.clone();
    let s3 = teach(&ex, cfg, &p2).await.unwrap();
    assert_eq!((s3.cache_hits, s3.requests_sent, s3.rows_written), (30, 0, 60));
    assert_eq!(srv.stats.completions.load(std::sync::atomic::Ordering::SeqCst), 30);
    srv.shutdown().await;
}

#[tokio::test]
async fn the_budget_cap_stops_cleanly() {
    let srv = server_with(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = teach_cfg(client_cfg(srv.base_url()));
    cfg.client.concurrency = 1;
    cfg.price = Price {
        prompt_per_mtok: 1000.0,
        completion_per_mtok: 1000.0,
    };
    cfg.budget_usd = Some(0.5);
    let s = teach(&examples(40), cfg, &paths_in(dir.path())).await.unwrap();
    assert!(s.stopped_by_budget);
    assert!(s.not_attempted > 0 && s.rows_written > 0, "{s:?}");
    assert_eq!(s.rows_written as usize + s.not_attempted, 40);
    srv.shutdown().await;
}

#[tokio::test]
async fn the_api_key_never_reaches_any_file() {
    const KEY: &str = "sk-test-very-secret-4242";
    // SAFETY: set once, before any thread of this test reads the environment.
    unsafe { std::env::set_var("STEPWISE_TEST_KEY", KEY) };
    let srv = server_with(Faults {
        script: vec![Fault::ServerError],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = client_cfg(srv.base_url());
    cfg.api_key_env = Some("STEPWISE_TEST_KEY".into());
    let mut tc = teach_cfg(cfg);
    tc.keep_raw = true;
    let s = teach(&examples(10), tc, &paths_in(dir.path())).await.unwrap();
    assert_eq!(s.rows_written, 10);
    let mut files = 0;
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        files += 1;
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "key found in {}",
            entry.display()
        );
    }
    assert!(files > 10);
    assert!(!format!("{:?}", TeacherClient::new(client_cfg(srv.base_url())).unwrap()).contains(KEY));
    srv.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn the_mimic_is_wrong_and_well_formed_on_nearly_every_problem() {
    let ex = examples(500);
    let mut chained = 0;
    for e in &ex {
        let text = ArithTeacher::Mimic.answer(&e.input, 7);
        let ans = extract_answer(&text).unwrap();
        assert_ne!(ans, e.label, "{text}");
        if check_solution(&text).is_ok() {
            chained += 1;
        }
    }
    // Its rationales are internally consistent chains, just of the wrong numbers.
    assert!(
        chained >= 490,
        "only {chained} of 500 mimic rationales are step-by-step chains"
    );
}

#[test]
fn operational_knobs_are_not_part_of_the_teach_identity() {
    let base = teach_cfg(client_cfg("http://127.0.0.1:1/v1".into()));
    let mut knobs = base.clone();
    knobs.client.base_url = "http://10.0.0.1:8000/v1".into();
    knobs.client.concurrency = 3;
    knobs.client.requests_per_minute = Some(60);
    knobs.client.tokens_per_minute = Some(1000);
    knobs.client.idle_timeout = Duration::from_secs(3600);
    knobs.client.total_timeout = Some(Duration::from_secs(7200));
    knobs.client.stream = false;
    knobs.client.max_retries = 1;
    knobs.client.api_key_env = Some("SOME_KEY".into());
    knobs.rows_per_shard = 7;
    knobs.price = Price {
        prompt_per_mtok: 9.0,
        completion_per_mtok: 9.0,
    };
    knobs.budget_usd = Some(1.0);
    knobs.keep_raw = true;
    assert_eq!(base.identity(), knobs.identity());
    for (what, changed) in [
        (
            "temperature",
            TeachConfig {
                temperature: 0.7,
                ..base.clone()
            },
        ),
        (
            "max_tokens",
            TeachConfig {
                max_tokens: 9,
                ..base.clone()
            },
        ),
        ("n", TeachConfig { n: 3, ..base.clone() }),
        (
            "seed",
            TeachConfig {
                seed: Some(2),
                ..base.clone()
            },
        ),
        (
            "rationalize",
            TeachConfig {
                rationalize: true,
                ..base.clone()
            },
        ),
        (
            "model file",
            TeachConfig {
                model_digest: Some("ab".into()),
                ..base.clone()
            },
        ),
        (
            "prompt style",
            TeachConfig {
                prompts: Prompts::load(None, PromptStyle::Plain).unwrap(),
                ..base.clone()
            },
        ),
    ] {
        assert_ne!(base.identity(), changed.identity(), "{what} changes what is asked");
    }
}

#[tokio::test]
async fn an_edited_prompt_retires_the_shards_and_the_cache_answers_every_unchanged_request() {
    let srv = server_with(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(dir.path());
    let ex = examples(20);
    let cfg = teach_cfg(client_cfg(srv.base_url()));
    let s = teach(&ex, cfg.clone(), &paths).await.unwrap();
    assert_eq!(s.requests_sent, 20);
    // A template no example uses: another identity, but every request is unchanged.
    let prompts_dir = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts_dir).unwrap();
    std::fs::write(prompts_dir.join("yes_no.txt"), "Q: {input}\nA:").unwrap();
    let edited = TeachConfig {
        prompts: Prompts::load(Some(&prompts_dir), PromptStyle::Chat).unwrap(),
        ..cfg.clone()
    };
    assert_ne!(edited.identity(), cfg.identity());
    let s2 = teach(&ex, edited.clone(), &paths).await.unwrap();
    assert_eq!(
        (s2.already_done, s2.requests_sent, s2.cache_hits, s2.rows_written),
        (0, 0, 20, 20)
    );
    let retired = paths.retired.join(format!("shards-{}", cfg.identity()));
    assert_eq!(
        read_dir_rows(&retired).unwrap().len(),
        20,
        "the earlier rows are kept aside"
    );
    // The template the examples use: every request is new.
    std::fs::write(prompts_dir.join("arithmetic.txt"), "Solve: {input}\nA:").unwrap();
    let edited2 = TeachConfig {
        prompts: Prompts::load(Some(&prompts_dir), PromptStyle::Chat).unwrap(),
        ..cfg
    };
    let s3 = teach(&ex, edited2, &paths).await.unwrap();
    assert_eq!((s3.requests_sent, s3.cache_hits), (20, 0));
    assert_eq!(read_dir_rows(&paths.shards).unwrap().len(), 20);
    assert_eq!(srv.stats.completions.load(std::sync::atomic::Ordering::SeqCst), 40);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_reasoning_models_thought_lands_in_the_reasoning_columns_in_each_of_its_forms() {
    use stepwise_teacher::server::ReasoningForm;
    let exs = examples(6);
    for form in [
        ReasoningForm::ReasoningContent,
        ReasoningForm::Reasoning,
        ReasoningForm::Think,
        ReasoningForm::ThinkOpen,
    ] {
        for stream in [false, true] {
            let srv = server::start(
                "127.0.0.1:0",
                ServerConfig {
                    reasoning: Some(form),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let mut cc = client_cfg(srv.base_url());
            cc.stream = stream;
            let s = teach(&exs, teach_cfg(cc), &paths_in(dir.path())).await.unwrap();
            srv.shutdown().await;
            assert_eq!((s.rows_written, s.agree_with_gold), (6, 6), "{form:?} stream {stream}");
            for r in read_dir_rows(&dir.path().join("shards")).unwrap() {
                let what = format!("{form:?} stream {stream}: {r:?}");
                // The visible answer is the conclusion only; the steps are the thought.
                assert!(r.rationale.starts_with("So the answer is "), "{what}");
                assert!(!r.rationale.contains("think>"), "{what}");
                let thought = r.reasoning.as_deref().unwrap_or_else(|| panic!("no reasoning: {what}"));
                assert!(thought.starts_with("There are ") && thought.contains(" = "), "{what}");
                assert!(!thought.contains("think>"), "{what}");
                assert!(
                    r.reasoning_tokens.is_some_and(|t| t > 0 && t < r.completion_tokens),
                    "{what}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_rate_headers_keep_a_run_within_its_budget_without_a_single_429() {
    use std::sync::atomic::Ordering;
    // 3,000 requests a minute (50 a second) and 600,000 tokens a minute
    // (10,000 a second), buckets of 2 s (room for the first 8 requests
    // sent before any header is seen): the token budget binds after that.
    let srv = server::start(
        "127.0.0.1:0",
        ServerConfig {
            rate: Some(server::RateBudget {
                requests_per_minute: 3000,
                tokens_per_minute: 600_000,
                burst: Duration::from_secs(2),
            }),
            latency: Duration::from_millis(5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let n = 150;
    let ex = examples(n);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = teach_cfg(ClientConfig {
        // Half what the first bucket holds goes before any header is seen; after that only the headers pace it.
        concurrency: 8,
        ..client_cfg(srv.base_url())
    });
    cfg.max_tokens = 256;
    let start = Instant::now();
    let s = teach(&ex, cfg, &paths_in(dir.path())).await.unwrap();
    let took = start.elapsed();
    let refused = srv.stats.rate_limited.load(Ordering::SeqCst);
    eprintln!("{n} requests in {took:?}, {refused} refused with 429");
    assert_eq!(s.rows_written, n as u64);
    assert_eq!(refused, 0, "no 429 when the headers are honoured");
    assert_eq!(
        srv.stats.requests.load(Ordering::SeqCst),
        n as u64,
        "no request sent twice"
    );
    // ~450 tokens a request settled, 150 of them, 20,000 at first and 10,000 a second after.
    assert!(
        took >= Duration::from_millis(2400),
        "the budget was not binding: {took:?}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_endpoints_share_the_load_and_the_run_survives_one_killed_mid_run() {
    use std::sync::atomic::Ordering;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(
            server::start(
                "127.0.0.1:0",
                ServerConfig {
                    latency: Duration::from_millis(20),
                    ..Default::default()
                },
            )
            .await
            .unwrap(),
        );
    }
    let urls: Vec<String> = servers.iter().map(|s| s.base_url()).collect();
    let n = 900;
    let ex = examples(n);
    let dir = tempfile::tempdir().unwrap();
    let cfg = teach_cfg(ClientConfig {
        concurrency: 24,
        more_urls: urls[1..].to_vec(),
        ..client_cfg(urls[0].clone())
    });
    let doomed = servers.pop().unwrap();
    let doomed_stats = doomed.stats.clone();
    let kill = tokio::spawn(async move {
        while doomed_stats.completions.load(Ordering::SeqCst) < 60 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        doomed.shutdown().await;
        doomed_stats.completions.load(Ordering::SeqCst)
    });
    let s = teach(&ex, cfg, &paths_in(dir.path())).await.unwrap();
    let answered_by_doomed = kill.await.unwrap();
    assert_eq!(s.rows_written, n as u64, "every example answered despite the kill");
    assert_eq!(s.failed, 0);
    let live: Vec<u64> = servers
        .iter()
        .map(|s| s.stats.completions.load(Ordering::SeqCst))
        .collect();
    eprintln!(
        "answers: {live:?} and {answered_by_doomed} from the killed one; {:?}",
        s.endpoints
    );
    // The two that lived shared the rest about evenly (fewest outstanding first).
    assert!(live.iter().all(|c| *c > 250), "{live:?}");
    assert_eq!(s.endpoints.len(), 3);
    let dead = &s.endpoints[2];
    assert!(dead.drained >= 1 && dead.ok >= 60, "{dead:?}");
    for srv in servers {
        srv.shutdown().await;
    }
}
