//! Requests in flight, by what they ask: identical requests (the same
//! canonical request, [`call_key`]) are decoded once and answered to every
//! client waiting for them, and a request nobody waits for any more is
//! dropped by the model at its next step.
//!
//! The model's side reports each request's [`Event`]s to its [`Fanout`],
//! which forwards them to every waiter and keeps what was said so far, so a
//! client that joins late gets the whole answer.

use super::ModelOutput;
use super::api::ChatCall;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// What the model's side reports about one request's jobs (one per choice).
#[derive(Debug, Clone)]
pub(super) enum Event {
    /// More text of choice `.0`.
    Text(u32, String),
    /// Choice `.0` is complete.
    Done(u32, Result<ModelOutput, String>),
}

/// What makes two chat requests the same work: everything the model sees
/// or samples with, not whether the answer is streamed.
pub(super) fn call_key(call: &ChatCall) -> String {
    use sha2::{Digest, Sha256};
    let body = serde_json::to_vec(&(
        &call.model,
        &call.messages,
        call.temperature,
        call.top_p,
        call.max_tokens,
        call.n,
        &call.stop,
        call.seed,
        call.top_logprobs,
    ))
    .expect("a chat call serialises");
    hex::encode(Sha256::digest(body))
}

/// One request's answer on its way to everyone waiting for it.
pub(super) struct Fanout {
    key: String,
    state: Mutex<FanState>,
}

struct FanState {
    waiters: Vec<UnboundedSender<Event>>,
    /// The text of each choice so far, and the choices complete: replayed
    /// to a client that joins late.
    text: Vec<String>,
    done: Vec<Option<Result<ModelOutput, String>>>,
    /// Every waiter had gone and the model was told to stop: nobody may
    /// join any more (the answer would be cut short).
    abandoned: bool,
}

impl Fanout {
    fn new(key: String, n: u32) -> Fanout {
        Fanout {
            key,
            state: Mutex::new(FanState {
                waiters: Vec::new(),
                text: vec![String::new(); n as usize],
                done: vec![None; n as usize],
                abandoned: false,
            }),
        }
    }

    /// A new waiter, told everything said so far; `None` once abandoned.
    fn subscribe(&self) -> Option<UnboundedReceiver<Event>> {
        let mut s = self.state.lock().expect("fanout lock");
        if s.abandoned {
            return None;
        }
        let (tx, rx) = unbounded_channel();
        for (i, t) in s.text.iter().enumerate() {
            if !t.is_empty() {
                let _ = tx.send(Event::Text(i as u32, t.clone()));
            }
        }
        for (i, d) in s.done.iter().enumerate() {
            if let Some(d) = d {
                let _ = tx.send(Event::Done(i as u32, d.clone()));
            }
        }
        s.waiters.push(tx);
        Some(rx)
    }

    /// Reports `ev` to every waiter; true once every choice is complete.
    pub(super) fn send(&self, ev: Event) -> bool {
        let mut s = self.state.lock().expect("fanout lock");
        match &ev {
            Event::Text(i, t) => s.text[*i as usize].push_str(t),
            Event::Done(i, d) => s.done[*i as usize] = Some(d.clone()),
        }
        s.waiters.retain(|w| w.send(ev.clone()).is_ok());
        s.done.iter().all(Option::is_some)
    }

    /// Whether anyone still waits. The first time nobody does, the answer
    /// is abandoned for good: the caller stops working on it.
    pub(super) fn wanted(&self) -> bool {
        let mut s = self.state.lock().expect("fanout lock");
        if !s.abandoned {
            s.waiters.retain(|w| !w.is_closed());
            s.abandoned = s.waiters.is_empty();
        }
        !s.abandoned
    }
}

/// The requests in flight, by [`call_key`].
#[derive(Default)]
pub(super) struct InFlight {
    map: Mutex<HashMap<String, Arc<Fanout>>>,
}

impl InFlight {
    /// Joins the identical request in flight, or starts a new one (`true`:
    /// the caller must have it answered).
    pub(super) fn join(&self, key: String, n: u32) -> (Arc<Fanout>, UnboundedReceiver<Event>, bool) {
        let mut map = self.map.lock().expect("in-flight lock");
        if let Some(f) = map.get(&key)
            && let Some(rx) = f.subscribe()
        {
            return (f.clone(), rx, false);
        }
        let f = Arc::new(Fanout::new(key.clone(), n));
        let rx = f.subscribe().expect("a new fanout is not abandoned");
        map.insert(key, f.clone());
        (f, rx, true)
    }

    /// `f` is complete or abandoned: a later identical request starts afresh.
    pub(super) fn finish(&self, f: &Arc<Fanout>) {
        let mut map = self.map.lock().expect("in-flight lock");
        if map.get(&f.key).is_some_and(|g| Arc::ptr_eq(g, f)) {
            map.remove(&f.key);
        }
    }
}
