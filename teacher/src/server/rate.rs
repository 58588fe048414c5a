//! A rate budget as providers enforce one: requests and tokens per minute,
//! each a bucket that refills continuously. A request reserves one request
//! and its most tokens (prompt + `max_tokens` × `n`) when admitted, and the
//! unused tokens come back when its answer is complete. Every answer carries
//! OpenAI's headers (`x-ratelimit-limit-*`, `x-ratelimit-remaining-*`,
//! `x-ratelimit-reset-*`); a request over the budget gets a 429 with them
//! and `Retry-After`.

use axum::http::{HeaderMap, HeaderValue};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The budget a local server enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBudget {
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
    /// How much of a minute's budget may go at once (the buckets' size):
    /// a minute's worth lets a client spend it all in one burst.
    pub burst: Duration,
}

struct Bucket {
    level: f64,
    cap: f64,
    per_s: f64,
    limit: u32,
}

impl Bucket {
    fn new(per_minute: u32, burst: Duration) -> Bucket {
        let per_s = per_minute as f64 / 60.0;
        let cap = (per_s * burst.as_secs_f64()).max(1.0);
        Bucket {
            level: cap,
            cap,
            per_s,
            limit: per_minute,
        }
    }

    fn refill(&mut self, dt: f64) {
        self.level = (self.level + dt * self.per_s).min(self.cap);
    }

    /// Seconds until the bucket holds `n`.
    fn wait_for(&self, n: f64) -> f64 {
        ((n.min(self.cap) - self.level) / self.per_s).max(0.0)
    }

    /// Seconds until the bucket is full again.
    fn reset(&self) -> f64 {
        ((self.cap - self.level) / self.per_s).max(0.0)
    }
}

pub(crate) struct Limiter {
    state: Mutex<(Instant, Bucket, Bucket)>,
}

/// What an admitted request holds, given back in part when it is done.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub tokens: u32,
}

/// OpenAI's duration format: `20ms`, `1s`, `1.5s`, `6m0s`.
fn duration(secs: f64) -> String {
    if secs < 1.0 {
        format!("{}ms", (secs * 1000.0).ceil() as u64)
    } else if secs < 60.0 {
        format!("{:.3}s", secs)
    } else {
        format!("{}m{:.3}s", (secs / 60.0).floor() as u64, secs % 60.0)
    }
}

impl Limiter {
    pub fn new(b: RateBudget) -> Limiter {
        Limiter {
            state: Mutex::new((
                Instant::now(),
                Bucket::new(b.requests_per_minute, b.burst),
                Bucket::new(b.tokens_per_minute, b.burst),
            )),
        }
    }

    /// Takes one request and `tokens`, or says how long until they are there.
    pub fn admit(&self, tokens: u32, headers: &mut HeaderMap) -> Result<Reservation, Duration> {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        let dt = now.duration_since(s.0).as_secs_f64();
        s.0 = now;
        s.1.refill(dt);
        s.2.refill(dt);
        let t = tokens as f64;
        let result = if s.1.level >= 1.0 && s.2.level >= t.min(s.2.cap) {
            s.1.level -= 1.0;
            s.2.level -= t.min(s.2.cap);
            Ok(Reservation { tokens })
        } else {
            Err(Duration::from_secs_f64(s.1.wait_for(1.0).max(s.2.wait_for(t))))
        };
        for (kind, b) in [("requests", &s.1), ("tokens", &s.2)] {
            let mut put = |name: String, v: String| {
                headers.insert(
                    axum::http::HeaderName::try_from(name).expect("a header name"),
                    HeaderValue::try_from(v).expect("a header value"),
                );
            };
            put(format!("x-ratelimit-limit-{kind}"), b.limit.to_string());
            put(
                format!("x-ratelimit-remaining-{kind}"),
                (b.level.max(0.0).floor() as u64).to_string(),
            );
            put(format!("x-ratelimit-reset-{kind}"), duration(b.reset()));
        }
        result
    }

    /// Gives back what an answer did not use.
    pub fn settle(&self, r: &Reservation, used_tokens: u32) {
        let back = r.tokens.saturating_sub(used_tokens) as f64;
        let mut s = self.state.lock().unwrap();
        s.2.level = (s.2.level + back).min(s.2.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refuses_past_its_budget_and_says_when_it_refills() {
        let l = Limiter::new(RateBudget {
            requests_per_minute: 60,
            tokens_per_minute: 6000,
            burst: Duration::from_secs(2),
        });
        let mut h = HeaderMap::new();
        assert!(l.admit(10, &mut h).is_ok());
        assert!(l.admit(10, &mut h).is_ok());
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-limit-tokens"], "6000");
        let wait = l.admit(10, &mut h).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(duration(0.25), "250ms");
        assert_eq!(duration(61.5), "1m1.500s");
    }

    #[test]
    fn settling_gives_back_the_unused_tokens() {
        let l = Limiter::new(RateBudget {
            requests_per_minute: 6000,
            tokens_per_minute: 600,
            burst: Duration::from_secs(10),
        });
        let mut h = HeaderMap::new();
        let r = l.admit(100, &mut h).unwrap();
        assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
        l.settle(&r, 40);
        l.admit(0, &mut h).unwrap();
        assert_eq!(h["x-ratelimit-remaining-tokens"], "60");
    }
}
