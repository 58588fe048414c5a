//! What a slow, flaky provider does to a request, as a middleware around the
//! chat route: added latency, then maybe a fault (429 with `Retry-After`,
//! 500, 401, a stall, a garbage or a truncated body), drawn per request. The
//! chat handler only ever answers properly; the faults are all here.

use super::RequestNo;
use super::api::ApiError;
use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 429 with `Retry-After`.
    RateLimited,
    /// 500.
    ServerError,
    /// Holds the request for `stall` before answering (past a client's timeout).
    Stall,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with the JSON cut in half.
    Truncated,
    /// 401, as for a wrong API key: not worth retrying.
    Unauthorized,
}

/// Which faults to inject: first `script` in order (one per request), then at random.
#[derive(Debug, Clone)]
pub struct Faults {
    pub script: Vec<Fault>,
    pub p_rate_limited: f64,
    pub p_server_error: f64,
    pub p_stall: f64,
    pub p_garbage: f64,
    pub p_truncated: f64,
    pub retry_after_s: u64,
    pub stall: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            script: vec![],
            p_rate_limited: 0.0,
            p_server_error: 0.0,
            p_stall: 0.0,
            p_garbage: 0.0,
            p_truncated: 0.0,
            retry_after_s: 1,
            stall: Duration::from_secs(30),
        }
    }
}

/// The middleware's state: one seeded generator for the whole server, so a
/// seed replays the same faults for requests arriving in the same order.
pub(super) struct Injector {
    faults: Faults,
    latency: Duration,
    rng: Mutex<ChaCha8Rng>,
}

impl Injector {
    pub(super) fn new(faults: Faults, latency: Duration, seed: u64) -> Injector {
        Injector {
            faults,
            latency,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// The fault for request `n`: scripted, or else one draw from the generator.
    fn draw(&self, n: u64) -> Fault {
        let f = &self.faults;
        if let Some(x) = f.script.get(n as usize) {
            return *x;
        }
        let r: f64 = self.rng.lock().expect("rng lock").random_range(0.0..1.0);
        let mut acc = 0.0;
        for (p, fault) in [
            (f.p_rate_limited, Fault::RateLimited),
            (f.p_server_error, Fault::ServerError),
            (f.p_stall, Fault::Stall),
            (f.p_garbage, Fault::Garbage),
            (f.p_truncated, Fault::Truncated),
        ] {
            acc += p;
            if r < acc {
                return fault;
            }
        }
        Fault::None
    }
}

/// The middleware. It runs inside the chat route's admission, so only a
/// request that parsed draws a fault: an invalid one costs no draw and gets
/// no latency.
pub(super) async fn inject(
    State(inj): State<Arc<Injector>>,
    Extension(RequestNo(n)): Extension<RequestNo>,
    req: Request,
    next: Next,
) -> Response {
    let fault = inj.draw(n);
    if !inj.latency.is_zero() {
        tokio::time::sleep(inj.latency).await;
    }
    match fault {
        Fault::RateLimited => {
            let mut r = ApiError::rate_limited().into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(inj.faults.retry_after_s));
            r
        }
        Fault::ServerError => ApiError::server("injected").into_response(),
        Fault::Unauthorized => ApiError::unauthorized().into_response(),
        Fault::Garbage => (
            [(header::CONTENT_TYPE, "application/json")],
            "<html>502 Bad Gateway</html>",
        )
            .into_response(),
        Fault::Stall => {
            tokio::time::sleep(inj.faults.stall).await;
            next.run(req).await
        }
        Fault::Truncated => truncate(next.run(req).await).await,
        Fault::None => next.run(req).await,
    }
}

/// A completion's body cut in half; an error passes whole.
async fn truncate(resp: Response) -> Response {
    if !resp.status().is_success() {
        return resp;
    }
    match axum::body::to_bytes(resp.into_body(), usize::MAX).await {
        Ok(body) => (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(body.slice(..body.len() / 2)),
        )
            .into_response(),
        Err(e) => ApiError::server(format!("reading the response: {e}")).into_response(),
    }
}
