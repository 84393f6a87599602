//! Crash safety: `kill -9` the local service ten times at random moments while it delivers
//! 50,000 users through four touchpoints (batch sizes 1, 50 and 500 with sync receipts, and
//! 100 with async receipts polled by the service), restarting it each time. Nobody may be
//! lost, nobody may get two outcomes, every user gets exactly one results event, and no batch
//! is sent (or polled) after its outcome was final. Batches in flight at a kill are sent again
//! with the same `orderNo`: that is the documented retry, and it is counted.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::service::{SECRET, Service};
use crate::support::{Receiver, Reply};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "crash-admin-key-0001";
const CAMPAIGN: &str = "crash-campaign-key-01";
const KILLS: usize = 10;
const USERS: usize = 50_000;

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A small xorshift generator: the kill moments are random, and the seed is printed so a
/// failing run can be replayed with `CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

async fn touchpoint(
    service: &Service,
    name: &str,
    batch: u16,
    url: &str,
    receipt: Value,
) -> String {
    let body = json!({
        "name": name, "kind": "benefit", "url": url, "token": SECRET, "batchSize": batch,
        "receipt": receipt,
        "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "n"}],
        "templateParams": [{"identifier": "title", "displayName": "t", "type": "text", "required": true}]
    });
    service.register(ADMIN, body, &["s"]).await
}

fn events(data: &Path) -> Vec<Value> {
    crate::support::results_events(&data.join("results.jsonl"))
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_kill_9s_during_50000_users_lose_no_one_and_send_nothing_after_its_outcome() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (wall_ms() as u64) | 1);
    let mut rng = Rng(seed);

    // Sync touches succeed after 25 ms (40 ms at batch size 1); async touches are accepted and their users succeed
    // on the first poll of the receipt URL.
    let accepted: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let rx = {
        let accepted = Arc::clone(&accepted);
        Receiver::start(move |seen, _| match seen.path.as_str() {
            "/async" => {
                accepted
                    .lock()
                    .unwrap()
                    .insert(seen.order_no.clone(), seen.gids.clone());
                Reply::After(
                    Duration::from_millis(25),
                    Box::new(Reply::Json(
                        200,
                        json!({"code": 0, "message": "", "orderNo": seen.order_no}),
                    )),
                )
            }
            "/receipt" => {
                let gids = accepted
                    .lock()
                    .unwrap()
                    .get(&seen.order_no)
                    .cloned()
                    .unwrap_or_default();
                Reply::statuses_for(&seen.order_no, &gids, |_| ("TOU_SUCC", ""))
            }
            // Batch size 1 is the long tail: slower, so the ten kills land before it ends.
            "/one" => Reply::After(Duration::from_millis(40), Box::new(Reply::all_ok(seen))),
            _ => Reply::After(Duration::from_millis(25), Box::new(Reply::all_ok(seen))),
        })
        .await
    };
    let base = format!("http://{}", rx.addr);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let keys = format!("{ADMIN}=1:admin,{CAMPAIGN}=1:campaign");
    let env = [
        ("TOUCHPOINT_API_KEYS", keys.as_str()),
        ("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true"),
        ("TOUCHPOINT_RECEIPT_POLL_INTERVAL", "300ms"),
        ("TOUCHPOINT_LOG", "warn"),
    ];
    let mut service = Service::start(&data, &env);
    let sync = json!({"mode": "sync"});
    let asynchronous =
        json!({"mode": "async", "receiptUrl": format!("{base}/receipt"), "timeoutMinutes": 60});
    let b1 = touchpoint(&service, "batch 1", 1, &format!("{base}/one"), sync.clone()).await;
    let b50 = touchpoint(
        &service,
        "batch 50",
        50,
        &format!("{base}/touch"),
        sync.clone(),
    )
    .await;
    let b500 = touchpoint(&service, "batch 500", 500, &format!("{base}/touch"), sync).await;
    let a100 = touchpoint(
        &service,
        "async 100",
        100,
        &format!("{base}/async"),
        asynchronous,
    )
    .await;
    let plan = [
        (&b1, 2_000),
        (&b50, 6_500),
        (&b50, 6_500),
        (&b500, 10_000),
        (&b500, 10_000),
        (&a100, 7_500),
        (&a100, 7_500),
    ];
    let mut next_gid = 0i64;
    let mut expected: HashSet<(String, i64)> = HashSet::new();
    for (i, (tp, n)) in plan.iter().enumerate() {
        let id = format!("crash-{i}");
        let users: Vec<Value> = (next_gid..next_gid + *n as i64)
            .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
            .collect();
        for g in next_gid..next_gid + *n as i64 {
            expected.insert((id.clone(), g));
        }
        next_gid += *n as i64;
        let (status, _) = service
            .call(
                Method::POST,
                "/v1/dispatches",
                CAMPAIGN,
                Some(json!({"dispatchId": id, "projectId": 1, "spaceId": "s", "campaignId": "c",
                            "touchpointId": tp, "templateValues": {"title": "Hi {{name}}"}, "users": users})),
            )
            .await;
        assert_eq!(status, 202);
    }
    assert_eq!(expected.len(), USERS);

    // Ten kills at random moments, each followed by a restart. A process's requests are
    // those that arrive after it was started.
    let started = Instant::now();
    let mut starts = vec![i64::MIN];
    let mut kills = Vec::new();
    for _ in 0..KILLS {
        let wait = rng.between(150, 800);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let done = events(&data).len();
        assert!(
            done < USERS,
            "the run finished before kill {}; make it slower",
            kills.len() + 1
        );
        service.kill9();
        kills.push((wait, done, rx.requests()));
        starts.push(wall_ms());
        service = Service::start(&data, &env);
    }

    // The last process finishes the work.
    let deadline = Instant::now() + Duration::from_secs(240);
    let events = loop {
        let e = events(&data);
        if e.len() >= USERS {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {USERS} results after the kills",
            e.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Give a late duplicate the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = {
        let again = self::events(&data);
        assert_eq!(
            again.len(),
            events.len(),
            "results kept coming after all were in"
        );
        again
    };
    for (i, (_, users)) in plan.iter().enumerate() {
        let (status, d) = service
            .call(
                Method::GET,
                &format!("/v1/dispatches/crash-{i}"),
                CAMPAIGN,
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(d["state"], "completed", "{d}");
        assert_eq!(d["counts"]["succeeded"], *users, "{}", d["counts"]);
    }
    service.terminate();

    // Users lost: 0. Users with two outcomes: 0. Events per user: exactly 1.
    let mut per_user: HashMap<(String, i64), usize> = HashMap::new();
    let mut resolved: HashMap<String, (i64, i64)> = HashMap::new();
    for e in &events {
        let key = (
            e["dispatchId"].as_str().unwrap().to_owned(),
            e["gid"].as_i64().unwrap(),
        );
        assert!(
            expected.contains(&key),
            "an event for a user nobody sent: {e}"
        );
        *per_user.entry(key).or_insert(0) += 1;
        assert_eq!(
            e["status"], "TOU_SUCC",
            "every receiver answer was a success: {e}"
        );
        let at = e["resolvedAt"].as_i64().unwrap();
        let span = resolved
            .entry(e["orderNo"].as_str().unwrap().to_owned())
            .or_insert((at, at));
        span.0 = span.0.min(at);
        span.1 = span.1.max(at);
    }
    let lost = expected.len() - per_user.len();
    let doubled = per_user.values().filter(|n| **n > 1).count();
    assert_eq!(lost, 0, "users lost");
    assert_eq!(doubled, 0, "users with two outcomes");
    assert_eq!(events.len(), USERS, "exactly one event per user");

    // No batch sent (or polled) after its outcome was final; a batch is sent at most once per
    // process, so every repeat is the retry of a batch in flight at a kill.
    let epoch = |t: i64| starts.iter().filter(|s| **s <= t).count();
    let mut touches: HashMap<String, Vec<i64>> = HashMap::new();
    let mut late = Vec::new();
    for s in rx.seen() {
        let (first, last) = resolved[&s.order_no];
        if s.path == "/receipt" {
            if s.wall_ms > last {
                late.push(format!(
                    "poll of {} at {} after {last}",
                    s.order_no, s.wall_ms
                ));
            }
        } else {
            if s.wall_ms > first {
                late.push(format!(
                    "touch of {} at {} after {first}",
                    s.order_no, s.wall_ms
                ));
            }
            // Which process sent it: by the request's own timeStamp (the sender's clock when
            // it built the request), not by when the receiver got to it. A request written
            // just before a kill can be read after the next process started (the receiver
            // shares two cores with everything else), and would otherwise count as that
            // process's.
            let sent = s.body["timeStamp"].as_i64().unwrap_or(s.wall_ms);
            touches.entry(s.order_no.clone()).or_default().push(sent);
        }
    }
    assert!(
        late.is_empty(),
        "requests after the outcome was final: {late:?}"
    );
    let mut resent = 0;
    for (order, times) in &touches {
        let epochs: HashSet<usize> = times.iter().map(|t| epoch(*t)).collect();
        assert_eq!(
            epochs.len(),
            times.len(),
            "{order} was sent twice by one process: {times:?} (starts {starts:?})"
        );
        if times.len() > 1 {
            resent += 1;
        }
    }
    let batches = touches.len();
    assert_eq!(
        batches,
        2_000 + 2 * 130 + 2 * 20 + 2 * 75,
        "every batch was sent"
    );
    eprintln!(
        "crash safety (seed {seed}): {KILLS} kills over {:?} at (wait ms, results so far, requests so far) {kills:?}; \
         {USERS} users, lost 0, two outcomes 0, one event each; {batches} batches, {resent} in-flight batches re-sent, \
         0 requests after an outcome was final; {} requests in all",
        started.elapsed(),
        rx.requests()
    );
}
