//! Rate control from the server's own word: [`Pacer`] reads OpenAI's
//! `x-ratelimit-*` headers on every answer and holds a request back until
//! the budget they describe has room for it (one request, and its most
//! tokens: prompt + `max_tokens` × `n`, settled to the actual usage when
//! its answer comes), so a run honouring them sees no 429 once the first
//! answer has told the budget (the first `concurrency` requests go before
//! any header is known: within a provider's per-minute bucket, and a
//! local model's first batch is not held back for a probe). [`Aimd`] is the
//! fallback for servers that send no headers: the requests in flight
//! halve on a 429 or 503 and grow by one per window of successes.

use reqwest::header::HeaderMap;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// OpenAI's durations: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n_end == 0 {
            return None;
        }
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u_end] {
            "ms" => 1e-3,
            "s" | "" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[u_end..];
    }
    total.is_finite().then(|| Duration::from_secs_f64(total.max(0.0)))
}

/// One limit as an answer described it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The request whose answer said it (its send order).
    seq: u64,
    /// When its answer came: the server's count was taken before (when it
    /// admitted the request), so what came back since is not over-counted.
    at: Instant,
    remaining: f64,
    /// What requests sent just before it may hold ([`reordered`]).
    uncertain: (f64, f64),
    /// The most the budget holds: the limit, or less when the server's
    /// bucket is smaller (what remains plus what comes back by the reset).
    cap: f64,
    /// How fast the budget comes back, per second.
    per_s: f64,
}

fn read(h: &HeaderMap, kind: &str) -> Option<(f64, f64, Option<Duration>)> {
    let get = |name: String| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let remaining: f64 = get(format!("x-ratelimit-remaining-{kind}"))?.trim().parse().ok()?;
    let limit: f64 = get(format!("x-ratelimit-limit-{kind}"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(remaining);
    let reset = get(format!("x-ratelimit-reset-{kind}")).and_then(|v| parse_duration(&v));
    Some((remaining, limit, reset))
}

struct Sent {
    seq: u64,
    at: Instant,
    tokens: f64,
}

/// Requests sent shortly before the one an answer speaks of (within its
/// round trip) may have reached the server after it, over another
/// connection: its count may not hold them, so they are counted again.
fn reordered(k_sent: Instant, k_answered: Instant, x: &Sent) -> bool {
    k_sent.duration_since(x.at) <= k_answered.duration_since(k_sent)
}

#[derive(Default)]
struct PacerState {
    next_seq: u64,
    /// Requests sent and the tokens each holds (its most, until settled).
    sent: VecDeque<Sent>,
    requests: Option<Seen>,
    tokens: Option<Seen>,
}

impl PacerState {
    /// What the limit has room for now: what the server last said, what
    /// came back since, less what was sent after the request it said it of.
    fn room(&self, seen: &Seen, now: Instant, tokens: bool) -> f64 {
        let back = seen.per_s * now.duration_since(seen.at).as_secs_f64();
        let after: f64 = self
            .sent
            .iter()
            .filter(|x| x.seq > seen.seq)
            .map(|x| if tokens { x.tokens } else { 1.0 })
            .sum();
        let uncertain = if tokens { seen.uncertain.1 } else { seen.uncertain.0 };
        (seen.remaining + back).min(seen.cap) - after - uncertain
    }
}

/// Holds requests to the budget the server's headers describe.
#[derive(Default)]
pub struct Pacer {
    state: Mutex<PacerState>,
    /// One request at a time waits for room, in order.
    queue: tokio::sync::Mutex<()>,
}

/// A request let through: its place in the send order.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(pub u64);

impl Pacer {
    /// Waits until the last headers seen leave room for one request with
    /// `tokens` at most, and records it as sent.
    pub async fn admit(&self, tokens: u32) -> Ticket {
        let _turn = self.queue.lock().await;
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap();
                let now = Instant::now();
                let mut wait = 0.0f64;
                for (seen, need, is_tok) in [(s.requests, 1.0, false), (s.tokens, tokens as f64, true)] {
                    if let Some(seen) = seen {
                        let need = need.min(seen.cap);
                        let room = s.room(&seen, now, is_tok);
                        if room < need && seen.per_s > 0.0 {
                            wait = wait.max((need - room) / seen.per_s);
                        }
                    }
                }
                if wait <= 0.0 {
                    let seq = s.next_seq;
                    s.next_seq += 1;
                    s.sent.push_back(Sent {
                        seq,
                        at: now,
                        tokens: tokens as f64,
                    });
                    // Keep only what a current limit still counts.
                    let oldest = [s.requests, s.tokens].iter().flatten().map(|x| x.seq).min();
                    if let Some(o) = oldest {
                        while s.sent.front().is_some_and(|x| x.seq <= o) && s.sent.len() > 1 {
                            s.sent.pop_front();
                        }
                    } else if s.sent.len() > 4096 {
                        s.sent.pop_front();
                    }
                    return Ticket(seq);
                }
                wait
            };
            tracing::trace!(wait_ms = (wait * 1000.0) as u64, "pacing to the server's rate limits");
            tokio::time::sleep(Duration::from_secs_f64(wait.clamp(0.002, 1.0))).await;
        }
    }

    /// Reads an answer's headers (a 429's too) and, when known, the tokens
    /// the request actually used.
    pub fn observe(&self, t: Ticket, headers: &HeaderMap, used_tokens: Option<u32>) {
        let has_limits = headers.contains_key("x-ratelimit-remaining-requests")
            || headers.contains_key("x-ratelimit-remaining-tokens");
        let mut guard = self.state.lock().unwrap();
        let s = &mut *guard;
        if !has_limits && (used_tokens.is_none() || (s.requests.is_none() && s.tokens.is_none())) {
            return; // a server without rate headers: nothing to pace by
        }
        let at = Instant::now();
        // Recent requests are at the back.
        let k = s.sent.iter().rposition(|x| x.seq == t.0);
        let sent_at = k.map(|k| s.sent[k].at);
        if let (Some(u), Some(k)) = (used_tokens, k) {
            let e = &mut s.sent[k];
            e.tokens = e.tokens.min(u as f64);
        }
        if !has_limits {
            return;
        }
        let uncertain = sent_at.map_or((0.0, 0.0), |k_at| {
            s.sent
                .iter()
                .filter(|x| x.seq < t.0 && reordered(k_at, at, x))
                .fold((0.0, 0.0), |a, x| (a.0 + 1.0, a.1 + x.tokens))
        });
        for (kind, slot) in [("requests", &mut s.requests), ("tokens", &mut s.tokens)] {
            let Some((remaining, limit, reset)) = read(headers, kind) else {
                continue;
            };
            if slot.is_some_and(|x| x.seq > t.0) {
                continue; // an older answer arriving late says less
            }
            // The limits are per minute: they come back at limit/60 a second,
            // and are whole again at the reset.
            let per_s = limit / 60.0;
            let cap = match reset {
                Some(r) => (remaining + per_s * r.as_secs_f64()).min(limit),
                None => limit,
            };
            *slot = Some(Seen {
                seq: t.0,
                at,
                remaining,
                uncertain,
                cap,
                per_s,
            });
        }
    }
}

/// Additive increase, multiplicative decrease of the requests in flight.
pub struct Aimd {
    state: Mutex<(usize, f64)>,
    max: usize,
    freed: tokio::sync::Notify,
}

/// A place in flight, given back when dropped.
pub struct Slot<'a>(&'a Aimd);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().0 -= 1;
        self.0.freed.notify_one();
    }
}

impl Aimd {
    pub fn new(max: usize) -> Aimd {
        Aimd {
            state: Mutex::new((0, max.max(1) as f64)),
            max: max.max(1),
            freed: tokio::sync::Notify::new(),
        }
    }

    pub async fn slot(&self) -> Slot<'_> {
        loop {
            let freed = self.freed.notified();
            {
                let mut s = self.state.lock().unwrap();
                if (s.0 as f64) < s.1.floor().max(1.0) {
                    s.0 += 1;
                    return Slot(self);
                }
            }
            freed.await;
        }
    }

    pub fn window(&self) -> f64 {
        self.state.lock().unwrap().1
    }

    /// A success: one more in flight per window of them.
    pub fn grow(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 = (s.1 + 1.0 / s.1).min(self.max as f64);
        drop(s);
        self.freed.notify_one();
    }

    /// A 429 or 503: half as many in flight.
    pub fn shrink(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 = (s.1 / 2.0).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_durations_parse() {
        assert_eq!(parse_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_duration("1m1.5s"), Some(Duration::from_millis(61_500)));
        assert_eq!(parse_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[tokio::test]
    async fn the_window_halves_on_refusals_and_grows_back_by_one_per_window() {
        let a = Aimd::new(16);
        assert_eq!(a.window(), 16.0);
        a.shrink();
        a.shrink();
        assert_eq!(a.window(), 4.0);
        for _ in 0..4 {
            a.grow();
        }
        assert!((a.window() - 4.9).abs() < 0.1, "{}", a.window());
        for _ in 0..10_000 {
            a.grow();
        }
        assert_eq!(a.window(), 16.0);
        let s1 = a.slot().await;
        drop(s1);
    }

    #[tokio::test]
    async fn the_pacer_holds_a_request_until_the_headers_budget_has_room() {
        let p = Pacer::default();
        let t = p.admit(100).await;
        let mut h = HeaderMap::new();
        // 600 requests a minute (10 a second), none left.
        h.insert("x-ratelimit-limit-requests", "600".parse().unwrap());
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "100ms".parse().unwrap());
        p.observe(t, &h, Some(50));
        let start = Instant::now();
        p.admit(100).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(80), "{waited:?}");
    }
}
