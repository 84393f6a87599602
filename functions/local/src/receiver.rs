//! `touchpoint receiver`: a reference receiver that speaks the protocol, for trying touchpoint
//! out and as a model for receiver authors. It verifies `sign` and the signature headers,
//! answers sync receipts for every user, or (async mode) accepts and answers receipt polls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};
use touchpoint::protocol::{STATUS_SUCCESS, verify_sign, verify_webhook_signature};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Sync,
    Async,
}

#[derive(Debug)]
pub struct ReceiverConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub mode: Mode,
}

#[derive(Default)]
struct Receiver {
    token: Option<String>,
    mode: Option<Mode>,
    requests: AtomicU64,
    users: AtomicU64,
    rejected: AtomicU64,
    /// Async mode: gids waiting for a receipt poll, by orderNo.
    pending: Mutex<HashMap<String, Vec<i64>>>,
}

fn refuse(code: StatusCode, message: &str) -> (StatusCode, Json<Value>) {
    (
        code,
        Json(json!({"code": code.as_u16(), "message": message})),
    )
}

impl Receiver {
    /// Checks `sign` and, when present, the Standard Webhooks signature over the raw body.
    fn verify(&self, headers: &HeaderMap, body: &[u8], v: &Value) -> Result<(), &'static str> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let ts = v
            .get("timeStamp")
            .and_then(Value::as_i64)
            .ok_or("timeStamp missing")?;
        let order = v
            .get("orderNo")
            .and_then(Value::as_str)
            .ok_or("orderNo missing")?;
        let sign = v
            .get("sign")
            .and_then(Value::as_str)
            .ok_or("sign missing")?;
        if !verify_sign(token, ts, order, sign) {
            return Err("sign does not match");
        }
        let header = |n: &str| headers.get(n).and_then(|h| h.to_str().ok());
        if let (Some(id), Some(secs), Some(sig)) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        ) {
            let secs: i64 = secs.parse().map_err(|_| "bad webhook-timestamp")?;
            if !verify_webhook_signature(token, id, secs, body, sig) {
                return Err("webhook-signature does not match");
            }
        } else {
            return Err("signature headers missing");
        }
        Ok(())
    }
}

type Answer = (StatusCode, Json<Value>);

/// Reads and verifies a signed request; `Err` is the refusal to send back.
fn signed_request(
    r: &Receiver,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Value, String), Answer> {
    let v = serde_json::from_slice::<Value>(body)
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "body is not JSON"))?;
    if let Err(why) = r.verify(headers, body, &v) {
        r.rejected.fetch_add(1, Ordering::Relaxed);
        return Err(refuse(StatusCode::UNAUTHORIZED, why));
    }
    let order = v
        .get("orderNo")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok((v, order))
}

/// A receipt naming every gid as delivered.
fn receipt_for(order: &str, gids: &[i64]) -> Answer {
    let statuses: Vec<Value> = gids
        .iter()
        .map(|g| json!({"gid": g, "status": STATUS_SUCCESS, "errorMsg": ""}))
        .collect();
    (
        StatusCode::OK,
        Json(json!({"code": 0, "message": "", "orderNo": order, "sendStatusList": statuses})),
    )
}

async fn touch(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Answer {
    r.requests.fetch_add(1, Ordering::Relaxed);
    let (v, order) = match signed_request(&r, &headers, &body) {
        Ok(x) => x,
        Err(refusal) => return refusal,
    };
    let gids: Vec<i64> = v
        .get("dataList")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|u| u.get("gid").and_then(Value::as_i64))
                .collect()
        })
        .unwrap_or_default();
    r.users.fetch_add(gids.len() as u64, Ordering::Relaxed);
    if r.mode == Some(Mode::Async) {
        r.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(order.clone(), gids);
        return receipt_for(&order, &[]);
    }
    receipt_for(&order, &gids)
}

async fn receipt(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Answer {
    let (_, order) = match signed_request(&r, &headers, &body) {
        Ok(x) => x,
        Err(refusal) => return refusal,
    };
    let gids = r
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&order)
        .unwrap_or_default();
    receipt_for(&order, &gids)
}

async fn stats(State(r): State<Arc<Receiver>>) -> Json<Value> {
    Json(json!({
        "requests": r.requests.load(Ordering::Relaxed),
        "users": r.users.load(Ordering::Relaxed),
        "rejected": r.rejected.load(Ordering::Relaxed),
    }))
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(cfg: ReceiverConfig) -> Result<(), String> {
    let state = Arc::new(Receiver {
        token: cfg.token,
        mode: Some(cfg.mode),
        ..Default::default()
    });
    let app = Router::new()
        .route("/touch", post(touch))
        .route("/receipt", post(receipt))
        .route("/stats", get(stats))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("reference receiver ({:?} receipts)", cfg.mode);
    println!("listening on http://{bound}");
    println!(
        "touch URL: http://{bound}/touch   receipt URL: http://{bound}/receipt   counters: http://{bound}/stats"
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
        .map_err(|e| format!("receiver failed: {e}"))
}
