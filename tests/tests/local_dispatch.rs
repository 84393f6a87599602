//! Dispatch through the real local binary: intake over HTTP, the durable local queue and
//! worker, results.jsonl, the query endpoints, test send — and `kill -9` in the middle.

use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::service::{ReferenceReceiver, SECRET, Service, run_readme_block};
use support::{Receiver, Reply};

const ADMIN: &str = "e2e-admin-key-0001";
const CAMPAIGN: &str = "e2e-campaign-key-01";
const OPERATOR: &str = "e2e-operator-key-01";
/// An admin of another project.
const OTHER_ADMIN: &str = "e2e-admin-key-proj2";

fn keys() -> String {
    format!(
        "{ADMIN}=1:admin,{CAMPAIGN}=1:campaign,{OPERATOR}=1:operator:space-a,{OTHER_ADMIN}=2:admin"
    )
}

async fn touchpoint(service: &Service, url: &str, batch: u16) -> String {
    let body = json!({
        "name": "短信网关", "kind": "notification", "url": url, "token": SECRET, "batchSize": batch,
        "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "姓名"}],
        "templateParams": [{"identifier": "title", "displayName": "标题", "type": "text", "required": true}]
    });
    service.register(ADMIN, body, &["space-a"]).await
}

fn dispatch(id: &str, touchpoint: &str, first_gid: i64, users: i64) -> Value {
    let users: Vec<Value> = (first_gid..first_gid + users)
        .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
        .collect();
    json!({
        "dispatchId": id, "projectId": 1, "spaceId": "space-a", "campaignId": "cmp-42",
        "touchpointId": touchpoint, "templateValues": {"title": "Hi {{name}}"}, "users": users
    })
}

fn encoded(id: &str) -> String {
    id.replace('/', "%2F")
}

/// Waits until the dispatch has no pending user.
async fn completed(service: &Service, id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, d) = service
            .call(
                Method::GET,
                &format!("/v1/dispatches/{}", encoded(id)),
                CAMPAIGN,
                None,
            )
            .await;
        if status == 200 && d["state"] != "in_progress" && d["state"] != "queued" {
            return d;
        }
        assert!(started.elapsed() < limit, "dispatch {id} not finished: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event in results.jsonl.
fn events(data: &Path) -> Vec<Value> {
    support::results_events(&data.join("results.jsonl"))
}

async fn wait_for_events(data: &Path, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let e = events(data);
        if e.len() >= n || started.elapsed() > Duration::from_secs(20) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatch_posted_over_http_reaches_every_user_and_is_reported() {
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let keys = keys();
    let service = Service::start(
        &data,
        &[
            ("TOUCHPOINT_API_KEYS", &keys),
            ("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true"),
        ],
    );
    let tp = touchpoint(&service, &rx.url(), 100).await;
    let body = dispatch("cmp-42/node-7/2026-11-29T10:00:00Z/0001", &tp, 0, 1_000);

    let (status, r) = service
        .call(Method::POST, "/v1/dispatches", CAMPAIGN, Some(body.clone()))
        .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["status"], "queued");
    let (status, r) = service
        .call(Method::POST, "/v1/dispatches", CAMPAIGN, Some(body.clone()))
        .await;
    assert_eq!(status, 200, "the same dispatchId again queues nothing");
    assert_eq!(r["status"], "duplicate");

    let d = completed(
        &service,
        "cmp-42/node-7/2026-11-29T10:00:00Z/0001",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(d["state"], "completed");
    assert_eq!(d["counts"]["succeeded"], 1_000);
    assert_eq!(d["counts"]["pending"], 0);
    assert_eq!(d["batches"].as_array().unwrap().len(), 10);
    assert_eq!(rx.requests(), 10);

    let order = d["batches"][3]["orderNo"].as_str().unwrap();
    let (status, b) = service
        .call(Method::GET, &format!("/v1/batches/{order}"), CAMPAIGN, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(b["results"].as_array().unwrap().len(), 100);
    assert_eq!(b["results"][0]["status"], "TOU_SUCC");
    assert_eq!(b["lastHttpStatus"], 200);
    assert_eq!(b["attempts"], 1);
    assert!(
        b["responseExcerpt"]
            .as_str()
            .unwrap()
            .contains("sendStatusList")
    );

    let (_, stats) = service
        .call(Method::GET, "/v1/campaigns/cmp-42/stats", CAMPAIGN, None)
        .await;
    let totals = ["campaignId", "sent", "succeeded", "failed", "pending"].map(|k| stats[k].clone());
    assert_eq!(
        totals,
        [
            json!("cmp-42"),
            json!(1000),
            json!(1000),
            json!(0),
            json!(0)
        ]
    );
    // The last 24 hours, hour by hour, end with the current hour.
    let series = stats["series"].as_array().unwrap();
    assert_eq!(series.len(), 24);
    let sent: u64 = series.iter().map(|h| h["sent"].as_u64().unwrap()).sum();
    assert_eq!(sent, 1000);
    assert_eq!(series[23]["pending"], 0, "nothing pending at the end");
    assert_eq!(stats["window"]["successRate"], 1.0);
    assert_eq!(stats["failureReasons"], json!([]));
    let (status, bad) = service
        .call(
            Method::GET,
            "/v1/campaigns/cmp-42/stats?hours=169",
            CAMPAIGN,
            None,
        )
        .await;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["error"]["details"][0]["path"], "hours");
    let (_, by_tp) = service
        .call(
            Method::GET,
            &format!("/v1/touchpoints/{tp}/stats"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(by_tp["succeeded"], 1_000);
    // The listing's success rates: several touchpoints in one request, in the order asked,
    // once each; one without activity has zeros and no rate.
    let idle = service
        .register(
            ADMIN,
            json!({"name": "idle", "kind": "other", "url": rx.url(),
                "userAttributes": [{"attribute": "usr_name", "displayName": "姓名"}],
                "templateParams": [{"identifier": "title", "displayName": "标题", "type": "text"}]}),
            &[],
        )
        .await;
    let (status, rates) = service
        .call(
            Method::GET,
            &format!("/v1/stats/touchpoints?ids={idle},{tp},{idle}&hours=2"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, 200, "{rates}");
    assert_eq!(rates["hours"], 2);
    assert_eq!(
        rates["items"],
        json!([
            {"touchpointId": idle, "succeeded": 0, "failed": 0, "successRate": null},
            {"touchpointId": tp, "succeeded": 1000, "failed": 0, "successRate": 1.0},
        ])
    );
    // Another project's admin learns nothing of this project's touchpoint.
    let (status, theirs) = service
        .call(
            Method::GET,
            &format!("/v1/stats/touchpoints?ids={tp}"),
            OTHER_ADMIN,
            None,
        )
        .await;
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(
        theirs["items"],
        json!([{"touchpointId": tp, "succeeded": 0, "failed": 0, "successRate": null}])
    );
    for (query, key, want) in [
        (format!("ids={tp},nope"), ADMIN, 422),
        (format!("ids={tp}&hours=169"), ADMIN, 422),
        ("hours=2".to_owned(), ADMIN, 400),
        (format!("ids={tp}"), OPERATOR, 403),
    ] {
        let (status, body) = service
            .call(
                Method::GET,
                &format!("/v1/stats/touchpoints?{query}"),
                key,
                None,
            )
            .await;
        assert_eq!(status, want, "{query}: {body}");
    }

    let events = wait_for_events(&data, 1_000).await;
    assert_eq!(events.len(), 1_000);
    let gids: std::collections::HashSet<i64> =
        events.iter().map(|e| e["gid"].as_i64().unwrap()).collect();
    assert_eq!(gids.len(), 1_000);

    // Test send: a real signed request, reported in full but not counted.
    let (status, report) = service
        .call(
            Method::POST,
            &format!("/v1/touchpoints/{tp}/test"),
            ADMIN,
            Some(json!({"users": [{"gid": 7, "attributes": {"usr_name": "Alice"}}], "templateValues": {"title": "Hi {{name}}"}})),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["httpStatus"], 200);
    assert_eq!(
        report["request"]["body"]["dataList"][0]["temData"]["title"],
        "Hi Alice"
    );
    assert!(
        report["request"]["headers"]["webhook-signature"]
            .as_str()
            .unwrap()
            .starts_with("v1,")
    );
    assert_eq!(report["results"][0]["status"], "TOU_SUCC");
    assert_eq!(rx.requests(), 11);
    let (_, after) = service
        .call(Method::GET, "/v1/campaigns/cmp-42/stats", CAMPAIGN, None)
        .await;
    assert_eq!(after, stats, "a test send is not counted");

    // Who may hand in what.
    let (status, _) = service
        .call(Method::POST, "/v1/dispatches", OPERATOR, Some(body.clone()))
        .await;
    assert_eq!(status, 403);
    let mut other = body.clone();
    other["projectId"] = json!(2);
    let (status, _) = service
        .call(Method::POST, "/v1/dispatches", CAMPAIGN, Some(other))
        .await;
    assert_eq!(status, 403);
    let (status, r) = service
        .call(
            Method::POST,
            "/v1/dispatches",
            CAMPAIGN,
            Some(json!({"users": "all"})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(r["error"]["code"], "malformed_dispatch");
    let (status, _) = service
        .call(Method::GET, "/v1/dispatches/nope", CAMPAIGN, None)
        .await;
    assert_eq!(status, 404);
    service.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ssrf_guard_is_on_unless_private_networks_are_allowed() {
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys();
    let service = Service::start(&tmp.path().join("data"), &[("TOUCHPOINT_API_KEYS", &keys)]);
    let tp = touchpoint(&service, &rx.url(), 100).await;
    let (status, report) = service
        .call(
            Method::POST,
            &format!("/v1/touchpoints/{tp}/test"),
            ADMIN,
            Some(json!({"users": [{"gid": 1}], "templateValues": {"title": "x"}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(report["ok"], false);
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("destination refused"),
        "{report}"
    );
    assert_eq!(rx.requests(), 0);
    service.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_20000_users_loses_no_one_and_resends_only_in_flight_batches() {
    let rx = Receiver::start(|seen, _| {
        Reply::After(Duration::from_millis(15), Box::new(Reply::all_ok(seen)))
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let keys = keys();
    let env = [
        ("TOUCHPOINT_API_KEYS", keys.as_str()),
        ("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true"),
    ];
    let service = Service::start(&data, &env);
    let tp = touchpoint(&service, &rx.url(), 100).await;
    for (i, first) in [(1, 0), (2, 10_000)] {
        let (status, _) = service
            .call(
                Method::POST,
                "/v1/dispatches",
                CAMPAIGN,
                Some(dispatch(&format!("big-{i}"), &tp, first, 10_000)),
            )
            .await;
        assert_eq!(status, 202);
    }
    let started = Instant::now();
    while rx.requests() < 40 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    service.kill9();
    let before_restart = rx.requests();
    assert!(
        before_restart < 200,
        "the dispatch finished before the kill; make it slower"
    );

    let service = Service::start(&data, &env);
    for id in ["big-1", "big-2"] {
        let d = completed(&service, id, Duration::from_secs(60)).await;
        assert_eq!(d["counts"]["succeeded"], 10_000, "{id}: {}", d["counts"]);
    }
    let events = wait_for_events(&data, 20_000).await;
    let mut per_user: HashMap<(String, i64), usize> = HashMap::new();
    for e in &events {
        *per_user
            .entry((
                e["dispatchId"].as_str().unwrap().to_owned(),
                e["gid"].as_i64().unwrap(),
            ))
            .or_insert(0) += 1;
    }
    assert_eq!(per_user.len(), 20_000, "users lost");
    assert!(
        per_user.values().all(|n| *n == 1),
        "a user has two result events"
    );
    assert_eq!(events.len(), 20_000);

    let mut posts: HashMap<String, usize> = HashMap::new();
    for s in rx.seen() {
        *posts.entry(s.order_no).or_insert(0) += 1;
    }
    assert_eq!(posts.len(), 200, "every batch was sent");
    let resent = posts.values().filter(|n| **n > 1).count();
    // Only batches in flight at the kill (at most 4 at a time per touchpoint) go out twice.
    assert!(resent <= 4, "{resent} batches were sent again");
    eprintln!("kill -9 after {before_restart} requests: {resent} in-flight batches re-sent");
    service.terminate();
}

/// README's dispatch quick start, run as written: the reference receiver and 1,000 users.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_dispatch_quick_start_works_as_written() {
    let receiver = ReferenceReceiver::start("sync", "abc123");
    let tmp = tempfile::tempdir().unwrap();
    let service = Service::start(
        &tmp.path().join("touchpoint-data"),
        &[("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true")],
    );
    let stdout = run_readme_block(
        "## Send a dispatch to the reference receiver",
        1,
        tmp.path(),
        &service,
        &[("127.0.0.1:9000", format!("127.0.0.1:{}", receiver.port))],
    );
    assert!(stdout.contains(r#""status":"queued""#), "{stdout}");
    assert!(stdout.contains(r#""succeeded":1000"#), "{stdout}");
    assert!(
        stdout.contains(r#"{"rejected":0,"requests":10,"users":1000}"#),
        "the receiver verified every signature: {stdout}"
    );
    assert!(stdout.contains("$ma_channel_touch"), "{stdout}");
    service.terminate();
}

/// Retry rounds are not failures to make progress: with the poison guard at 3 deliveries, a
/// receiver that always answers 503 still gets every attempt of the schedule, and the users fail
/// for their own reason (their attempts ran out), not for the queue's.
#[tokio::test(flavor = "multi_thread")]
async fn retry_rounds_never_trip_the_poison_guard_users_fail_only_when_their_attempts_run_out() {
    let rx = Receiver::start(|_, _| Reply::Json(503, json!({}))).await;
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys();
    let service = Service::start(
        &tmp.path().join("data"),
        &[
            ("TOUCHPOINT_API_KEYS", keys.as_str()),
            ("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true"),
            ("TOUCHPOINT_RETRY_SCHEDULE", "50ms,50ms,50ms,50ms,50ms,50ms"),
            ("TOUCHPOINT_MAX_RECEIVES", "3"),
        ],
    );
    let tp = touchpoint(&service, &rx.url(), 10).await;
    let (status, _) = service
        .call(
            Method::POST,
            "/v1/dispatches",
            CAMPAIGN,
            Some(dispatch("dlq", &tp, 0, 20)),
        )
        .await;
    assert_eq!(status, 202);
    let d = completed(&service, "dlq", Duration::from_secs(30)).await;
    assert_eq!(d["counts"]["failed"], 20, "{d}");
    for batch in d["batches"].as_array().unwrap() {
        let order = batch["orderNo"].as_str().unwrap();
        let (_, b) = service
            .call(Method::GET, &format!("/v1/batches/{order}"), CAMPAIGN, None)
            .await;
        for r in b["results"].as_array().unwrap() {
            assert!(
                r["errorMsg"]
                    .as_str()
                    .unwrap()
                    .starts_with("retries exhausted after 7 attempts: HTTP 503"),
                "{b}"
            );
        }
    }
    assert_eq!(
        rx.requests(),
        14,
        "seven attempts of each of the two batches"
    );
    service.terminate();
}

/// README's async walk-through: the reference receiver in async mode, polled every second.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_async_walkthrough_works_as_written() {
    let receiver = ReferenceReceiver::start("async", "abc123");
    let tmp = tempfile::tempdir().unwrap();
    let service = Service::start(
        &tmp.path().join("touchpoint-data"),
        &[
            ("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true"),
            ("TOUCHPOINT_RECEIPT_POLL_INTERVAL", "1s"),
        ],
    );
    let stdout = run_readme_block(
        "## Async receipts",
        1,
        tmp.path(),
        &service,
        &[("127.0.0.1:9001", format!("127.0.0.1:{}", receiver.port))],
    );
    assert!(stdout.contains(r#""succeeded":100"#), "{stdout}");
    assert!(
        stdout.contains(r#""polls":1"#),
        "settled by a receipt poll: {stdout}"
    );
    service.terminate();
}
