//! Load: 1,000,000 users through the local service (the binary the tests build) and a fast
//! receiver. Nothing may be lost and memory must stay flat: the service's peak RSS is read
//! from /proc at 100,000 users and at the end. `LOAD_USERS` sets another total (the default
//! is the issue's million).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::service::{SECRET, Service};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

const ADMIN: &str = "load-admin-key-00001";
const CAMPAIGN: &str = "load-campaign-key-01";
const PER_DISPATCH: u64 = 10_000;

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "orderNo")]
    order_no: String,
    #[serde(rename = "dataList")]
    data_list: Vec<IncomingUser>,
}

#[derive(Deserialize)]
struct IncomingUser {
    gid: i64,
}

/// Every gid the receiver was sent, as a bitmap; repeats counted.
struct Seen {
    bits: Vec<AtomicU64>,
    users: AtomicU64,
    repeats: AtomicU64,
}

async fn receive(State(seen): State<Arc<Seen>>, body: Bytes) -> String {
    let req: Incoming = serde_json::from_slice(&body).expect("a touch request");
    let mut out = format!(
        r#"{{"code":0,"message":"","orderNo":"{}","sendStatusList":["#,
        req.order_no
    );
    for (i, u) in req.data_list.iter().enumerate() {
        let g = u.gid as usize;
        let bit = 1u64 << (g % 64);
        if seen.bits[g / 64].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            seen.repeats.fetch_add(1, Ordering::Relaxed);
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"gid":{},"status":"TOU_SUCC","errorMsg":""}}"#,
            u.gid
        ));
    }
    seen.users
        .fetch_add(req.data_list.len() as u64, Ordering::Relaxed);
    out.push_str("]}");
    out
}

/// Peak and current resident memory of a process, in MiB.
async fn succeeded(service: &Service) -> u64 {
    let (_, stats) = service
        .call(Method::GET, "/v1/campaigns/load/stats", CAMPAIGN, None)
        .await;
    stats["succeeded"].as_u64().unwrap_or(0)
}

fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_users_through_the_local_service_lose_no_one_in_flat_memory() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let total: u64 = std::env::var("LOAD_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seen = Arc::new(Seen {
        bits: (0..total.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        users: AtomicU64::new(0),
        repeats: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/touch", post(receive))
        .with_state(Arc::clone(&seen));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let keys = format!("{ADMIN}=1:admin,{CAMPAIGN}=1:campaign");
    let service = Service::start(
        &data,
        &[
            ("TOUCHPOINT_API_KEYS", keys.as_str()),
            ("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true"),
            ("TOUCHPOINT_LOG", "warn"),
        ],
    );
    let pid = service.child.id();
    let tp = service
        .register(
            ADMIN,
            json!({
                "name": "load", "kind": "notification", "url": format!("http://{addr}/touch"),
                "token": SECRET, "batchSize": 500,
                "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "n"}],
                "templateParams": [{"identifier": "title", "displayName": "t", "type": "text", "required": true}]
            }),
            &["s"],
        )
        .await;
    let (idle_peak, _) = memory(pid);

    let started = Instant::now();
    let dispatches = total.div_ceil(PER_DISPATCH);
    let ahead: u64 = std::env::var("LOAD_AHEAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut at_100k = None;
    // Resident memory at every 100,000 users.
    let mut samples: Vec<u64> = Vec::new();
    let mut submitted = 0;
    let deadline = Instant::now() + Duration::from_secs(1_200);
    loop {
        // Keep a few dispatches (`LOAD_AHEAD`, default 4) queued ahead of the worker, as a
        // campaign system would.
        let done = succeeded(&service).await;
        while submitted < dispatches && submitted * PER_DISPATCH < done + ahead * PER_DISPATCH {
            let first = submitted * PER_DISPATCH;
            let users: Vec<Value> = (first..(first + PER_DISPATCH).min(total))
                .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
                .collect();
            let (status, body) = service
                .call(
                    Method::POST,
                    "/v1/dispatches",
                    CAMPAIGN,
                    Some(json!({"dispatchId": format!("load-{submitted}"), "projectId": 1, "spaceId": "s",
                                "campaignId": "load", "touchpointId": tp,
                                "templateValues": {"title": "Hi {{name}}"}, "users": users})),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            submitted += 1;
        }
        if done >= (samples.len() as u64 + 1) * 100_000 {
            samples.push(memory(pid).1);
        }
        if at_100k.is_none() && done >= 100_000.min(total) {
            at_100k = Some((memory(pid), started.elapsed()));
        }
        if done >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {total} after 20 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();
    let (end_peak, end_rss) = memory(pid);
    let ((peak_100k, rss_100k), t_100k) = at_100k.unwrap();

    // Nothing lost: every user reached the receiver once, and has one results event.
    assert_eq!(seen.users.load(Ordering::Relaxed), total);
    assert_eq!(seen.repeats.load(Ordering::Relaxed), 0);
    let missing: u64 = (0..total)
        .filter(|g| seen.bits[(*g / 64) as usize].load(Ordering::Relaxed) & (1 << (g % 64)) == 0)
        .count() as u64;
    assert_eq!(missing, 0);
    let started_events = Instant::now();
    let events = loop {
        let text = std::fs::read(data.join("results.jsonl")).unwrap_or_default();
        let n = text
            .windows(b"$ma_channel_touch".len())
            .filter(|w| *w == b"$ma_channel_touch")
            .count() as u64;
        if n >= total || started_events.elapsed() > Duration::from_secs(60) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(events, total, "one results event per user");
    let (_, logs) = service.terminate();
    assert!(!logs.contains("ERROR"), "{logs}");

    eprintln!(
        "load: {total} users in {dispatches} dispatches of {PER_DISPATCH} at batch 500 in {elapsed:.1?} \
         ({:.0} users/s, debug build); lost 0, repeats 0, {events} events; service peak RSS: \
         idle {idle_peak} MiB, {peak_100k} MiB at 100k users ({t_100k:.1?}; RSS {rss_100k} MiB), \
         {end_peak} MiB at {total} (RSS {end_rss} MiB); RSS every 100k users: {samples:?} MiB",
        total as f64 / elapsed.as_secs_f64()
    );
    // Flat: after the first half of the run (warm-up: allocator arenas, SQLite's cache), the
    // resident size does not climb any more. A leak of even 100 bytes a user would add ~50 MiB.
    let half = samples.len() / 2;
    if half > 0 {
        let first = samples[..half].iter().max().unwrap();
        let second = samples[half..].iter().max().unwrap();
        assert!(
            *second <= first + first / 10 + 16,
            "memory grew: RSS every 100k users {samples:?} MiB"
        );
    }
}
