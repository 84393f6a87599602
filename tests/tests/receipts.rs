//! Async receipts with a controllable clock against real receivers on 127.0.0.1: acceptance,
//! polling every 5 minutes, timeouts, failing polls, overlapping and crashed rounds, and the
//! schedule kept in step with the touchpoint's lifecycle.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::{ManualClock, Receiver, Reply};
use touchpoint::clock::Clock;
use touchpoint::delivery::{BatchState, BatchView, DeliveryReports, ReceiptLedger, StatsScope};
use touchpoint::ids::TouchpointId;
use touchpoint::{Touchpoints, UrlPolicy};
use touchpoint_dispatcher::{Dispatcher, DispatcherConfig, Handled};
use touchpoint_embedded::{ResultsFile, SqliteStore};
use touchpoint_outbound::Outbound;
use touchpoint_receipt_poller::{PollerConfig, ReceiptPoller, RoundReport};
use touchpoint_services::{Services, Settings};

const MINUTE: i64 = 60_000;
const T0: i64 = 1_795_946_400_000;

struct Rig {
    clock: Arc<ManualClock>,
    store: SqliteStore,
    touchpoints: Touchpoints,
    dispatcher: Arc<Dispatcher>,
    poller: Arc<ReceiptPoller>,
    sender: touchpoint_receiver::notify::NotificationSender,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let clock = Arc::new(ManualClock::at(T0));
        let services = Services::embedded(
            &store,
            Outbound::new(true).unwrap(),
            clock.clone(),
            Settings {
                urls: UrlPolicy {
                    allow_plain_http: true,
                },
                dispatcher: DispatcherConfig::default(),
                poller: PollerConfig {
                    request_timeout: Duration::from_secs(5),
                    ..PollerConfig::default()
                },
            },
        );
        let (touchpoints, dispatcher, poller) =
            (services.touchpoints, services.dispatcher, services.poller);
        Rig {
            clock,
            store,
            touchpoints,
            dispatcher,
            poller,
            sender: services.notification_sender,
            dir,
        }
    }

    async fn touchpoint(&self, rx: &Receiver, timeout_minutes: u32) -> TouchpointId {
        let tp = self
            .touchpoints
            .create(
                1,
                &json!({
                    "name": format!("async {}", rx.addr.port()), "kind": "benefit", "url": rx.url(), "token": "abc123",
                    "batchSize": 10,
                    "receipt": {"mode": "async", "receiptUrl": rx.receipt_url(), "timeoutMinutes": timeout_minutes},
                    "userAttributes": [{"attribute": "a", "displayName": "a"}],
                    "templateParams": [{"identifier": "t", "displayName": "t", "type": "text"}]
                }),
            )
            .await
            .unwrap();
        self.touchpoints
            .set_spaces(
                1,
                &tp.id,
                vec!["s"].into_iter().map(String::from).collect(),
                None,
            )
            .await
            .unwrap();
        tp.id
    }

    async fn dispatch(&self, id: &str, tp: &str, users: i64) {
        let users: Vec<Value> = (0..users).map(|g| json!({"gid": g})).collect();
        let message = json!({"dispatchId": id, "projectId": 1, "spaceId": "s", "campaignId": "c", "touchpointId": tp, "users": users});
        assert_eq!(
            self.dispatcher.handle(&message).await.unwrap(),
            Handled::Done
        );
    }

    async fn round(&self, tp: &TouchpointId) -> RoundReport {
        self.poller.round(Some((1, tp))).await.unwrap()
    }

    async fn batches(&self, dispatch_id: &str) -> Vec<BatchView> {
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

    /// (gid, status, reason) of every published event.
    async fn events(&self) -> Vec<(i64, String, String)> {
        let path = self.dir.path().join("results.jsonl");
        let results = ResultsFile::new(self.store.clone(), path.clone());
        while results.publish_pending().await.unwrap() > 0 {}
        let mut out: Vec<_> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .flat_map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["events"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .map(|e| {
                (
                    e["gid"].as_i64().unwrap(),
                    e["status"].as_str().unwrap().to_owned(),
                    e["errorMsg"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    }

    async fn schedules(&self) -> Vec<TouchpointId> {
        self.store
            .receipt_schedules()
            .await
            .unwrap()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }
}

/// Accepts every touch with no statuses; answers receipt polls with `answer(poll number, gids)`.
async fn receiver(answer: impl Fn(usize, &[i64]) -> Reply + Send + Sync + 'static) -> Receiver {
    let accepted: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<i64>>>> =
        Arc::default();
    Receiver::start(move |seen, n| {
        if seen.path == "/touch" {
            accepted
                .lock()
                .unwrap()
                .insert(seen.order_no.clone(), seen.gids.clone());
            return Reply::Json(
                200,
                json!({"code": 0, "message": "", "orderNo": seen.order_no}),
            );
        }
        let gids = accepted
            .lock()
            .unwrap()
            .get(&seen.order_no)
            .cloned()
            .unwrap_or_default();
        answer(n, &gids)
    })
    .await
}

fn all_ok(order: &str, gids: &[i64]) -> Reply {
    Reply::statuses_for(order, gids, |_| ("TOU_SUCC", ""))
}

#[tokio::test]
async fn a_receipt_that_arrives_on_the_second_poll_settles_the_batch() {
    let rx = receiver(|n, gids| {
        if n == 1 {
            Reply::Json(200, json!({"code": 0}))
        } else {
            all_ok("", gids)
        }
    })
    .await;
    let rig = Rig::new();
    let tp = rig.touchpoint(&rx, 60).await;
    rig.dispatch("d1", &tp, 4).await;
    let b = &rig.batches("d1").await[0];
    assert_eq!(b.state, BatchState::Accepted);
    assert_eq!(b.pending, vec![0, 1, 2, 3]);
    assert_eq!(
        b.next_poll_at,
        Some(T0 + 5 * MINUTE),
        "polled every 5 minutes"
    );
    assert_eq!(b.deadline, Some(T0 + 60 * MINUTE));
    let stats = rig.store.stats(1, StatsScope::Campaign, "c").await.unwrap();
    assert_eq!((stats.sent, stats.pending), (4, 4));

    assert_eq!(
        rig.round(&tp).await,
        RoundReport::default(),
        "nothing is due before 5 minutes"
    );
    rig.clock.advance(5 * MINUTE);
    assert_eq!(rig.round(&tp).await.polled, 1);
    assert_eq!(rig.batches("d1").await[0].polls, 1);
    rig.clock.advance(5 * MINUTE);
    let report = rig.round(&tp).await;
    assert_eq!((report.polled, report.settled), (1, 4));
    let b = &rig.batches("d1").await[0];
    assert_eq!(b.state, BatchState::Final);
    assert_eq!(b.succeeded, 4);
    assert!(b.pending.is_empty());
    // The receipt request is signed like a touch request.
    let poll = &rx.seen_at("/receipt")[0];
    let ts = poll.body["timeStamp"].as_i64().unwrap();
    assert!(touchpoint::protocol::verify_sign(
        "abc123",
        ts,
        &poll.order_no,
        poll.body["sign"].as_str().unwrap()
    ));
    assert_eq!(rig.events().await.len(), 4);
    rig.clock.advance(5 * MINUTE);
    assert_eq!(
        rig.round(&tp).await,
        RoundReport::default(),
        "a settled batch is not polled"
    );
    assert_eq!(rx.seen_at("/receipt").len(), 2);
}

#[tokio::test]
async fn partial_receipts_over_three_polls_publish_each_user_once() {
    let rx = receiver(|n, gids| {
        // Poll 1 settles 0 and 1, poll 2 repeats 0 and adds 2, poll 3 brings 3.
        let subset: Vec<i64> = match n {
            1 => vec![0, 1],
            2 => vec![0, 2],
            _ => vec![3],
        };
        let subset: Vec<i64> = subset.into_iter().filter(|g| gids.contains(g)).collect();
        Reply::statuses_for("", &subset, |g| {
            if g == 2 {
                ("TOU_FAIL", "no coupon left")
            } else {
                ("TOU_SUCC", "")
            }
        })
    })
    .await;
    let rig = Rig::new();
    let tp = rig.touchpoint(&rx, 60).await;
    rig.dispatch("d1", &tp, 4).await;
    for expected_pending in [vec![2, 3], vec![3], vec![]] {
        rig.clock.advance(5 * MINUTE);
        rig.round(&tp).await;
        assert_eq!(rig.batches("d1").await[0].pending, expected_pending);
    }
    assert_eq!(
        rig.events().await,
        vec![
            (0, "TOU_SUCC".into(), "".into()),
            (1, "TOU_SUCC".into(), "".into()),
            (2, "TOU_FAIL".into(), "no coupon left".into()),
            (3, "TOU_SUCC".into(), "".into()),
        ]
    );
    let stats = rig.store.stats(1, StatsScope::Campaign, "c").await.unwrap();
    assert_eq!((stats.succeeded, stats.failed, stats.pending), (3, 1, 0));
}

#[tokio::test]
async fn users_whose_receipt_never_comes_fail_at_the_timeout_exactly_once() {
    // The touch response settles gid 0 at once; the rest never get a receipt.
    let rx = Receiver::start(|seen, _| {
        if seen.path == "/touch" {
            Reply::statuses_for(&seen.order_no, &[0], |_| ("TOU_SUCC", ""))
        } else {
            Reply::Json(200, json!({"code": 0, "sendStatusList": []}))
        }
    })
    .await;
    let rig = Rig::new();
    let tp = rig.touchpoint(&rx, 10).await;
    rig.dispatch("d1", &tp, 3).await;
    assert_eq!(rig.batches("d1").await[0].pending, vec![1, 2]);
    rig.clock.advance(5 * MINUTE);
    assert_eq!(rig.round(&tp).await.polled, 1);
    rig.clock.advance(5 * MINUTE);
    let report = rig.round(&tp).await;
    assert_eq!(
        (report.polled, report.timed_out),
        (1, 2),
        "at the deadline the batch is polled once more, then its pending users fail"
    );
    assert_eq!(rx.seen_at("/receipt").len(), 2);
    rig.clock.advance(5 * MINUTE);
    assert_eq!(rig.round(&tp).await, RoundReport::default());
    assert_eq!(
        rig.events().await,
        vec![
            (0, "TOU_SUCC".into(), "".into()),
            (1, "TOU_FAIL".into(), "receipt timeout".into()),
            (2, "TOU_FAIL".into(), "receipt timeout".into()),
        ]
    );
}

/// The receipt timeout and the dispatch it completes are notified, signed, and a notification
/// the endpoint fails is sent again later under the same id.
#[tokio::test]
async fn a_receipt_timeout_and_the_completed_dispatch_are_notified_signed_and_retried() {
    const HOOK_TOKEN: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let rx = Receiver::start(|seen, _| {
        if seen.path == "/touch" {
            Reply::statuses_for(&seen.order_no, &[0], |_| ("TOU_SUCC", ""))
        } else {
            Reply::Json(200, json!({"code": 0, "sendStatusList": []}))
        }
    })
    .await;
    // The endpoint fails its first request.
    let hooks = Receiver::start(|_, n| {
        if n == 1 {
            Reply::Json(500, json!({}))
        } else {
            Reply::Json(204, Value::Null)
        }
    })
    .await;
    let rig = Rig::new();
    let events: Vec<&str> = touchpoint::notify::EventType::ALL
        .iter()
        .map(|e| e.as_str())
        .collect();
    rig.touchpoints
        .put_notification_settings(
            1,
            &json!({"url": format!("http://{}/notify", hooks.addr), "token": HOOK_TOKEN, "events": events}),
        )
        .await
        .unwrap();
    let tp = rig.touchpoint(&rx, 10).await;
    rig.dispatch("d1", &tp, 3).await;
    let none = rig
        .store
        .due_notifications(i64::MAX / 2, 0, 10)
        .await
        .unwrap();
    assert!(
        none.is_empty(),
        "users await receipts: nothing to tell yet {none:?}"
    );
    rig.clock.advance(5 * MINUTE);
    rig.round(&tp).await;
    rig.clock.advance(5 * MINUTE);
    assert_eq!(rig.round(&tp).await.timed_out, 2);
    let due = rig
        .store
        .due_notifications(rig.clock.now_ms(), MINUTE, 10)
        .await
        .unwrap();
    let mut types: Vec<&str> = due.iter().map(|(_, n)| n.event.as_str()).collect();
    types.sort();
    assert_eq!(types, ["dispatch.completed", "receipt.timeout"]);
    let timeout = &due
        .iter()
        .find(|(_, n)| n.event.as_str() == "receipt.timeout")
        .unwrap()
        .1;
    assert_eq!(timeout.data["users"], 2);
    assert_eq!(timeout.data["touchpointId"], tp.as_str());
    let completed = &due
        .iter()
        .find(|(_, n)| n.event.as_str() == "dispatch.completed")
        .unwrap()
        .1;
    assert_eq!(
        (
            &completed.data["users"],
            &completed.data["succeeded"],
            &completed.data["failed"]
        ),
        (&json!(3), &json!(1), &json!(2))
    );
    assert_eq!(completed.data["state"], "completed");
    use touchpoint_receiver::notify::Handled as Sent;
    let mut outcomes = Vec::new();
    for (attempt, n) in &due {
        let handled = rig
            .sender
            .handle(n, *attempt, None, &rig.store)
            .await
            .unwrap();
        if handled == Sent::Finished {
            rig.store.notification_done(&n.id).await.unwrap();
        }
        outcomes.push(handled);
    }
    assert_eq!(
        outcomes,
        [Sent::Again, Sent::Finished],
        "the first answered 500"
    );
    // Not due again before its wait.
    let now = rig.clock.now_ms();
    assert!(
        rig.store
            .due_notifications(now, MINUTE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    rig.clock.advance(5_000);
    let again = rig
        .store
        .due_notifications(rig.clock.now_ms(), MINUTE, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].0, &again[0].1.id), (1, &due[0].1.id));
    let handled = rig
        .sender
        .handle(&again[0].1, 1, None, &rig.store)
        .await
        .unwrap();
    assert_eq!(handled, Sent::Finished);
    rig.store.notification_done(&again[0].1.id).await.unwrap();
    // Three requests, each signed as Standard Webhooks says; the retry under the same id.
    let seen = hooks.seen_at("/notify");
    assert_eq!(seen.len(), 3);
    let header = |s: &support::Seen, name: &str| s.headers[name].to_str().unwrap().to_owned();
    for s in &seen {
        let (id, ts) = (header(s, "webhook-id"), header(s, "webhook-timestamp"));
        assert!(touchpoint::protocol::verify_webhook_signature(
            HOOK_TOKEN,
            &id,
            ts.parse().unwrap(),
            &s.raw,
            &header(s, "webhook-signature"),
        ));
        assert!(
            s.body["timestamp"].is_string() && s.body["data"].is_object(),
            "{}",
            s.body
        );
    }
    assert_eq!(
        header(&seen[0], "webhook-id"),
        header(&seen[2], "webhook-id")
    );
    assert_ne!(
        header(&seen[0], "webhook-id"),
        header(&seen[1], "webhook-id")
    );
}

#[tokio::test]
async fn failing_polls_change_nothing_and_are_tried_again_next_round() {
    let rx = receiver(|n, gids| match n {
        1 => Reply::Json(503, json!({})),
        2 => Reply::Json(200, json!({"code": 500, "message": "busy"})),
        3 => Reply::Raw(200, vec![], b"not json".to_vec()),
        _ => all_ok("", gids),
    })
    .await;
    let rig = Rig::new();
    let tp = rig.touchpoint(&rx, 60).await;
    rig.dispatch("d1", &tp, 2).await;
    for round in 1..=3 {
        rig.clock.advance(5 * MINUTE);
        let report = rig.round(&tp).await;
        assert_eq!(
            (report.polled, report.failed_polls, report.settled),
            (1, 1, 0),
            "round {round}"
        );
        let b = &rig.batches("d1").await[0];
        assert_eq!(b.pending, vec![0, 1]);
        assert_eq!(b.polls, round);
    }
    rig.clock.advance(5 * MINUTE);
    assert_eq!(rig.round(&tp).await.settled, 2);
}

#[tokio::test]
async fn a_receipt_endpoint_that_is_down_for_two_rounds_is_polled_again_when_up() {
    let rx = receiver(|_, gids| all_ok("", gids)).await;
    let rig = Rig::new();
    let tp = rig.touchpoint(&rx, 60).await;
    rig.dispatch("d1", &tp, 2).await;
    // Point the batch's receipt URL at a closed port by switching the receiver off: use a
    // touchpoint whose receipt URL refuses connections.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        p
    };
    let dead = rig
        .touchpoints
        .create(
            1,
            &json!({
                "name": "dead receipts", "kind": "benefit", "url": rx.url(), "batchSize": 10,
                "receipt": {"mode": "async", "receiptUrl": format!("http://127.0.0.1:{closed}/receipt"), "timeoutMinutes": 60},
                "userAttributes": [{"attribute": "a", "displayName": "a"}],
                "templateParams": [{"identifier": "t", "displayName": "t", "type": "text"}]
            }),
        )
        .await
        .unwrap();
    rig.touchpoints
        .set_spaces(
            1,
            &dead.id,
            vec!["s"].into_iter().map(String::from).collect(),
            None,
        )
        .await
        .unwrap();
    rig.dispatch("d2", &dead.id, 2).await;
    for _ in 0..2 {
        rig.clock.advance(5 * MINUTE);
        let report = rig.round(&dead.id).await;
        assert_eq!(report.failed_polls, 1);
    }
    let b = &rig.batches("d2").await[0];
    assert_eq!((b.polls, b.pending.len()), (2, 2));
    assert!(
        b.last_error
            .as_deref()
            .unwrap_or("")
            .contains("connection failed"),
        "{:?}",
        b.last_error
    );
    // Up again: a listener on that port answers the receipt.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", closed))
        .await
        .unwrap();
    let app = axum::Router::new().fallback(axum::routing::post(|body: axum::Json<Value>| async move {
        let order = body["orderNo"].as_str().unwrap_or_default().to_owned();
        axum::Json(json!({"code": 0, "orderNo": order, "sendStatusList": [{"gid": 0, "status": "TOU_SUCC"}, {"gid": 1, "status": "TOU_SUCC"}]}))
    }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    rig.clock.advance(5 * MINUTE);
    assert_eq!(rig.round(&dead.id).await.settled, 2);
    assert_eq!(rig.batches("d2").await[0].state, BatchState::Final);
    server.abort();
}

#[tokio::test]
async fn overlapping_rounds_poll_each_batch_once_and_a_crashed_rounds_lease_expires() {
    let rx = receiver(|_, gids| {
        Reply::After(
            Duration::from_millis(300),
            Box::new(Reply::statuses_for("", gids, |_| ("TOU_SUCC", ""))),
        )
    })
    .await;
    let rig = Rig::new();
    let tp = rig.touchpoint(&rx, 60).await;
    rig.dispatch("d1", &tp, 30).await; // three batches of 10
    rig.clock.advance(5 * MINUTE);
    let (a, b) = tokio::join!(rig.round(&tp), rig.round(&tp));
    assert_eq!(a.polled + b.polled, 3, "{a:?} {b:?}");
    assert_eq!(a.skipped + b.skipped, 3);
    assert_eq!(rx.seen_at("/receipt").len(), 3, "each batch polled once");
    assert_eq!(rig.events().await.len(), 30);

    // A round that died after taking its lease: the batch waits for the lease to end.
    rig.dispatch("d2", &tp, 5).await;
    rig.clock.advance(5 * MINUTE);
    let order = rig.batches("d2").await[0].order_no.clone();
    let now = rig.clock.now_ms();
    let leased = rig
        .store
        .lease_poll(1, &order, now, now + 60_000)
        .await
        .unwrap()
        .expect("leased");
    assert_eq!(
        (leased.pending.len(), leased.receipt_url.is_empty()),
        (5, false),
        "the lease hands out the batch as it is"
    );
    assert_eq!(rig.round(&tp).await.skipped, 1);
    rig.clock.advance(61_000);
    assert_eq!(
        rig.round(&tp).await.settled,
        5,
        "the next round takes over after the lease"
    );
}

#[tokio::test]
async fn batches_pending_when_a_touchpoint_switches_to_sync_still_finish() {
    let rx = receiver(|_, gids| all_ok("", gids)).await;
    let rig = Rig::new();
    let tp = rig.touchpoint(&rx, 60).await;
    rig.dispatch("d1", &tp, 3).await;
    assert_eq!(rig.schedules().await, vec![tp.clone()]);
    let off = rig.touchpoints.disable(1, &tp, None).await.unwrap();
    let mut edit = json!({
        "version": off.version, "name": off.spec.name, "kind": "benefit", "url": rx.url(), "batchSize": 10,
        "receipt": {"mode": "sync"},
        "userAttributes": [{"attribute": "a", "displayName": "a"}],
        "templateParams": [{"identifier": "t", "displayName": "t", "type": "text"}]
    });
    rig.touchpoints.update(1, &tp, &edit).await.unwrap();
    assert_eq!(
        rig.schedules().await,
        vec![tp.clone()],
        "kept while receipts are pending"
    );
    rig.clock.advance(5 * MINUTE);
    assert_eq!(
        rig.round(&tp).await.settled,
        3,
        "polled at the URL it was accepted with"
    );
    assert!(
        rig.schedules().await.is_empty(),
        "removed once nothing is pending"
    );
    // Back to async: ensured again.
    edit["version"] = json!(off.version + 1);
    edit["receipt"] = json!({"mode": "async", "receiptUrl": rx.receipt_url()});
    rig.touchpoints.update(1, &tp, &edit).await.unwrap();
    assert_eq!(rig.schedules().await, vec![tp.clone()]);
}

#[tokio::test]
async fn schedules_follow_the_touchpoint_lifecycle() {
    let rx = receiver(|_, gids| all_ok("", gids)).await;
    let rig = Rig::new();
    let sync = rig
        .touchpoints
        .create(
            1,
            &json!({"name": "sync", "kind": "other", "url": rx.url(),
                    "userAttributes": [{"attribute": "a", "displayName": "a"}],
                    "templateParams": [{"identifier": "t", "displayName": "t", "type": "text"}]}),
        )
        .await
        .unwrap();
    assert!(
        rig.schedules().await.is_empty(),
        "a sync touchpoint needs no polling"
    );
    let tp = rig.touchpoint(&rx, 60).await;
    assert_eq!(
        rig.schedules().await,
        vec![tp.clone()],
        "ensured at creation"
    );
    rig.touchpoints.disable(1, &tp, None).await.unwrap();
    rig.store.remove_schedule_for_test(1, &tp).await;
    rig.touchpoints.enable(1, &tp, None).await.unwrap();
    assert_eq!(
        rig.schedules().await,
        vec![tp.clone()],
        "ensured when enabled"
    );
    rig.store.remove_schedule_for_test(1, &tp).await;
    rig.touchpoints.enable(1, &tp, None).await.unwrap();
    assert_eq!(
        rig.schedules().await,
        vec![tp.clone()],
        "enabling an enabled touchpoint re-syncs its schedule"
    );
    rig.touchpoints.disable(1, &tp, None).await.unwrap();
    rig.touchpoints.delete(1, &tp, None).await.unwrap();
    assert!(
        rig.schedules().await.is_empty(),
        "removed when deleted with nothing pending"
    );
    drop(sync);
}

#[tokio::test]
async fn a_receipt_url_that_hangs_costs_one_timeout_per_round_and_users_fail_at_the_deadline() {
    let rx =
        receiver(|_, gids| Reply::After(Duration::from_secs(3_600), Box::new(all_ok("", gids))))
            .await;
    let rig = Rig::new();
    let tp = rig.touchpoint(&rx, 10).await;
    rig.dispatch("d1", &tp, 2).await;
    rig.clock.advance(5 * MINUTE);
    // The receiver would answer in an hour: the round ends because the poll gives up at the
    // request timeout (the guard below is only liveness).
    let report = tokio::time::timeout(Duration::from_secs(60), rig.round(&tp))
        .await
        .expect("the poll waited for the receiver");
    assert_eq!((report.polled, report.failed_polls), (1, 1));
    let b = &rig.batches("d1").await[0];
    assert!(
        b.last_error.as_deref().unwrap_or("").contains("timed out"),
        "{b:?}"
    );
    assert_eq!(b.pending, vec![0, 1]);
    rig.clock.advance(5 * MINUTE);
    assert_eq!(rig.round(&tp).await.timed_out, 2);
    assert_eq!(
        rig.events().await,
        vec![
            (0, "TOU_FAIL".into(), "receipt timeout".into()),
            (1, "TOU_FAIL".into(), "receipt timeout".into()),
        ]
    );
}

/// A round that meets its deadline leases nothing it cannot finish; what it leaves is still
/// due, and the next round polls it.
#[tokio::test]
async fn a_round_near_its_deadline_leaves_its_batches_to_the_next_round() {
    let rx = receiver(|_, gids| all_ok("", gids)).await;
    let rig = Rig::new();
    let tp = rig.touchpoint(&rx, 60).await;
    rig.dispatch("d1", &tp, 30).await;
    rig.clock.advance(5 * MINUTE);
    let now = touchpoint::clock::Clock::now_ms(&*rig.clock);
    // Less time left than a poll's request timeout and margin.
    let report = rig
        .poller
        .round_until(Some((1, &tp)), now + 1_000)
        .await
        .unwrap();
    assert_eq!((report.polled, report.left), (0, 3), "{report:?}");
    assert!(rx.seen_at("/receipt").is_empty());
    let report = rig.round(&tp).await;
    assert_eq!((report.polled, report.settled), (3, 30));
}
