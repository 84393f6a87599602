//! The three Lambdas against the moto server (DynamoDB, SQS, Scheduler) and real receivers on
//! 127.0.0.1, fed the event fixtures in `infra/events/`: the whole flow from an admin creating
//! a touchpoint to results on the results queue, async receipts through the scheduled poller,
//! and SQS redelivery.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{Receiver, Reply};
use touchpoint::UrlPolicy;
use touchpoint::protocol::verify_sign;
use touchpoint_admin_api_lambda::{JwtClaims, app};
use touchpoint_aws::provision::provision;
use touchpoint_aws::schedule::{schedule_input, schedule_name};
use touchpoint_aws::{AwsNames, Clients};
use touchpoint_dispatcher::{DispatcherConfig, RetryPolicy};
use touchpoint_dispatcher_lambda::DispatcherLambda;
use touchpoint_outbound::Outbound;
use touchpoint_receipt_poller_lambda::PollerLambda;
use tower::ServiceExt;

fn fixture(name: &str) -> Value {
    let path = format!("{}/../infra/events/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn clients() -> Clients {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL: run through infra/test.sh");
    assert!(
        endpoint.starts_with("http://127.0.0.1:") || endpoint.starts_with("http://localhost:"),
        "not local: {endpoint}"
    );
    assert_eq!(
        std::env::var("AWS_EC2_METADATA_DISABLED").as_deref(),
        Ok("true")
    );
    Clients::from_env().await
}

struct Aws {
    clients: Clients,
    names: AwsNames,
    admin: axum::Router,
    dispatcher: Arc<DispatcherLambda>,
    poller: PollerLambda,
}

impl Aws {
    async fn new() -> Aws {
        let clients = clients().await;
        let names = provision(&clients).await;
        let admin = app(
            &clients,
            &names,
            Outbound::new(true).unwrap(),
            JwtClaims::default(),
            UrlPolicy {
                allow_plain_http: true,
            },
        )
        .unwrap();
        let cfg = DispatcherConfig {
            retry: RetryPolicy {
                jitter: 0.0,
                ..RetryPolicy::parse("1s,1s").unwrap()
            },
            // Due at once, so the test's poller round finds the accepted batches.
            receipt_poll_interval: Duration::ZERO,
            ..DispatcherConfig::default()
        };
        let dispatcher = Arc::new(DispatcherLambda::new(
            &clients,
            &names,
            names.dispatch_queue_url.clone().unwrap(),
            Outbound::new(true).unwrap(),
            cfg,
            5,
        ));
        let poller = PollerLambda::new(&clients, &names, Outbound::new(true).unwrap()).unwrap();
        Aws {
            clients,
            names,
            admin,
            dispatcher,
            poller,
        }
    }

    /// Sends an API Gateway v2 event (a fixture, edited) through lambda_http to the Router.
    async fn api(
        &self,
        mut event: Value,
        method: &str,
        path: &str,
        body: Option<Value>,
        role: &str,
    ) -> (u16, Value) {
        event["rawPath"] = json!(path);
        event["requestContext"]["http"]["method"] = json!(method);
        event["requestContext"]["http"]["path"] = json!(path);
        event["requestContext"]["authorizer"]["jwt"]["claims"]["custom:role"] = json!(role);
        match body {
            Some(b) => event["body"] = json!(b.to_string()),
            None => {
                event.as_object_mut().unwrap().remove("body");
            }
        }
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        let response = self.admin.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert!(
            !text.contains("abc123"),
            "a response carried the token: {text}"
        );
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }

    /// Every message waiting on a queue, as SQS records with their receive counts.
    async fn drain(&self, queue: &str) -> Vec<SqsMessage> {
        let mut out = Vec::new();
        for _ in 0..20 {
            let got = self
                .clients
                .sqs
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await
                .unwrap();
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                out.push(SqsMessage {
                    message_id: m.message_id.clone(),
                    receipt_handle: m.receipt_handle.clone(),
                    body: m.body.clone(),
                    attributes: m
                        .attributes
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v))
                        .collect(),
                    ..Default::default()
                });
            }
        }
        out
    }

    async fn delete(&self, queue: &str, records: &[SqsMessage]) {
        for r in records {
            self.clients
                .sqs
                .delete_message()
                .queue_url(queue)
                .receipt_handle(r.receipt_handle.clone().unwrap())
                .send()
                .await
                .unwrap();
        }
    }

    /// Result events on the results queue.
    async fn results(&self) -> Vec<Value> {
        let queue = self.names.results_queue_url.clone().unwrap();
        let records = self.drain(&queue).await;
        self.delete(&queue, &records).await;
        records
            .iter()
            .flat_map(|r| {
                serde_json::from_str::<Value>(r.body.as_deref().unwrap()).unwrap()["events"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .collect()
    }

    async fn create(&self, body: Value) -> String {
        let (status, tp) = self
            .api(
                fixture("apigw-create-touchpoint.json"),
                "POST",
                "/v1/touchpoints",
                Some(body),
                "admin",
            )
            .await;
        assert_eq!(status, 201, "{tp}");
        let id = tp["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/touchpoints/{id}/spaces");
        let (status, _) = self
            .api(
                fixture("apigw-authorize-spaces.json"),
                "PUT",
                &path,
                Some(json!({"spaceIds": ["space-a"]})),
                "admin",
            )
            .await;
        assert_eq!(status, 200);
        id
    }
}

fn dispatch_body(id: &str, tp: &str, users: i64) -> Value {
    let mut d = fixture("apigw-submit-dispatch.json")["body"]
        .as_str()
        .map(|b| serde_json::from_str::<Value>(b).unwrap())
        .unwrap();
    d["dispatchId"] = json!(id);
    d["touchpointId"] = json!(tp);
    d["users"] = Value::Array(
        (0..users)
            .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
            .collect(),
    );
    d
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn the_whole_flow_from_admin_to_results_on_aws() {
    let aws = Aws::new().await;
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let mut tp = fixture("apigw-create-touchpoint.json")["body"]
        .as_str()
        .map(|b| serde_json::from_str::<Value>(b).unwrap())
        .unwrap();
    tp["url"] = json!(rx.url());
    tp["batchSize"] = json!(100);
    let id = aws.create(tp).await;
    let (status, list) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            "/v1/touchpoints",
            None,
            "admin",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["tokenSet"], true);

    // The campaign system hands in a dispatch: it lands on the dispatch queue, once.
    let body = dispatch_body("flow-1", &id, 250);
    let (status, _) = aws
        .api(
            fixture("apigw-submit-dispatch.json"),
            "POST",
            "/v1/dispatches",
            Some(body.clone()),
            "campaign",
        )
        .await;
    assert_eq!(status, 202);
    let (status, again) = aws
        .api(
            fixture("apigw-submit-dispatch.json"),
            "POST",
            "/v1/dispatches",
            Some(body),
            "campaign",
        )
        .await;
    assert_eq!((status, again["status"].as_str()), (200, Some("duplicate")));
    let (status, _) = aws
        .api(
            fixture("apigw-submit-dispatch.json"),
            "POST",
            "/v1/dispatches",
            Some(dispatch_body("x", &id, 1)),
            "operator",
        )
        .await;
    assert_eq!(status, 403, "operators do not dispatch");

    let queue = aws.names.dispatch_queue_url.clone().unwrap();
    let records = aws.drain(&queue).await;
    assert_eq!(records.len(), 1);
    let event = SqsEvent {
        records: records.clone(),
    };
    let response = aws.dispatcher.handle(event.clone()).await;
    assert!(response.batch_item_failures.is_empty());
    aws.delete(&queue, &records).await;

    // The receiver got three signed batches; the ledger and statistics hold the outcome.
    let seen = rx.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        let ts = s.body["timeStamp"].as_i64().unwrap();
        assert!(verify_sign(
            "abc123",
            ts,
            &s.order_no,
            s.body["sign"].as_str().unwrap()
        ));
    }
    let (status, d) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            "/v1/dispatches/flow-1",
            None,
            "campaign",
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["state"], "completed");
    assert_eq!(d["counts"]["succeeded"], 250);
    let order = d["batches"][1]["orderNo"].as_str().unwrap().to_owned();
    let (_, b) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            &format!("/v1/batches/{order}"),
            None,
            "campaign",
        )
        .await;
    assert_eq!(b["results"].as_array().unwrap().len(), 100);
    let (_, stats) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            "/v1/campaigns/cmp-42/stats",
            None,
            "campaign",
        )
        .await;
    assert_eq!(
        (
            stats["sent"].as_u64(),
            stats["succeeded"].as_u64(),
            stats["pending"].as_u64()
        ),
        (Some(250), Some(250), Some(0))
    );

    // One event per user on the results queue, packed per batch.
    let events = aws.results().await;
    assert_eq!(events.len(), 250);
    let gids: std::collections::HashSet<i64> =
        events.iter().map(|e| e["gid"].as_i64().unwrap()).collect();
    assert_eq!(gids.len(), 250);
    assert_eq!(events[0]["event"], "$ma_channel_touch");

    // SQS redelivers the same message: nothing is sent or published twice.
    let response = aws.dispatcher.handle(event).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(rx.requests(), 3);
    assert!(aws.results().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn an_async_touchpoint_is_scheduled_and_finished_by_the_poller() {
    let aws = Aws::new().await;
    let pending: Arc<std::sync::Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let remembered = Arc::clone(&pending);
    let rx = Receiver::start(move |seen, _| {
        if seen.path == "/touch" {
            remembered
                .lock()
                .unwrap()
                .insert(seen.order_no.clone(), seen.gids.clone());
            Reply::Json(200, json!({"code": 0, "orderNo": seen.order_no}))
        } else {
            let gids = remembered
                .lock()
                .unwrap()
                .get(&seen.order_no)
                .cloned()
                .unwrap_or_default();
            Reply::statuses_for(&seen.order_no, &gids, |_| ("TOU_SUCC", ""))
        }
    })
    .await;
    let mut tp = fixture("apigw-create-touchpoint.json")["body"]
        .as_str()
        .map(|b| serde_json::from_str::<Value>(b).unwrap())
        .unwrap();
    tp["name"] = json!("异步券");
    tp["url"] = json!(rx.url());
    tp["batchSize"] = json!(10);
    tp["receipt"] = json!({"mode": "async", "receiptUrl": rx.receipt_url(), "timeoutMinutes": 60});
    let id = aws.create(tp).await;

    // Creating an async touchpoint ensured its schedule in the group, aimed at the poller.
    let schedule = aws
        .clients
        .scheduler
        .get_schedule()
        .name(schedule_name(1, &id))
        .group_name(aws.names.schedule_group.clone().unwrap())
        .send()
        .await
        .expect("a schedule exists");
    assert_eq!(schedule.schedule_expression(), Some("rate(5 minutes)"));
    let target = schedule.target().unwrap();
    assert_eq!(target.input(), Some(schedule_input(1, &id).as_str()));

    let mut record = fixture("sqs-dispatch.json")["Records"][0].clone();
    record["body"] = json!(dispatch_body("async-1", &id, 25).to_string());
    let event = SqsEvent {
        records: vec![serde_json::from_value(record).unwrap()],
    };
    assert!(
        aws.dispatcher
            .handle(event)
            .await
            .batch_item_failures
            .is_empty()
    );
    let (_, d) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            "/v1/dispatches/async-1",
            None,
            "campaign",
        )
        .await;
    assert_eq!(d["counts"]["pending"], 25, "{d}");

    // The schedule fires: the poller runs a round with the schedule's input.
    let input: Value = serde_json::from_str(target.input().unwrap()).unwrap();
    let mut scheduled = fixture("scheduler-receipt-round.json");
    scheduled["touchpointId"] = json!(id);
    assert_eq!(input, scheduled, "the fixture is what Scheduler sends");
    let report = aws.poller.handle(input).await.unwrap();
    assert_eq!(report["settled"], 25, "{report}");
    let (_, d) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            "/v1/dispatches/async-1",
            None,
            "campaign",
        )
        .await;
    assert_eq!(d["state"], "completed");
    assert_eq!(aws.results().await.len(), 25);

    // Deleting the touchpoint (nothing pending) removes its schedule.
    let (status, _) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "POST",
            &format!("/v1/touchpoints/{id}/disable"),
            None,
            "admin",
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "DELETE",
            &format!("/v1/touchpoints/{id}"),
            None,
            "admin",
        )
        .await;
    assert_eq!(status, 204);
    let gone = aws
        .clients
        .scheduler
        .get_schedule()
        .name(schedule_name(1, &id))
        .group_name(aws.names.schedule_group.clone().unwrap())
        .send()
        .await;
    assert!(gone.is_err(), "the schedule was removed");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn transient_failures_are_redelivered_through_the_queue_and_requests_without_a_token_are_refused()
 {
    let aws = Aws::new().await;
    let rx = Receiver::start(|seen, n| {
        if n == 1 {
            Reply::Json(503, json!({}))
        } else {
            Reply::all_ok(seen)
        }
    })
    .await;
    let mut tp = fixture("apigw-create-touchpoint.json")["body"]
        .as_str()
        .map(|b| serde_json::from_str::<Value>(b).unwrap())
        .unwrap();
    tp["url"] = json!(rx.url());
    let id = aws.create(tp).await;
    let mut record = fixture("sqs-dispatch.json")["Records"][0].clone();
    record["body"] = json!(dispatch_body("retry-1", &id, 3).to_string());
    let event = SqsEvent {
        records: vec![serde_json::from_value(record).unwrap()],
    };
    let response = aws.dispatcher.handle(event.clone()).await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "reported for redelivery"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(
        aws.dispatcher
            .handle(event)
            .await
            .batch_item_failures
            .is_empty()
    );
    assert_eq!(rx.requests(), 2);
    assert!(
        rx.seen()
            .iter()
            .all(|s| s.order_no == rx.seen()[0].order_no)
    );

    // Without the authorizer's claims the API refuses.
    let mut anonymous = fixture("apigw-list-touchpoints.json");
    anonymous["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    let request = lambda_http::request::from_str(&anonymous.to_string()).unwrap();
    let response = aws.admin.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 401);
}
