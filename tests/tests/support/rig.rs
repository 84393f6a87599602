//! The dispatcher library on a SQLite ledger in a temporary directory, with helpers to
//! deliver a message as the queue would and to read what it recorded and published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use touchpoint::clock::{Clock, SystemClock};
use touchpoint::delivery::{BatchView, DeliveryReports};
use touchpoint::{Touchpoints, UrlPolicy};
use touchpoint_dispatcher::{Dispatcher, DispatcherConfig, Handled, RetryPolicy};
use touchpoint_embedded::{ResultsFile, SqliteStore};
use touchpoint_outbound::Outbound;
use touchpoint_services::{Services, Settings};

pub const TOKEN: &str = "abc123";

pub struct Rig {
    pub store: SqliteStore,
    pub touchpoints: Touchpoints,
    pub dispatcher: Arc<Dispatcher>,
    pub dir: tempfile::TempDir,
}

pub fn config(waits: &str, timeout_ms: u64) -> DispatcherConfig {
    DispatcherConfig {
        retry: RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::parse(waits).unwrap()
        },
        request_timeout: Duration::from_millis(timeout_ms),
        ..DispatcherConfig::default()
    }
}

impl Rig {
    pub fn new(cfg: DispatcherConfig) -> Rig {
        Self::with_outbound(cfg, Outbound::new(true).unwrap())
    }

    pub fn with_outbound(cfg: DispatcherConfig, outbound: Outbound) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let services = Services::embedded(
            &store,
            outbound,
            Arc::new(SystemClock),
            Settings {
                urls: UrlPolicy {
                    allow_plain_http: true,
                },
                ..Settings::default()
            }
            .with_dispatcher(cfg),
        );
        Rig {
            store,
            touchpoints: services.touchpoints,
            dispatcher: services.dispatcher,
            dir,
        }
    }

    pub async fn touchpoint(&self, name: &str, url: &str, batch: u16) -> String {
        self.touchpoint_with(name, url, batch, json!({})).await
    }

    /// [`Rig::touchpoint`] with more fields (`maxRequestsPerSecond`, …).
    pub async fn touchpoint_with(&self, name: &str, url: &str, batch: u16, more: Value) -> String {
        let mut body = json!({
            "name": name, "kind": "notification", "url": url, "token": TOKEN, "batchSize": batch,
            "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "姓名", "default": "会员"}],
            "templateParams": [
                {"identifier": "title", "displayName": "标题", "type": "text", "required": true},
                {"identifier": "day", "displayName": "日期", "type": "date"}
            ]
        });
        if let (Some(body), Some(more)) = (body.as_object_mut(), more.as_object()) {
            body.extend(more.clone());
        }
        let tp = self.touchpoints.create(1, &body).await.unwrap();
        self.touchpoints
            .set_spaces(
                1,
                &tp.id,
                vec!["space-a"].into_iter().map(String::from).collect(),
                None,
            )
            .await
            .unwrap();
        tp.id.into_string()
    }

    /// Handles the message until it is done, sleeping through retries like the queue would.
    pub async fn deliver(&self, message: &Value) -> Handled {
        let started = Instant::now();
        loop {
            let handled = self.dispatcher.handle(message).await.unwrap();
            match handled {
                Handled::RetryAt(at) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "never finished"
                    );
                    let wait = at - SystemClock.now_ms();
                    tokio::time::sleep(Duration::from_millis(wait.clamp(1, 5_000) as u64)).await;
                }
                other => return other,
            }
        }
    }

    pub async fn batches(&self, dispatch_id: &str) -> Vec<BatchView> {
        let mut out = Vec::new();
        for b in self
            .store
            .dispatch_batches(1, &dispatch_id.into())
            .await
            .unwrap()
        {
            out.push(self.store.batch(1, &b.order_no).await.unwrap().unwrap());
        }
        out
    }

    /// Every result event published so far.
    pub async fn events(&self) -> Vec<Value> {
        let path = self.dir.path().join("results.jsonl");
        let results = ResultsFile::new(self.store.clone(), path.clone());
        while results.publish_pending().await.unwrap() > 0 {}
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .flat_map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["events"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .collect()
    }
}

pub fn dispatch(id: &str, touchpoint: &str, users: usize) -> Value {
    let users: Vec<Value> = (0..users as i64)
        .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
        .collect();
    json!({
        "dispatchId": id, "projectId": 1, "spaceId": "space-a", "campaignId": "cmp-42", "strategyId": "node-7",
        "touchpointId": touchpoint, "templateValues": {"title": "Hi {{name}}", "day": "2026-12-01"}, "users": users
    })
}

pub fn results_of(batches: &[BatchView]) -> Vec<(i64, String, String)> {
    let mut out: Vec<_> = batches
        .iter()
        .flat_map(|b| {
            b.results.iter().map(|r| {
                (
                    r.gid,
                    r.status.code().to_owned(),
                    r.status.reason().to_owned(),
                )
            })
        })
        .collect();
    out.sort();
    out
}
