//! Delivery end to end through the dispatcher library, its SQLite ledger and real receivers
//! on 127.0.0.1: batching, signing, receipts, retries, idempotency, the SSRF guard and invalid
//! dispatches.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::rig::{Rig, TOKEN, config, dispatch, results_of};
use support::{Receiver, Reply, Seen};
use touchpoint::clock::{Clock, Millis};
use touchpoint::delivery::{
    AttemptRecord, BatchState, BatchView, Claim, Counters, DeliveryLedger, DeliveryReports,
    DispatchMeta, DispatchView, HourStats, Opened, PendingBatch, PollRecord, ReasonCount,
    ReceiptLedger, StatsScope,
};
use touchpoint::ids::{DispatchId, OrderNo, TouchpointId};
use touchpoint::ledger::Progress;
use touchpoint::model::ProjectId;
use touchpoint::ports::StoreError;
use touchpoint::protocol::{verify_sign, verify_webhook_signature};
use touchpoint_dispatcher::{DispatcherConfig, Handled};
use touchpoint_outbound::{Lookup, Outbound};

#[tokio::test]
async fn every_user_is_delivered_once_in_signed_batches_and_reported_once() {
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let rig = Rig::new(config("50ms", 2_000));
    let tp = rig.touchpoint("sms", &rx.url(), 500).await;
    assert_eq!(
        rig.deliver(&dispatch("d1", &tp, 1_001)).await,
        Handled::Done
    );

    let seen = rx.seen();
    assert_eq!(seen.len(), 3, "1,001 users at batch 500 are three requests");
    for s in &seen {
        let b = &s.body;
        let ts = b["timeStamp"].as_i64().unwrap();
        assert!(verify_sign(
            TOKEN,
            ts,
            &s.order_no,
            b["sign"].as_str().unwrap()
        ));
        let h = |n: &str| s.headers[n].to_str().unwrap().to_owned();
        assert_eq!(h("webhook-id"), s.order_no);
        assert!(verify_webhook_signature(
            TOKEN,
            &s.order_no,
            h("webhook-timestamp").parse().unwrap(),
            &s.raw,
            &h("webhook-signature")
        ));
        assert!(h("user-agent").starts_with("touchpoint/"));
        assert!(h("content-type").starts_with("application/json"));
        assert_eq!(s.order_no.len(), 32);
        let first = &b["dataList"][0];
        let gid = first["gid"].as_i64().unwrap();
        assert_eq!(first["dynamicData"]["name"], format!("u{gid}"));
        assert_eq!(
            first["temData"]["title"],
            format!("Hi u{gid}"),
            "text rendered per user"
        );
        assert_eq!(first["temData"]["day"], "2026-12-01");
    }
    let counts = rx.gid_counts();
    assert_eq!(counts.len(), 1_001);
    assert!(counts.values().all(|c| *c == 1));

    let events = rig.events().await;
    assert_eq!(events.len(), 1_001, "one event per user");
    let e = &events[0];
    assert_eq!(e["event"], "$ma_channel_touch");
    assert_eq!(e["status"], "TOU_SUCC");
    assert_eq!(e["campaignId"], "cmp-42");
    assert_eq!(e["strategyId"], "node-7");
    assert_eq!(e["touchpointKind"], "notification");
    let stats = rig
        .store
        .stats(1, StatsScope::Campaign, "cmp-42")
        .await
        .unwrap();
    assert_eq!(
        (stats.sent, stats.succeeded, stats.failed, stats.pending),
        (1_001, 1_001, 0, 0)
    );
    let by_tp = rig
        .store
        .stats(1, StatsScope::Touchpoint, &tp)
        .await
        .unwrap();
    assert_eq!(by_tp.succeeded, 1_001);
    // Publishing again adds nothing.
    assert_eq!(rig.events().await.len(), 1_001);
}

#[tokio::test]
async fn the_ledger_writes_at_most_two_rows_per_batch_on_the_success_path() {
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let rig = Rig::new(config("50ms", 2_000));
    let tp = rig.touchpoint("sms", &rx.url(), 10).await;
    let before = rig.store.ledger_writes();
    rig.deliver(&dispatch("d1", &tp, 1_000)).await;
    let writes = rig.store.ledger_writes() - before;
    // 100 batches: a claim and a record each, plus opening the dispatch once.
    assert_eq!(writes, 100 * 2 + 1, "{writes} ledger writes");
}

#[tokio::test]
async fn batch_sizes_1_2_and_500_send_the_right_number_of_requests() {
    for (batch, requests) in [(1u16, 1_001usize), (2, 501), (500, 3)] {
        let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
        let rig = Rig::new(DispatcherConfig {
            per_touchpoint_concurrency: 16,
            ..config("50ms", 2_000)
        });
        let tp = rig.touchpoint("sms", &rx.url(), batch).await;
        rig.deliver(&dispatch("d1", &tp, 1_001)).await;
        assert_eq!(rx.requests(), requests, "batch size {batch}");
        assert!(rx.seen().iter().all(|s| s.gids.len() <= batch as usize));
        let counts = rx.gid_counts();
        assert_eq!(counts.len(), 1_001);
        assert!(
            counts.values().all(|c| *c == 1),
            "batch size {batch}: a user twice"
        );
        assert_eq!(rig.events().await.len(), 1_001);
    }
}

#[tokio::test]
async fn receipts_decide_each_users_outcome() {
    let rig = Rig::new(config("50ms", 2_000));
    type Behave = Box<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;
    type Expect = Box<dyn Fn(i64) -> (&'static str, &'static str)>;
    let cases: Vec<(&str, Behave, Expect)> = vec![
        (
            "partial",
            Box::new(|s, _| {
                Reply::statuses(s, |g| {
                    if g % 2 == 0 {
                        ("TOU_SUCC", "")
                    } else {
                        ("TOU_FAIL", "blacklisted")
                    }
                })
            }),
            Box::new(|g| {
                if g % 2 == 0 {
                    ("TOU_SUCC", "")
                } else {
                    ("TOU_FAIL", "blacklisted")
                }
            }),
        ),
        (
            "code500",
            Box::new(|_, _| Reply::Json(200, json!({"code": 500, "message": "服务调用异常"}))),
            Box::new(|_| ("TOU_FAIL", "服务调用异常")),
        ),
        (
            "missing",
            Box::new(|s, _| {
                Reply::statuses(
                    &Seen {
                        gids: s.gids.iter().copied().filter(|g| *g != 3).collect(),
                        ..s.clone()
                    },
                    |_| ("TOU_SUCC", ""),
                )
            }),
            Box::new(|g| {
                if g == 3 {
                    ("TOU_FAIL", "no status returned")
                } else {
                    ("TOU_SUCC", "")
                }
            }),
        ),
        (
            "garbage",
            Box::new(|_, _| Reply::Raw(200, vec![], b"<html>oops</html>".to_vec())),
            Box::new(|_| ("TOU_FAIL", "invalid receipt: not a JSON object")),
        ),
        (
            "a 404",
            Box::new(|_, _| Reply::Json(404, json!({}))),
            Box::new(|_| ("TOU_FAIL", "HTTP 404")),
        ),
    ];
    for (name, behaviour, expect) in cases {
        let rx = Receiver::start(behaviour).await;
        let tp = rig.touchpoint(name, &rx.url(), 3).await;
        let id = format!("d-{name}");
        rig.deliver(&dispatch(&id, &tp, 6)).await;
        assert_eq!(rx.requests(), 2, "{name}: final outcomes are not retried");
        let got = results_of(&rig.batches(&id).await);
        let want: Vec<_> = (0..6)
            .map(|g| {
                let (s, e) = expect(g);
                (g, s.to_owned(), e.to_owned())
            })
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[tokio::test]
async fn transient_failures_are_retried_with_the_same_order_number() {
    let rx = Receiver::start(|seen, n| match n {
        1 => Reply::Json(500, json!({})),
        2 => Reply::Json(408, json!({})),
        _ => Reply::all_ok(seen),
    })
    .await;
    let rig = Rig::new(config("50ms,50ms,50ms", 2_000));
    let tp = rig.touchpoint("sms", &rx.url(), 10).await;
    rig.deliver(&dispatch("d1", &tp, 10)).await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.order_no == seen[0].order_no),
        "one orderNo on every retry"
    );
    let batches = rig.batches("d1").await;
    assert_eq!(batches[0].attempts, 3);
    assert_eq!(batches[0].state, BatchState::Final);
    assert_eq!(batches[0].succeeded, 10);
    assert_eq!(rig.events().await.len(), 10, "one final outcome per user");
}

/// A message that is not a dispatch is dead-lettered with its reason, also when the queue's
/// receive count says to give up on it (it must not disappear without a record).
#[tokio::test]
async fn an_unreadable_message_given_up_on_is_still_dead_lettered() {
    let rig = Rig::new(config("50ms", 2_000));
    for text in ["not json", "[]", r#"{"dispatchId": 7}"#] {
        let given_up = rig
            .dispatcher
            .give_up_text(text, "too many receives", Millis::MAX)
            .await
            .unwrap();
        assert!(
            matches!(given_up, Handled::Malformed(_)),
            "{text}: {given_up:?}"
        );
        let handled = rig
            .dispatcher
            .handle_text(text, 1, Millis::MAX)
            .await
            .unwrap();
        assert!(
            matches!(handled, Handled::Malformed(_)),
            "{text}: {handled:?}"
        );
    }
}

/// A line logged while a batch goes out names its dispatch and its order number (the spans the
/// dispatcher opens), so an operator can follow one batch through the logs.
#[tokio::test]
async fn log_lines_of_a_batch_name_its_dispatch_and_order_number() {
    use std::sync::Mutex;
    use tracing_subscriber::util::SubscriberInitExt;

    #[derive(Clone)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Capture(Arc::new(Mutex::new(Vec::new())));
    let writer = captured.clone();
    // The batch span is at debug level: cheap to skip at the default info filter (it was 9 %
    // of the CPU at batch size 1 in the debug build), there when someone looks closer.
    let _guard = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_writer(move || writer.clone())
        .finish()
        .set_default();

    let rx = Receiver::start(|seen, n| match n {
        1 => Reply::Json(500, json!({})),
        _ => Reply::all_ok(seen),
    })
    .await;
    let rig = Rig::new(config("50ms", 2_000));
    let tp = rig.touchpoint("sms", &rx.url(), 10).await;
    rig.deliver(&dispatch("d-logged", &tp, 10)).await;
    let order_no = rx.seen()[0].order_no.clone();
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let retried: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "batch will be retried")
        .collect();
    assert_eq!(retried.len(), 1, "{text}");
    let spans = retried[0]["spans"]
        .as_array()
        .expect("the spans of the line");
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "dispatch" && s["dispatch_id"] == "d-logged"),
        "{spans:?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "batch" && s["order_no"] == order_no.as_str()),
        "{spans:?}"
    );
}

/// A dispatch's batches that failed together are retried together, jitter on: the round after a
/// failed one is one delivery that finds every batch due (each batch's own jittered time would
/// need a delivery per batch), and none is retried earlier than its own time.
#[tokio::test]
async fn batches_that_failed_together_are_retried_in_one_round() {
    let rx = Receiver::start(|seen, n| {
        if n <= 20 {
            Reply::Json(503, json!({}))
        } else {
            Reply::all_ok(seen)
        }
    })
    .await;
    let cfg = DispatcherConfig {
        retry: touchpoint::ledger::RetryPolicy {
            jitter: 0.2,
            ..touchpoint::ledger::RetryPolicy::parse("300ms").unwrap()
        },
        per_touchpoint_concurrency: 4,
        // Twenty 503s in a row would pause the touchpoint (the breaker's own tests are
        // elsewhere): this one is about the retry round.
        health: touchpoint::health::HealthPolicy {
            min_requests: 1_000,
            ..Default::default()
        },
        ..config("300ms", 2_000)
    };
    let rig = Rig::new(cfg);
    let tp = rig.touchpoint("round", &rx.url(), 5).await;
    let d = dispatch("round-1", &tp, 100);
    let first = rig.dispatcher.handle(&d).await.unwrap();
    let Handled::RetryAt(at) = first else {
        panic!("a retry round: {first:?}");
    };
    assert_eq!(rx.requests(), 20, "every batch failed once");
    let batches = rig.batches("round-1").await;
    let latest = batches
        .iter()
        .filter_map(|b| b.next_attempt_at)
        .max()
        .unwrap();
    assert!(
        at >= latest,
        "the round waits for its last batch ({at} < {latest})"
    );
    let wait = at - touchpoint::clock::SystemClock.now_ms();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64 + 5)).await;
    assert_eq!(
        rig.dispatcher.handle(&d).await.unwrap(),
        Handled::Done,
        "one delivery for the whole round"
    );
    assert_eq!(rx.requests(), 40);
}

/// The timeouts README states.
#[test]
fn a_request_times_out_after_15_s_and_a_connection_after_5_s_by_default() {
    assert_eq!(
        DispatcherConfig::default().request_timeout,
        Duration::from_secs(15)
    );
    assert_eq!(touchpoint_outbound::CONNECT_TIMEOUT, Duration::from_secs(5));
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_the_schedules_cap() {
    let rx = Receiver::start(|seen, n| {
        if n == 1 {
            Reply::Raw(429, vec![("retry-after", "1".into())], b"{}".to_vec())
        } else {
            Reply::all_ok(seen)
        }
    })
    .await;
    let rig = Rig::new(config("50ms,5s", 2_000));
    let tp = rig.touchpoint("sms", &rx.url(), 10).await;
    rig.deliver(&dispatch("d1", &tp, 3)).await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "waited only {gap:?} despite Retry-After: 1"
    );
    assert_eq!(rig.batches("d1").await[0].succeeded, 3);
}

#[tokio::test]
async fn timeouts_refused_connections_and_endless_5xx_exhaust_the_retries() {
    let slow = Receiver::start(|seen, _| {
        Reply::After(Duration::from_secs(3), Box::new(Reply::all_ok(seen)))
    })
    .await;
    let broken = Receiver::start(|_, _| Reply::Json(503, json!({}))).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/touch")
    };
    let rig = Rig::new(config("20ms,20ms", 300));
    for (name, url, needle) in [
        ("slow", slow.url(), "timed out"),
        ("broken", broken.url(), "HTTP 503"),
        ("closed", closed, "connection failed"),
    ] {
        let tp = rig.touchpoint(name, &url, 5).await;
        let id = format!("d-{name}");
        rig.deliver(&dispatch(&id, &tp, 5)).await;
        let b = &rig.batches(&id).await[0];
        assert_eq!(b.attempts, 3, "{name}");
        assert_eq!(b.failed, 5, "{name}");
        let reason = b.results[0].status.reason().to_owned();
        assert!(
            reason.starts_with("retries exhausted after 3 attempts"),
            "{name}: {reason}"
        );
        assert!(reason.contains(needle), "{name}: {reason}");
    }
    assert_eq!(slow.requests(), 3);
    assert_eq!(broken.requests(), 3);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let location = target.url();
    let rx =
        Receiver::start(move |_, _| Reply::Raw(302, vec![("location", location.clone())], vec![]))
            .await;
    let rig = Rig::new(config("20ms", 2_000));
    let tp = rig.touchpoint("sms", &rx.url(), 5).await;
    rig.deliver(&dispatch("d1", &tp, 5)).await;
    assert_eq!(rx.requests(), 1, "a 3xx is final");
    assert_eq!(target.requests(), 0, "the redirect target is never reached");
    let b = &rig.batches("d1").await[0];
    assert_eq!(b.failed, 5);
    assert!(b.results[0].status.reason().contains("302"));
}

#[tokio::test]
async fn the_same_dispatch_twice_sends_nothing_twice() {
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let rig = Rig::new(config("20ms", 2_000));
    let tp = rig.touchpoint("sms", &rx.url(), 7).await;
    let d = dispatch("d1", &tp, 50);
    rig.deliver(&d).await;
    assert_eq!(rx.requests(), 8);
    rig.deliver(&d).await;
    rig.deliver(&d).await;
    assert_eq!(rx.requests(), 8, "redelivery sent a batch again");
    assert_eq!(rig.events().await.len(), 50);
    let stats = rig
        .store
        .stats(1, StatsScope::Campaign, "cmp-42")
        .await
        .unwrap();
    assert_eq!(stats.sent, 50, "counted once");
}

#[tokio::test]
async fn invalid_dispatches_send_nothing_and_fail_every_user_with_the_reason() {
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let rig = Rig::new(config("20ms", 2_000));
    let tp = rig.touchpoint("sms", &rx.url(), 10).await;
    let off = rig.touchpoint("off", &rx.url(), 10).await;
    rig.touchpoints
        .disable(1, &off.as_str().into(), None)
        .await
        .unwrap();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "missing touchpoint",
            Box::new(|d| d["touchpointId"] = json!("tp_01JDX3ZZZZZZZZZZZZZZZZZZZZ")),
            "does not exist",
        ),
        (
            "disabled",
            Box::new(move |d| d["touchpointId"] = json!(off)),
            "is disabled",
        ),
        (
            "other space",
            Box::new(|d| d["spaceId"] = json!("space-z")),
            "not authorized for space space-z",
        ),
        (
            "bad date",
            Box::new(|d| d["templateValues"]["day"] = json!("2026-02-30")),
            "templateValues.day",
        ),
        (
            "required",
            Box::new(|d| {
                d["templateValues"].as_object_mut().unwrap().remove("title");
            }),
            "title is required",
        ),
        (
            "unknown key",
            Box::new(|d| d["templateValues"]["colour"] = json!("red")),
            "colour is not a parameter",
        ),
        (
            "duplicate gid",
            Box::new(|d| d["users"][1]["gid"] = json!(0)),
            "appears more than once",
        ),
        (
            "too many users",
            Box::new(|d| {
                d["users"] = Value::Array((0..10_001).map(|g| json!({"gid": g})).collect())
            }),
            "at most 10000",
        ),
    ];
    for (i, (name, edit, needle)) in cases.into_iter().enumerate() {
        let id = format!("bad-{i}");
        let mut d = dispatch(&id, &tp, 5);
        edit(&mut d);
        assert_eq!(rig.deliver(&d).await, Handled::Done, "{name}");
        let view = rig
            .store
            .dispatch(1, &id.as_str().into())
            .await
            .unwrap()
            .unwrap();
        let reason = view.rejected.unwrap_or_default();
        assert!(reason.contains(needle), "{name}: {reason}");
        let results = results_of(&rig.batches(&id).await);
        assert!(
            !results.is_empty()
                && results
                    .iter()
                    .all(|(_, s, r)| s == "TOU_FAIL" && r == &reason),
            "{name}"
        );
    }
    assert_eq!(rx.requests(), 0, "nothing of an invalid dispatch is sent");
    // Unreadable envelopes cannot be attributed to users at all.
    assert!(matches!(
        rig.dispatcher
            .handle(&json!({"dispatchId": 7}))
            .await
            .unwrap(),
        Handled::Malformed(_)
    ));
}

/// Answers every name with loopback, as a hostile or misconfigured DNS server might.
struct LoopbackDns;

impl Lookup for LoopbackDns {
    fn lookup(
        &self,
        _host: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<std::net::IpAddr>>> + Send>,
    > {
        Box::pin(async { Ok(vec!["127.0.0.1".parse().unwrap()]) })
    }
}

#[tokio::test]
async fn the_ssrf_guard_refuses_internal_destinations_at_connection_time() {
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let port = rx.addr.port();
    let guarded =
        Outbound::with_lookup(false, Arc::new(touchpoint_outbound::SystemLookup)).unwrap();
    let forms = [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.0.0.2",
        "localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "[::]",
        "[fc00::1]",
        "[fd00::1]",
        "[fe80::1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::1]",
        "224.0.0.1",
        "255.255.255.255",
    ];
    assert!(forms.len() >= 20);
    for host in forms {
        let url = format!("http://{host}:{port}/touch");
        let err = guarded
            .post_json(&url, b"{}".to_vec(), &[], Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(!err.retryable(), "{host}: {err}");
        assert!(err.to_string().contains("refused"), "{host}: {err}");
    }
    // A name that resolves to loopback is refused after resolution.
    let lying = Outbound::with_lookup(false, Arc::new(LoopbackDns)).unwrap();
    let err = lying
        .post_json(
            "http://receiver.example.com:80/touch",
            b"{}".to_vec(),
            &[],
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("non-public address 127.0.0.1"),
        "{err}"
    );
    for bad in ["ftp://127.0.0.1/", "http://user@example.com/"] {
        assert!(
            !guarded
                .post_json(bad, vec![], &[], Duration::from_secs(1))
                .await
                .unwrap_err()
                .retryable()
        );
    }
    assert_eq!(rx.requests(), 0, "nothing reached the receiver");

    // Through the dispatcher: a final failure with its reason, not retried.
    let rig = Rig::with_outbound(config("20ms,20ms", 2_000), guarded);
    let tp = rig.touchpoint("sms", &rx.url(), 5).await;
    rig.deliver(&dispatch("d1", &tp, 5)).await;
    let b = &rig.batches("d1").await[0];
    assert_eq!(b.attempts, 1);
    assert!(
        b.results[0].status.reason().contains("destination refused"),
        "{:?}",
        b.results[0]
    );
    assert_eq!(rx.requests(), 0);
}

#[tokio::test]
async fn independent_touchpoints_do_not_wait_for_each_other() {
    // The slow receiver holds every request until the test lets it answer.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&gate);
    let slow = Receiver::start(move |seen, _| {
        Reply::When(Arc::clone(&held), Box::new(Reply::all_ok(seen)))
    })
    .await;
    let fast = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let rig = Arc::new(Rig::new(config("20ms", 30_000)));
    let slow_tp = rig.touchpoint("slow", &slow.url(), 1).await;
    let fast_tp = rig.touchpoint("fast", &fast.url(), 1).await;
    let r = Arc::clone(&rig);
    let slow_run = tokio::spawn(async move { r.deliver(&dispatch("slow", &slow_tp, 8)).await });
    let started = Instant::now();
    while slow.requests() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the slow touchpoint never sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The fast touchpoint's whole dispatch goes out and ends while the slow one's requests are
    // all held (were it waiting for them, this would never end: the guard is only liveness).
    tokio::time::timeout(
        Duration::from_secs(30),
        rig.deliver(&dispatch("fast", &fast_tp, 8)),
    )
    .await
    .expect("the fast touchpoint waited for the slow one");
    assert_eq!(fast.requests(), 8);
    // 8 users at batch 1, 4 requests in flight per touchpoint: 4 held, none more sent.
    assert_eq!(
        slow.requests(),
        4,
        "at most 4 requests in flight per touchpoint"
    );
    assert!(!slow_run.is_finished());
    gate.add_permits(8);
    slow_run.await.unwrap();
    assert_eq!(slow.requests(), 8);
}

#[tokio::test]
async fn a_touchpoint_can_set_its_own_concurrency_and_timeout() {
    let slow = Receiver::start(|seen, _| {
        Reply::After(Duration::from_millis(1_300), Box::new(Reply::all_ok(seen)))
    })
    .await;
    let rig = Rig::new(config("20ms", 10_000));
    let tp = rig
        .touchpoints
        .create(
            1,
            &json!({
                "name": "tuned", "kind": "other", "url": slow.url(), "batchSize": 1,
                "maxConcurrency": 2, "requestTimeoutSeconds": 1,
                "userAttributes": [{"attribute": "a", "displayName": "a"}],
                "templateParams": [{"identifier": "t", "displayName": "t", "type": "text"}]
            }),
        )
        .await
        .unwrap();
    rig.touchpoints
        .set_spaces(
            1,
            &tp.id,
            vec!["space-a"].into_iter().map(String::from).collect(),
            None,
        )
        .await
        .unwrap();
    let mut d = dispatch("d1", &tp.id, 4);
    d["templateValues"] = json!({});
    rig.deliver(&d).await;
    let seen = slow.seen();
    let first_round = seen
        .iter()
        .filter(|s| s.at < seen[0].at + Duration::from_millis(500))
        .count();
    assert_eq!(first_round, 2, "maxConcurrency 2");
    let b = &rig.batches("d1").await[0];
    assert!(
        b.results[0].status.reason().contains("timed out after 1s"),
        "{:?}",
        b.results[0]
    );
}

#[tokio::test]
async fn statistics_keep_hour_counters_and_the_most_frequent_failure_reasons() {
    let rx = Receiver::start(|seen, _| {
        Reply::statuses(seen, |gid| match gid % 10 {
            0 | 5 => ("TOU_FAIL", "number blocked"),
            1 => ("TOU_FAIL", "quota exceeded"),
            _ => ("TOU_SUCC", ""),
        })
    })
    .await;
    let rig = Rig::new(config("50ms", 2_000));
    let tp = rig.touchpoint("sms", &rx.url(), 100).await;
    let now = touchpoint::clock::Clock::now_ms(&touchpoint::clock::SystemClock);
    let (from, to) = (
        touchpoint::delivery::hour_of(now) - touchpoint::delivery::HOUR_MS,
        touchpoint::delivery::hour_of(now) + 2 * touchpoint::delivery::HOUR_MS,
    );
    assert_eq!(
        rig.deliver(&dispatch("d1", &tp, 1_000)).await,
        Handled::Done
    );

    for (scope, key) in [
        (StatsScope::Touchpoint, tp.as_str()),
        (StatsScope::Campaign, "cmp-42"),
    ] {
        let series = rig
            .store
            .stats_series(1, scope, key, from, to)
            .await
            .unwrap();
        let sum =
            |f: fn(&touchpoint::delivery::HourStats) -> u64| series.iter().map(f).sum::<u64>();
        assert_eq!(
            (sum(|h| h.sent), sum(|h| h.succeeded), sum(|h| h.failed)),
            (1_000, 700, 300),
            "{scope:?}: {series:?}"
        );
        assert!(
            series
                .iter()
                .all(|h| h.hour % touchpoint::delivery::HOUR_MS == 0)
        );
        let order = series
            .iter()
            .rev()
            .find_map(|h| h.last_order_no.clone())
            .expect("an hour names a batch");
        let batch = rig
            .store
            .batch(1, &order)
            .await
            .unwrap()
            .expect("drill-down finds the batch");
        assert_eq!(batch.results.len(), 100);

        let reasons = rig
            .store
            .failure_reasons(1, scope, key, from, to, 10)
            .await
            .unwrap();
        let listed: Vec<(&str, u64)> = reasons
            .iter()
            .map(|r| (r.reason.as_str(), r.count))
            .collect();
        assert_eq!(listed, [("number blocked", 200), ("quota exceeded", 100)]);
        let sample = reasons[1].sample_order_no.clone().expect("a sample batch");
        let batch = rig.store.batch(1, &sample).await.unwrap().unwrap();
        assert!(
            batch
                .results
                .iter()
                .any(|r| r.status.reason() == "quota exceeded")
        );
        // Hours outside the window are not counted.
        assert!(
            rig.store
                .stats_series(1, scope, key, to, to + touchpoint::delivery::HOUR_MS)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            rig.store
                .failure_reasons(1, scope, key, from, to, 1)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}

/// The poison guard counts deliveries in a row that made no progress (here each dies while its
/// requests are in flight, as a killed process does) and then fails the remaining users once,
/// with the reason; a later delivery sends nothing.
#[tokio::test]
async fn a_dispatch_whose_deliveries_keep_dying_is_given_up_and_every_user_fails_once() {
    let rx = Receiver::start(|_, _| {
        Reply::After(
            Duration::from_secs(30),
            Box::new(Reply::Json(503, json!({}))),
        )
    })
    .await;
    let mut cfg = config("1s", 60_000);
    // A dead sender's batch may be taken again at once.
    cfg.lease = Duration::from_millis(1);
    cfg.max_stalls = 3;
    let rig = Rig::new(cfg);
    let tp = rig.touchpoint("crashy", &rx.url(), 10).await;
    let d = dispatch("crashy-1", &tp, 25);
    for receives in 1..=3 {
        let delivery = rig
            .dispatcher
            .handle_delivery(d.clone(), receives, i64::MAX);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), delivery)
                .await
                .is_err(),
            "the delivery dies with its requests in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(rx.requests(), 9, "three deliveries sent the three batches");
    assert_eq!(
        rig.dispatcher
            .handle_delivery(d.clone(), 4, i64::MAX)
            .await
            .unwrap(),
        Handled::Done
    );
    let results = results_of(&rig.batches("crashy-1").await);
    assert_eq!(results.len(), 25);
    assert!(
        results.iter().all(|(_, code, why)| code == "TOU_FAIL"
            && why == "delivery stalled: 3 deliveries in a row made no progress"),
        "{results:?}"
    );
    assert_eq!(rig.events().await.len(), 25, "one event each");
    assert_eq!(rig.dispatcher.handle(&d).await.unwrap(), Handled::Done);
    assert_eq!(rx.requests(), 9, "nothing sent after the give-up");
}

/// A crash with a request in flight does not use up an attempt: its batch is taken again once
/// the lease runs out and still gets every attempt of the schedule (one lost, then two here).
#[tokio::test]
async fn an_attempt_lost_to_a_crash_does_not_use_up_the_users_attempts() {
    let rx = Receiver::start(|_, n| {
        if n == 1 {
            Reply::After(
                Duration::from_secs(30),
                Box::new(Reply::Json(503, json!({}))),
            )
        } else {
            Reply::Json(503, json!({}))
        }
    })
    .await;
    // Two attempts; a dead sender's batch may be taken again at once.
    let mut cfg = config("50ms", 2_000);
    cfg.lease = Duration::from_millis(1);
    let rig = Rig::new(cfg);
    let tp = rig.touchpoint("crash", &rx.url(), 10).await;
    let d = dispatch("crash-1", &tp, 10);
    // The delivery dies once its request is in flight.
    let mut delivery = Box::pin(rig.dispatcher.handle_delivery(d.clone(), 1, i64::MAX));
    let started = Instant::now();
    while rx.requests() == 0 {
        tokio::select! {
            ended = &mut delivery => panic!("the delivery ended: {ended:?}"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never sent");
    }
    drop(delivery);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(rig.deliver(&d).await, Handled::Done);
    assert_eq!(
        rx.requests(),
        3,
        "the lost attempt, then the schedule's two"
    );
    let results = results_of(&rig.batches("crash-1").await);
    assert_eq!(results.len(), 10);
    assert!(
        results.iter().all(|(_, code, why)| code == "TOU_FAIL"
            && why == "retries exhausted after 2 attempts: HTTP 503"),
        "{results:?}"
    );
}

/// A dispatch refused whole keeps that outcome: delivered again once its touchpoint is fixed,
/// it sends nothing and no user gets a second outcome.
#[tokio::test]
async fn a_dispatch_refused_whole_sends_nothing_when_it_comes_back_after_the_touchpoint_is_fixed() {
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let rig = Rig::new(config("50ms", 2_000));
    let tp = rig.touchpoint("fixed", &rx.url(), 10).await;
    rig.touchpoints
        .disable(1, &tp.as_str().into(), None)
        .await
        .unwrap();
    let d = dispatch("refused-1", &tp, 15);
    assert_eq!(rig.deliver(&d).await, Handled::Done);
    rig.touchpoints.enable(1, &tp.into(), None).await.unwrap();
    assert_eq!(rig.deliver(&d).await, Handled::Done);
    assert_eq!(rx.requests(), 0, "nothing sent");
    let events = rig.events().await;
    assert_eq!(events.len(), 15, "one outcome each");
    assert!(
        events
            .iter()
            .all(|e| e["errorMsg"].as_str().unwrap().contains("is disabled")),
        "{events:?}"
    );
}

/// The SQLite ledger, counting the batch claims made through it.
struct CountingClaims {
    inner: touchpoint_embedded::SqliteStore,
    claims: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl DeliveryLedger for CountingClaims {
    async fn open_dispatch(
        &self,
        meta: &DispatchMeta,
        users: u32,
        batch_size: u32,
        now: Millis,
    ) -> Result<Opened, StoreError> {
        self.inner.open_dispatch(meta, users, batch_size, now).await
    }
    async fn checkpoint(
        &self,
        meta: &DispatchMeta,
        advance: &touchpoint::delivery::Advance<'_>,
        now: Millis,
    ) -> Result<Progress, StoreError> {
        self.inner.checkpoint(meta, advance, now).await
    }
    async fn reject_dispatch(
        &self,
        meta: &DispatchMeta,
        gids: &[i64],
        reason: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.inner.reject_dispatch(meta, gids, reason, now).await
    }
    async fn claim_batch(
        &self,
        meta: &DispatchMeta,
        index: usize,
        order_no: &OrderNo,
        users: u32,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Claim, StoreError> {
        self.claims.lock().unwrap().push(index);
        self.inner
            .claim_batch(meta, index, order_no, users, now, lease_until)
            .await
    }
    async fn claim_opening(
        &self,
        meta: &DispatchMeta,
        order_no: &OrderNo,
        batch_size: u32,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Claim, StoreError> {
        self.claims.lock().unwrap().push(0);
        self.inner
            .claim_opening(meta, order_no, batch_size, now, lease_until)
            .await
    }
    async fn record_attempt(
        &self,
        record: &AttemptRecord,
    ) -> Result<Option<touchpoint::delivery::Settled>, StoreError> {
        self.inner.record_attempt(record).await
    }
    async fn hand_back(
        &self,
        meta: &DispatchMeta,
        order_no: &OrderNo,
        attempt: u32,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.inner.hand_back(meta, order_no, attempt, now).await
    }
}

#[async_trait::async_trait]
impl DeliveryReports for CountingClaims {
    async fn dispatch(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Option<DispatchView>, StoreError> {
        self.inner.dispatch(project, dispatch_id).await
    }
    async fn batch_page(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        from: u32,
        limit: u32,
    ) -> Result<Vec<BatchView>, StoreError> {
        self.inner
            .batch_page(project, dispatch_id, from, limit)
            .await
    }
    async fn batch(
        &self,
        project: ProjectId,
        order_no: &OrderNo,
    ) -> Result<Option<BatchView>, StoreError> {
        self.inner.batch(project, order_no).await
    }
    async fn stats(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key: &str,
    ) -> Result<Counters, StoreError> {
        self.inner.stats(project, scope, key).await
    }
    async fn stats_series(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key: &str,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<HourStats>, StoreError> {
        self.inner.stats_series(project, scope, key, from, to).await
    }
    async fn failure_reasons(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key: &str,
        from: Millis,
        to: Millis,
        limit: usize,
    ) -> Result<Vec<ReasonCount>, StoreError> {
        self.inner
            .failure_reasons(project, scope, key, from, to, limit)
            .await
    }
}

#[async_trait::async_trait]
impl ReceiptLedger for CountingClaims {
    async fn due_polls(
        &self,
        touchpoint: Option<(ProjectId, &TouchpointId)>,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<PendingBatch>, StoreError> {
        self.inner.due_polls(touchpoint, now, limit).await
    }
    async fn lease_poll(
        &self,
        project: ProjectId,
        order_no: &OrderNo,
        now: Millis,
        until: Millis,
    ) -> Result<Option<PendingBatch>, StoreError> {
        self.inner.lease_poll(project, order_no, now, until).await
    }
    async fn record_poll(&self, record: &PollRecord) -> Result<(), StoreError> {
        self.inner.record_poll(record).await
    }
    async fn pending_receipts(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<u64, StoreError> {
        self.inner.pending_receipts(project, touchpoint_id).await
    }
}

/// A delivery stopped by its time limit hands the rest on, and the next one resumes from the
/// progress saved on the dispatch: no batch is claimed twice (a redelivery does not walk the
/// finished batches again).
#[tokio::test]
async fn a_redelivery_resumes_where_the_last_one_stopped() {
    let rx = Receiver::start(|seen, _| {
        Reply::After(Duration::from_millis(50), Box::new(Reply::all_ok(seen)))
    })
    .await;
    let cfg = DispatcherConfig {
        per_touchpoint_concurrency: 1,
        deadline_margin: Duration::from_millis(100),
        ..config("50ms", 500)
    };
    let rig = Rig::new(cfg.clone());
    let tp = rig.touchpoint("resume", &rx.url(), 1).await;
    let ledger = Arc::new(CountingClaims {
        inner: rig.store.clone(),
        claims: Default::default(),
    });
    let store = Arc::new(rig.store.clone());
    let dispatcher = touchpoint_services::Services::new(
        touchpoint_services::Ports {
            touchpoints: store.clone(),
            delivery: ledger.clone(),
            intake: store.clone(),
            schedule: store,
            clock: Arc::new(touchpoint::clock::SystemClock),
            outbound: Outbound::new(true).unwrap(),
            limits: None,
            outbox: None,
        },
        touchpoint_services::Settings::default().with_dispatcher(cfg),
    )
    .dispatcher;
    let d = dispatch("resume-1", &tp, 40);
    // A second for 50 ms requests one at a time (about 18 of the 40) past the 600 ms a claim
    // needs.
    let deadline = touchpoint::clock::SystemClock.now_ms() + 1_600;
    assert_eq!(
        dispatcher.handle_until(d.clone(), deadline).await.unwrap(),
        Handled::Continue,
        "stopped by its time limit"
    );
    let first = ledger.claims.lock().unwrap().len();
    assert!(
        (1..40).contains(&first),
        "{first} batches in the first delivery"
    );
    assert_eq!(
        dispatcher.handle_until(d.clone(), i64::MAX).await.unwrap(),
        Handled::Done
    );
    let mut claims = ledger.claims.lock().unwrap().clone();
    assert_eq!(claims.len(), 40, "each batch claimed once: {claims:?}");
    claims.sort_unstable();
    claims.dedup();
    assert_eq!(claims.len(), 40);
    assert_eq!(rx.requests(), 40);
}

#[tokio::test]
async fn a_dispatch_reports_its_counts_whole_and_its_batches_a_page_at_a_time() {
    let rx = Receiver::start(|seen, _| {
        Reply::statuses(seen, |g| {
            if g % 10 == 0 {
                ("TOU_FAIL", "blocked")
            } else {
                ("TOU_SUCC", "")
            }
        })
    })
    .await;
    let rig = Rig::new(config("50ms", 2_000));
    let tp = rig.touchpoint("pages", &rx.url(), 1).await;
    assert_eq!(
        rig.deliver(&dispatch("paged", &tp, 250)).await,
        Handled::Done
    );
    let reporting = touchpoint::reporting::Reporting::new(
        Arc::new(rig.store.clone()),
        Arc::new(rig.store.clone()),
        Arc::new(touchpoint::clock::SystemClock),
    );
    let first = reporting.dispatch(1, &"paged".into(), 0).await.unwrap();
    let counts = first.counts.clone().unwrap();
    assert_eq!(
        (
            counts.users,
            counts.succeeded,
            counts.failed,
            counts.pending
        ),
        (250, 225, 25, 0)
    );
    assert_eq!((counts.batches, counts.batches_finished), (250, 250));
    let index = |r: &touchpoint::reporting::DispatchReport| -> Vec<i64> {
        r.batches.iter().map(|b| b.index).collect()
    };
    assert_eq!(index(&first), (0..100).collect::<Vec<_>>());
    assert_eq!(first.next_batches_from, Some(100));
    let last = reporting.dispatch(1, &"paged".into(), 200).await.unwrap();
    assert_eq!(index(&last), (200..250).collect::<Vec<_>>());
    assert_eq!(last.next_batches_from, None);
    assert_eq!(
        last.counts, first.counts,
        "counts cover the whole dispatch on every page"
    );
    let past = reporting.dispatch(1, &"paged".into(), 900).await.unwrap();
    assert!(past.batches.is_empty() && past.next_batches_from.is_none());
}

/// A touchpoint paused (a `Retry-After` met by another request) for longer than a delivery has
/// time left: nothing is claimed (no write, no lease to wait out), the delivery comes back when
/// the pause ends (not at once, to find it paused again), and then sends at once.
#[tokio::test]
async fn a_touchpoint_paused_beyond_the_deliverys_time_claims_nothing() {
    use touchpoint::ports::TouchpointStore;
    use touchpoint_receiver::limits::Answer;
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let mut cfg = config("50ms", 200);
    cfg.deadline_margin = Duration::from_millis(100);
    let rig = Rig::new(cfg);
    let id = rig.touchpoint("paused", &rx.url(), 10).await;
    let tp = rig
        .store
        .get(1, &TouchpointId::from(id.as_str()))
        .await
        .unwrap()
        .unwrap();
    let pause = Duration::from_millis(1_500);
    let paused_at = Instant::now();
    let limits = rig.dispatcher.limits();
    let pass = limits.acquire(&tp, Duration::from_secs(1)).await.unwrap();
    pass.answered(Answer::Overloaded(Some(pause)));
    let d = dispatch("paused-1", &tp.id, 10);
    let handled = rig
        .dispatcher
        .handle_delivery(d.clone(), 1, system_now() + 1_000)
        .await
        .unwrap();
    let Handled::RetryAt(at) = handled else {
        panic!("the pause outlasts the delivery: {handled:?}");
    };
    let ends = system_now() + pause.saturating_sub(paused_at.elapsed()).as_millis() as i64;
    assert!(
        (at - ends).abs() < 200,
        "back at the pause's end: {at} vs {ends}"
    );
    assert_eq!(rx.requests(), 0);
    assert!(rig.batches("paused-1").await.is_empty(), "nothing claimed");
    tokio::time::sleep(pause.saturating_sub(paused_at.elapsed()) + Duration::from_millis(50)).await;
    let handled = rig
        .dispatcher
        .handle_delivery(d.clone(), 1, i64::MAX)
        .await
        .unwrap();
    assert_eq!(handled, Handled::Done);
    assert_eq!(rx.requests(), 1);
}

/// A batch claimed that gets no pass before its delivery's time is up (here the touchpoint's
/// pace: one request a second, two batches) is handed back unsent: the next delivery sends it
/// at once, not after the claim's lease (two minutes), and with the attempts it had.
#[tokio::test]
async fn a_claimed_batch_that_could_not_go_in_time_is_handed_back_unsent() {
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let mut cfg = config("50ms", 200);
    cfg.deadline_margin = Duration::from_millis(100);
    let rig = Rig::new(cfg);
    let tp = rig
        .touchpoint_with("paced", &rx.url(), 10, json!({"maxRequestsPerSecond": 1}))
        .await;
    let d = dispatch("paced-1", &tp, 20);
    let handled = rig
        .dispatcher
        .handle_delivery(d.clone(), 1, system_now() + 900)
        .await
        .unwrap();
    assert_eq!(
        handled,
        Handled::Continue,
        "the second batch's turn is after the deadline"
    );
    assert_eq!(rx.requests(), 1);
    let batches = rig.batches("paced-1").await;
    assert_eq!(batches.len(), 2, "both claimed");
    let started = Instant::now();
    let handled = rig
        .dispatcher
        .handle_delivery(d.clone(), 1, i64::MAX)
        .await
        .unwrap();
    assert_eq!(
        handled,
        Handled::Done,
        "sent at its pace, not after the claim's lease"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rx.requests(), 2);
    let results = results_of(&rig.batches("paced-1").await);
    assert_eq!(results.len(), 20);
    assert!(
        results.iter().all(|(_, code, _)| code == "TOU_SUCC"),
        "{results:?}"
    );
}

fn system_now() -> Millis {
    touchpoint::clock::SystemClock.now_ms()
}
