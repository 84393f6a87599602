//! Real HTTP receivers on 127.0.0.1 whose behaviour each test programs, recording every
//! request they get.

#![allow(dead_code)]

pub mod rig;
pub mod service;
pub mod sqs;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub order_no: String,
    pub gids: Vec<i64>,
    pub body: Value,
    pub raw: Bytes,
    pub headers: HeaderMap,
    pub at: Instant,
    /// Wall-clock arrival in Unix milliseconds, comparable with the service's timestamps.
    pub wall_ms: i64,
}

/// What to answer: given the request and how many times this orderNo was seen (1-based).
pub type Behaviour = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

pub enum Reply {
    /// Status and JSON body.
    Json(u16, Value),
    /// Status, extra headers and raw body.
    Raw(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Sleep, then answer.
    After(Duration, Box<Reply>),
    /// Hold the request until the gate has a permit for it, then answer.
    When(Arc<tokio::sync::Semaphore>, Box<Reply>),
}

impl Reply {
    /// Every gid of the request succeeded.
    pub fn all_ok(seen: &Seen) -> Reply {
        Reply::statuses(seen, |_| ("TOU_SUCC", ""))
    }

    pub fn statuses(seen: &Seen, f: impl Fn(i64) -> (&'static str, &'static str)) -> Reply {
        Reply::statuses_for(&seen.order_no, &seen.gids, f)
    }

    /// A receipt for these gids.
    pub fn statuses_for(
        order_no: &str,
        gids: &[i64],
        f: impl Fn(i64) -> (&'static str, &'static str),
    ) -> Reply {
        let list: Vec<Value> = gids
            .iter()
            .map(|g| {
                let (status, error) = f(*g);
                json!({"gid": g, "status": status, "errorMsg": error})
            })
            .collect();
        Reply::Json(
            200,
            json!({"code": 0, "message": "", "orderNo": order_no, "sendStatusList": list}),
        )
    }
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    behaviour: Behaviour,
}

pub struct Receiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn touch(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let order_no = body["orderNo"].as_str().unwrap_or_default().to_owned();
    let gids = body["dataList"]
        .as_array()
        .map(|l| l.iter().filter_map(|u| u["gid"].as_i64()).collect())
        .unwrap_or_default();
    let path = uri.path().to_owned();
    let seen = Seen {
        path: path.clone(),
        order_no: order_no.clone(),
        gids,
        body,
        raw,
        headers,
        at: Instant::now(),
        wall_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    let n = {
        let mut counts = s.counts.lock().unwrap();
        let c = counts.entry(format!("{path} {order_no}")).or_insert(0);
        *c += 1;
        *c
    };
    s.seen.lock().unwrap().push(seen.clone());
    let mut reply = (s.behaviour)(&seen, n);
    loop {
        match reply {
            Reply::After(wait, next) => {
                tokio::time::sleep(wait).await;
                reply = *next;
            }
            Reply::When(gate, next) => {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                reply = *next;
            }
            Reply::Json(status, v) => {
                return (StatusCode::from_u16(status).unwrap(), axum::Json(v)).into_response();
            }
            Reply::Raw(status, headers, body) => {
                let mut r = Response::builder().status(status);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                return r.body(Body::from(body)).unwrap();
            }
        }
    }
}

impl Receiver {
    pub async fn start(
        behaviour: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let shared = Shared {
            seen: Arc::default(),
            counts: Arc::default(),
            behaviour: Arc::new(behaviour),
        };
        let seen = Arc::clone(&shared.seen);
        let app = Router::new().fallback(post(touch)).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/touch", self.addr)
    }

    pub fn receipt_url(&self) -> String {
        format!("http://{}/receipt", self.addr)
    }

    /// Requests to one path.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// How many times each gid arrived.
    pub fn gid_counts(&self) -> HashMap<i64, usize> {
        let mut m = HashMap::new();
        for s in self.seen.lock().unwrap().iter() {
            for g in &s.gids {
                *m.entry(*g).or_insert(0) += 1;
            }
        }
        m
    }
}

/// The events in a results file that the service may still be writing: only lines ended by a
/// newline count. A reader of a growing JSON-lines file must ignore an unterminated last line
/// (it is being written); every complete line must parse.
pub fn results_events(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    complete_lines(&text)
        .flat_map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| {
                panic!("a complete line of {} is not JSON: {e}", path.display())
            })["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The newline-terminated lines of `text`, without an unterminated last line.
pub fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines()
}

/// A clock the test moves by hand.
#[derive(Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl touchpoint::clock::Clock for ManualClock {
    fn now_ms(&self) -> touchpoint::clock::Millis {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl ManualClock {
    pub fn at(ms: i64) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(ms))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An HTTP client for tests (the service's TLS configuration; reqwest has no crypto provider of
/// its own in this workspace).
pub fn http_client() -> reqwest::Client {
    touchpoint_outbound::client_builder()
        .expect("client")
        .build()
        .expect("client")
}

/// Checks each request with the official Standard Webhooks library (the Python
/// `standardwebhooks` package of the tools venv, whose interpreter `MOTO_PYTHON` names) and
/// returns why each one it refused was refused (empty: it verified them all).
pub fn standard_webhooks_refusals(secret: &str, seen: &[Seen]) -> Vec<String> {
    const SCRIPT: &str = r#"
import json, sys
from standardwebhooks import Webhook
hook = Webhook(sys.argv[1])
refused = []
for item in json.load(open(sys.argv[2])):
    try:
        hook.verify(item["body"].encode(), item["headers"])
    except Exception as e:
        refused.append(f"{item['headers'].get('webhook-id')}: {type(e).__name__} {e}")
print(json.dumps(refused))
"#;
    let python = std::env::var("MOTO_PYTHON")
        .expect("MOTO_PYTHON names the tools venv's python: run through infra/test.sh");
    let items: Vec<Value> = seen
        .iter()
        .map(|s| {
            let headers: serde_json::Map<String, Value> = s
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), Value::from(v.to_str().ok()?))))
                .collect();
            json!({"headers": headers, "body": String::from_utf8_lossy(&s.raw)})
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&items).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .args(["-c", SCRIPT, secret])
        .arg(file.path())
        .output()
        .expect("the tools venv's python runs");
    assert!(
        out.status.success(),
        "standardwebhooks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON list")
}
