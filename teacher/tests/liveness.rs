//! The local server never works for nobody, and the client's time-out
//! measures liveness: over real HTTP on loopback, against a slow batched
//! model that decodes one word per step, as the gguf backend decodes tokens.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use stepwise_teacher::protocol::{ChatRequest, Message};
use stepwise_teacher::server::{self, ChatModel, Fault, Faults, ModelJob, ModelOutput, ServerConfig};
use stepwise_teacher::{ClientConfig, TeacherClient, TeacherError};

/// A batched model that takes `step` per decoding step and writes one word
/// a step until `max_tokens`; a row whose reader has gone stops at once.
struct Ticker {
    step: Duration,
}

impl ChatModel for Ticker {
    fn name(&self) -> String {
        "ticker".into()
    }

    fn complete(&self, jobs: &[ModelJob]) -> Vec<Result<ModelOutput, String>> {
        self.complete_streaming(jobs, &mut |_, _| true)
    }

    fn complete_streaming(
        &self,
        jobs: &[ModelJob],
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Vec<Result<ModelOutput, String>> {
        let want: Vec<u32> = jobs.iter().map(|j| j.max_tokens.unwrap_or(10)).collect();
        let mut live = vec![true; jobs.len()];
        let mut text = vec![String::new(); jobs.len()];
        let mut made = vec![0u32; jobs.len()];
        while live.iter().any(|&l| l) {
            std::thread::sleep(self.step);
            for i in 0..jobs.len() {
                if !live[i] {
                    continue;
                }
                let w = format!("w{} ", made[i]);
                text[i].push_str(&w);
                made[i] += 1;
                live[i] = on_text(i, &w) && made[i] < want[i];
            }
        }
        (0..jobs.len())
            .map(|i| {
                Ok(ModelOutput {
                    logprobs: None,
                    text: std::mem::take(&mut text[i]),
                    prompt_tokens: 3,
                    completion_tokens: made[i],
                    finish_reason: "length",
                })
            })
            .collect()
    }
}

async fn ticker(step_ms: u64, max_batch: usize, keepalive: Duration) -> server::LocalServer {
    server::start(
        "127.0.0.1:0",
        ServerConfig {
            model: Arc::new(Ticker {
                step: Duration::from_millis(step_ms),
            }),
            max_batch,
            keepalive,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn req(q: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: "ticker".into(),
        messages: vec![Message::new("user", q)],
        temperature: 0.0,
        max_tokens,
        n: 1,
        seed: None,
        stop: vec![],
        reasoning_effort: None,
        top_logprobs: None,
    }
}

fn client(base_url: String, idle: Duration, stream: bool) -> TeacherClient {
    TeacherClient::new(ClientConfig {
        base_url,
        model: "ticker".into(),
        idle_timeout: idle,
        stream,
        max_retries: 0,
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn a_client_that_disconnects_mid_batch_stops_being_decoded() {
    for stream in [false, true] {
        let srv = ticker(20, 4, Duration::from_secs(5)).await;
        let stats = srv.stats.clone();
        let c = Arc::new(client(srv.base_url(), Duration::from_secs(30), stream));
        let gone = {
            let c = c.clone();
            tokio::spawn(async move { c.complete(&req("gone", 100), 100).await })
        };
        let kept = {
            let c = c.clone();
            tokio::spawn(async move { c.complete(&req("kept", 100), 100).await })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        gone.abort();
        let got = kept.await.unwrap().unwrap();
        assert_eq!(got.response.usage.unwrap().completion_tokens, 100);
        let steps = stats.decode_steps.load(Ordering::SeqCst);
        // 100 steps for the kept request; the gone one's stop once its
        // connection closed (about 20 of them, in 400 ms), not 100.
        assert!((100..150).contains(&steps), "stream {stream}: {steps} decoding steps");
        assert_eq!(stats.dropped.load(Ordering::SeqCst), 1, "stream {stream}");
        srv.shutdown().await;
    }
}

#[tokio::test]
async fn identical_requests_in_flight_are_decoded_once_and_answered_to_each() {
    let srv = ticker(10, 8, Duration::from_secs(5)).await;
    let streamed = client(srv.base_url(), Duration::from_secs(30), true);
    let whole = client(srv.base_url(), Duration::from_secs(30), false);
    let r = req("same question", 30);
    let (a, b) = tokio::join!(streamed.complete(&r, 30), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        whole.complete(&r, 30).await
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.response.choices[0].message.content,
        b.response.choices[0].message.content
    );
    assert!(a.response.choices[0].message.content.ends_with("w29 "));
    assert_eq!(srv.stats.joined.load(Ordering::SeqCst), 1);
    assert_eq!(srv.stats.decode_steps.load(Ordering::SeqCst), 30, "decoded once");
    // Once answered, the same request is decoded again (nothing is cached here).
    whole.complete(&r, 30).await.unwrap();
    assert_eq!(srv.stats.decode_steps.load(Ordering::SeqCst), 60);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_stalled_stream_times_out_while_a_slow_but_live_one_does_not() {
    let idle = Duration::from_millis(800);
    // A word every 300 ms for 3 s: each gap is under the idle time-out.
    let srv = ticker(300, 4, Duration::from_secs(5)).await;
    let t = Instant::now();
    let got = client(srv.base_url(), idle, true)
        .complete(&req("slow", 10), 10)
        .await
        .unwrap();
    assert!(t.elapsed() > Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(got.response.choices[0].message.content.split_whitespace().count(), 10);
    // Without streaming the same answer is one silence of 3 s: a time-out.
    let err = client(srv.base_url(), idle, false)
        .complete(&req("slow 2", 10), 10)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TeacherError::Request { reason, .. } if reason.contains("timeout")),
        "{err}"
    );
    srv.shutdown().await;

    // A server that goes silent: the attempt ends after the idle time, not the stall.
    let stalled = server::start(
        "127.0.0.1:0",
        ServerConfig {
            faults: Faults {
                script: vec![Fault::Stall],
                stall: Duration::from_secs(20),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let c = ClientConfig {
        base_url: stalled.base_url(),
        idle_timeout: idle,
        max_retries: 0,
        ..Default::default()
    };
    let mut r = req("Ann has 3 apples.", 10);
    r.model = "solver".into();
    let t = Instant::now();
    let err = TeacherClient::new(c).unwrap().complete(&r, 10).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(err.to_string().contains("timeout"), "{err}");
    stalled.shutdown().await;
}

#[tokio::test]
async fn a_request_queued_behind_a_long_batch_is_kept_alive() {
    // One row at a time, 2 s each: the second request waits 2 s with no
    // text, longer than the client's idle time-out, and the server's
    // heartbeats say it is queued, not stalled.
    let srv = ticker(100, 1, Duration::from_millis(200)).await;
    let c = client(srv.base_url(), Duration::from_millis(800), true);
    let first = req("first", 20);
    let (a, b) = tokio::join!(c.complete(&first, 20), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.complete(&req("second", 20), 20).await
    });
    assert_eq!(a.unwrap().attempts, 1);
    assert_eq!(b.unwrap().attempts, 1);
    srv.shutdown().await;
}
