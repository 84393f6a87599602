//! The three Lambdas against the moto server (DynamoDB, SQS, Scheduler) and real receivers on
//! 127.0.0.1, fed the event fixtures in `infra/events/`: the whole flow from an admin creating
//! a touchpoint to results on the results queue, async receipts through the scheduled poller,
//! and SQS redelivery.

use crate::support;

use support::sqs::event_of;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
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

/// The JSON request body a fixture event carries.
fn fixture_body(name: &str) -> Value {
    serde_json::from_str(fixture(name)["body"].as_str().unwrap()).unwrap()
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
        Aws::with(clients().await).await
    }

    async fn with(clients: Clients) -> Aws {
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
        let dispatcher = Arc::new(
            DispatcherLambda::new(
                &clients,
                &names,
                names.dispatch_queue_url.clone().unwrap(),
                Outbound::new(true).unwrap(),
                cfg,
                5,
            )
            .unwrap(),
        );
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
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        event["rawPath"] = json!(path);
        event["rawQueryString"] = json!(query);
        let params: serde_json::Map<String, Value> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        event["queryStringParameters"] = Value::Object(params);
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
                .message_attribute_names("All")
                .send()
                .await
                .unwrap();
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            out.extend(messages.into_iter().map(support::sqs::record_of));
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
    let mut d = fixture_body("apigw-submit-dispatch.json");
    d["dispatchId"] = json!(id);
    d["touchpointId"] = json!(tp);
    d["users"] = Value::Array(
        (0..users)
            .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
            .collect(),
    );
    d
}

/// A 10,000-user dispatch whose users carry 5 attributes of 20 characters: about 1.6 MB, more
/// than an SQS message holds.
fn wide_dispatch(id: &str, tp: &str) -> Value {
    let mut d = dispatch_body(id, tp, 0);
    d["users"] = Value::Array(
        (0..10_000)
            .map(|g| {
                let a = |k: usize| format!("{g:08}-attribute-{k}");
                json!({"gid": g, "attributes": {
                    "usr_name": a(1), "usr_phone": a(2), "usr_city": a(3), "usr_level": a(4), "usr_tag": a(5)
                }})
            })
            .collect(),
    );
    d
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn a_ten_thousand_user_dispatch_larger_than_a_message_goes_through_the_http_intake_whole() {
    let aws = Aws::new().await;
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let mut tp = fixture_body("apigw-create-touchpoint.json");
    tp["url"] = json!(rx.url());
    let id = aws.create(tp).await;
    let body = wide_dispatch("wide-1", &id);
    let bytes = body.to_string().len();
    assert!(bytes > 1_100_000, "larger than a message: {bytes}");
    let (status, answer) = aws
        .api(
            fixture("apigw-submit-dispatch.json"),
            "POST",
            "/v1/dispatches",
            Some(body),
            "campaign",
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    // The queue carries a reference to the stored body; the dispatcher reads it back whole.
    let queue = aws.names.dispatch_queue_url.clone().unwrap();
    let records = aws.drain(&queue).await;
    assert_eq!(records.len(), 1);
    let message = records[0].body.clone().unwrap();
    assert!(message.len() < 1_000, "a reference: {message}");
    let response = aws.dispatcher.handle(event_of(records.clone())).await;
    assert!(response.batch_item_failures.is_empty());
    aws.delete(&queue, &records).await;
    let seen = rx.seen();
    let users: usize = seen.iter().map(|s| s.gids.len()).sum();
    assert_eq!(
        (seen.len(), users),
        (20, 10_000),
        "one dispatch, 20 batches of 500"
    );
    let last = seen.iter().find(|s| s.gids.contains(&9_999)).unwrap();
    let user = last.body["dataList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["gid"] == 9_999)
        .unwrap();
    assert_eq!(
        (&user["dynamicData"]["name"], &user["dynamicData"]["phone"]),
        (
            &json!("00009999-attribute-1"),
            &json!("00009999-attribute-2")
        ),
        "attributes arrive intact"
    );
    let (status, d) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            "/v1/dispatches/wide-1",
            None,
            "campaign",
        )
        .await;
    assert_eq!(
        (status, d["counts"]["succeeded"].as_i64()),
        (200, Some(10_000))
    );

    // Beyond what the intake carries: 413, naming the limit.
    let mut huge = wide_dispatch("wide-2", &id);
    huge["templateValues"]["title"] = json!("x".repeat(touchpoint::dispatch::MAX_DISPATCH_BYTES));
    let (status, refused) = aws
        .api(
            fixture("apigw-submit-dispatch.json"),
            "POST",
            "/v1/dispatches",
            Some(huge),
            "campaign",
        )
        .await;
    assert_eq!(status, 413, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&touchpoint::dispatch::MAX_DISPATCH_BYTES.to_string()),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn the_whole_flow_from_admin_to_results_on_aws() {
    let aws = Aws::new().await;
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let mut tp = fixture_body("apigw-create-touchpoint.json");
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
    let event = event_of(records.clone());
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
async fn the_console_is_served_through_api_gateway_without_a_token() {
    let aws = Aws::new().await;
    for (path, content_type) in [("/", "text/html"), ("/console/main.js", "text/javascript")] {
        // The route has no authorizer: no token, no claims reach the Lambda.
        let mut event = fixture("apigw-console.json");
        assert!(event["requestContext"].get("authorizer").is_none());
        event["rawPath"] = json!(path);
        event["requestContext"]["http"]["path"] = json!(path);
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        let response = aws.admin.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |n: &str| response.headers()[n].to_str().unwrap().to_owned();
        assert!(header("content-type").starts_with(content_type), "{path}");
        assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(bytes.len() > 1_000, "{path}: {} bytes", bytes.len());
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn statistics_by_hour_and_failure_reasons_on_aws() {
    let aws = Aws::new().await;
    let rx = Receiver::start(|seen, _| {
        Reply::statuses(seen, |g| match g % 5 {
            0 => ("TOU_FAIL", "number blocked"),
            _ => ("TOU_SUCC", ""),
        })
    })
    .await;
    let mut tp = fixture_body("apigw-create-touchpoint.json");
    tp["url"] = json!(rx.url());
    tp["batchSize"] = json!(100);
    let id = aws.create(tp).await;
    let (status, _) = aws
        .api(
            fixture("apigw-submit-dispatch.json"),
            "POST",
            "/v1/dispatches",
            Some(dispatch_body("trend-1", &id, 250)),
            "campaign",
        )
        .await;
    assert_eq!(status, 202);
    let queue = aws.names.dispatch_queue_url.clone().unwrap();
    let records = aws.drain(&queue).await;
    let response = aws.dispatcher.handle(event_of(records.clone())).await;
    assert!(response.batch_item_failures.is_empty());
    aws.delete(&queue, &records).await;

    for (path, role) in [
        (format!("/v1/touchpoints/{id}/stats?hours=3"), "admin"),
        ("/v1/campaigns/cmp-42/stats?hours=3".to_owned(), "campaign"),
    ] {
        let (status, stats) = aws
            .api(
                fixture("apigw-list-touchpoints.json"),
                "GET",
                &path,
                None,
                role,
            )
            .await;
        assert_eq!(status, 200, "{stats}");
        assert_eq!(
            (stats["sent"].as_u64(), stats["failed"].as_u64()),
            (Some(250), Some(50))
        );
        let series = stats["series"].as_array().unwrap();
        assert_eq!(series.len(), 3, "every hour of the window, oldest first");
        let sum = |f: &str| series.iter().map(|h| h[f].as_u64().unwrap()).sum::<u64>();
        assert_eq!(
            (sum("sent"), sum("succeeded"), sum("failed")),
            (250, 200, 50),
            "{stats}"
        );
        assert_eq!(stats["window"]["successRate"], 0.8);
        assert_eq!(stats["failureReasons"][0]["reason"], "number blocked");
        assert_eq!(stats["failureReasons"][0]["count"], 50);
        let sample = stats["failureReasons"][0]["sampleOrderNo"]
            .as_str()
            .unwrap();
        let (status, batch) = aws
            .api(
                fixture("apigw-list-touchpoints.json"),
                "GET",
                &format!("/v1/batches/{sample}"),
                None,
                "campaign",
            )
            .await;
        assert_eq!(status, 200, "{batch}");
        assert!(
            batch["results"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["errorMsg"] == "number blocked")
        );
    }
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
    let mut tp = fixture_body("apigw-create-touchpoint.json");
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
        .name(schedule_name(1, &id.as_str().into()))
        .group_name(aws.names.schedule_group.clone().unwrap())
        .send()
        .await
        .expect("a schedule exists");
    assert_eq!(schedule.schedule_expression(), Some("rate(5 minutes)"));
    let target = schedule.target().unwrap();
    assert_eq!(
        target.input(),
        Some(schedule_input(1, &id.as_str().into()).as_str())
    );

    let mut record = fixture("sqs-dispatch.json")["Records"][0].clone();
    record["body"] = json!(dispatch_body("async-1", &id, 25).to_string());
    let event = event_of(vec![serde_json::from_value(record).unwrap()]);
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
    let pending_now =
        |stats: &Value| stats["series"].as_array().unwrap().last().unwrap()["pending"].clone();
    let (_, stats) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            "/v1/campaigns/cmp-42/stats?hours=3",
            None,
            "campaign",
        )
        .await;
    assert_eq!(pending_now(&stats), 25, "the chart's pending line: {stats}");
    assert_eq!(
        stats["series"][0]["pending"], 0,
        "nothing was pending two hours ago"
    );

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
    let (_, stats) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            "/v1/campaigns/cmp-42/stats?hours=3",
            None,
            "campaign",
        )
        .await;
    assert_eq!(pending_now(&stats), 0, "{stats}");

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
        .name(schedule_name(1, &id.into()))
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
    let mut tp = fixture_body("apigw-create-touchpoint.json");
    tp["url"] = json!(rx.url());
    let id = aws.create(tp).await;
    let mut record = fixture("sqs-dispatch.json")["Records"][0].clone();
    record["body"] = json!(dispatch_body("retry-1", &id, 3).to_string());
    let event = event_of(vec![serde_json::from_value(record).unwrap()]);
    let response = aws.dispatcher.handle(event).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "handed on to a fresh message, this one deleted"
    );
    // The retry round is a fresh message, delayed by SQS and carrying when it is due.
    let queue = aws.names.dispatch_queue_url.clone().unwrap();
    let mut next = Vec::new();
    for _ in 0..30 {
        next = aws.drain(&queue).await;
        if !next.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(next.len(), 1, "one fresh message");
    assert_eq!(
        next[0]
            .attributes
            .get("ApproximateReceiveCount")
            .map(String::as_str),
        Some("1"),
        "its receive count starts again"
    );
    let due: i64 = next[0].message_attributes["notBefore"]
        .string_value
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(due > rx.seen()[0].wall_ms, "due after the failed attempt");
    tokio::time::sleep(Duration::from_millis(
        (due - rx.seen()[0].wall_ms).clamp(0, 2_000) as u64,
    ))
    .await;
    let response = aws.dispatcher.handle(event_of(next.clone())).await;
    assert!(response.batch_item_failures.is_empty());
    aws.delete(&queue, &next).await;
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

/// Hostile SQS bodies: unreadable ones are moved to the dead-letter queue with their reason
/// (not retried, not dropped silently); readable but invalid ones fail every user they name
/// with the reason, published like any result; none is reported for redelivery.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn hostile_sqs_messages_are_dead_lettered_or_failed_with_their_reason_never_retried() {
    let aws = Aws::new().await;
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let mut tp = fixture_body("apigw-create-touchpoint.json");
    tp["url"] = json!(rx.url());
    let id = aws.create(tp).await;
    let dlq = aws
        .clients
        .sqs
        .create_queue()
        .queue_name(format!("hostile-dlq-{}", std::process::id()))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let mut lambda = DispatcherLambda::new(
        &aws.clients,
        &aws.names,
        aws.names.dispatch_queue_url.clone().unwrap(),
        Outbound::new(true).unwrap(),
        DispatcherConfig::default(),
        5,
    )
    .unwrap();
    lambda.dead_letter_url = Some(dlq.clone());
    let lambda = Arc::new(lambda);

    let unreadable = [
        ("not JSON", "users: everyone".to_owned()),
        (
            "duplicate keys",
            r#"{"dispatchId":"a","dispatchId":"b","projectId":1,"users":[]}"#.to_owned(),
        ),
        ("an array", "[]".to_owned()),
        (
            "no projectId",
            json!({"dispatchId": "x", "users": [{"gid": 1}]}).to_string(),
        ),
        ("gid as a string", {
            let mut d = dispatch_body("s-gid", &id, 1);
            d["users"][0]["gid"] = json!("1");
            d.to_string()
        }),
    ];
    let invalid = [
        (
            "negative gid",
            {
                let mut d = dispatch_body("h-negative", &id, 2);
                d["users"][0]["gid"] = json!(-5);
                d
            },
            "must not be negative",
            2,
        ),
        (
            "duplicate gids",
            {
                let mut d = dispatch_body("h-duplicate", &id, 2);
                d["users"][1]["gid"] = json!(0);
                d
            },
            "more than once",
            1,
        ),
        (
            "10,001 users",
            dispatch_body("h-many", &id, 10_001),
            "at most 10000",
            10_001,
        ),
        (
            "unknown touchpoint",
            dispatch_body("h-unknown", "tp_01JDX3ZZZZZZZZZZZZZZZZZZZZ", 3),
            "does not exist",
            3,
        ),
        (
            "another project's touchpoint",
            {
                let mut d = dispatch_body("h-foreign", &id, 3);
                d["projectId"] = json!(2);
                d
            },
            "does not exist",
            3,
        ),
    ];
    let template = fixture("sqs-dispatch.json")["Records"][0].clone();
    let mut records = Vec::new();
    for (i, body) in unreadable
        .iter()
        .map(|(_, b)| b.clone())
        .chain(invalid.iter().map(|(_, d, _, _)| d.to_string()))
        .enumerate()
    {
        let mut record = template.clone();
        record["messageId"] = json!(format!("hostile-{i}"));
        record["body"] = json!(body);
        records.push(serde_json::from_value::<SqsMessage>(record).unwrap());
    }
    // Submitted through the API, a dispatch reads as queued until the dispatcher opens it.
    let (status, _) = aws
        .api(
            fixture("apigw-submit-dispatch.json"),
            "POST",
            "/v1/dispatches",
            Some(dispatch_body("h-queued", &id, 1)),
            "campaign",
        )
        .await;
    assert_eq!(status, 202);
    let (status, queued) = aws
        .api(
            fixture("apigw-list-touchpoints.json"),
            "GET",
            "/v1/dispatches/h-queued",
            None,
            "campaign",
        )
        .await;
    assert_eq!(
        (status, queued["state"].as_str()),
        (200, Some("queued")),
        "{queued}"
    );

    let response = lambda.handle(event_of(records)).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "nothing is redelivered: {:?}",
        response.batch_item_failures
    );

    // The unreadable ones wait on the dead-letter queue, each with its reason.
    let mut dead: HashMap<String, String> = HashMap::new();
    for _ in 0..10 {
        let got = aws
            .clients
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        for m in got.messages.unwrap_or_default() {
            let attrs = m.message_attributes.unwrap_or_default();
            let reason = attrs["reason"]
                .string_value()
                .unwrap_or_default()
                .to_owned();
            assert!(
                attrs["sourceMessageId"]
                    .string_value()
                    .unwrap()
                    .starts_with("hostile-")
            );
            dead.insert(m.body.unwrap_or_default(), reason);
        }
        if dead.len() >= unreadable.len() {
            break;
        }
    }
    assert_eq!(dead.len(), unreadable.len(), "{dead:?}");
    for (what, body) in &unreadable {
        let reason = &dead[body];
        assert!(!reason.is_empty(), "{what}: no reason");
    }
    assert!(dead["users: everyone"].contains("not JSON"));
    assert!(dead[unreadable[1].1.as_str()].contains("duplicate key"));

    // The invalid ones: every named user failed with the reason, on the results queue.
    let expected: usize = invalid.iter().map(|(_, _, _, n)| n).sum();
    let mut events = Vec::new();
    for _ in 0..50 {
        let more = aws.results().await;
        if more.is_empty() && events.len() >= expected {
            break;
        }
        events.extend(more);
    }
    for (what, d, reason, users) in &invalid {
        let dispatch = d["dispatchId"].as_str().unwrap();
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["dispatchId"] == dispatch)
            .collect();
        assert_eq!(mine.len(), *users, "{what}");
        assert!(
            mine.iter()
                .all(|e| e["status"] == "TOU_FAIL"
                    && e["errorMsg"].as_str().unwrap().contains(reason)),
            "{what}: {:?}",
            mine.first()
        );
    }
    assert_eq!(rx.requests(), 0, "nothing was sent");
}

// ---------------------------------------------------------------- AWS requests and cost

/// Counts every request the SDK clients make (once per operation: the SDK's retries of a
/// throttled or failed attempt would come on top), by service and operation, with the request body's size, and notes which items each DynamoDB request
/// touches (to price it in capacity units afterwards).
#[derive(Debug, Default)]
struct Meter {
    calls: std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
    touched: std::sync::Mutex<Vec<Touch>>,
}

/// One DynamoDB request: whether it reads, writes or writes transactionally, and the items it
/// names (key, and the size of an item it puts whole).
#[derive(Debug, Clone)]
struct Touch {
    kind: TouchKind,
    items: Vec<(String, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TouchKind {
    Read,
    Query,
    Write,
    Transaction,
}

impl Meter {
    fn take(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn take_touched(&self) -> Vec<Touch> {
        std::mem::take(&mut *self.touched.lock().unwrap())
    }
}

/// DynamoDB's size of an item in its wire JSON (attribute names plus values, as pricing
/// counts them).
fn wire_item_bytes(item: &Value) -> usize {
    fn value(v: &Value) -> usize {
        let Some((t, x)) = v.as_object().and_then(|o| o.iter().next()) else {
            return 1;
        };
        match (t.as_str(), x) {
            ("S", Value::String(s)) => s.len(),
            ("N", Value::String(n)) => n.trim_start_matches('-').len().div_ceil(2) + 1,
            ("L", Value::Array(l)) => 3 + l.iter().map(|e| 1 + value(e)).sum::<usize>(),
            ("M", Value::Object(_)) => 3 + wire_item_bytes(x),
            _ => 1,
        }
    }
    item.as_object()
        .map_or(0, |o| o.iter().map(|(k, v)| k.len() + value(v)).sum())
}

fn wire_key(table: &Value, key: &Value) -> String {
    format!(
        "{}|{}|{}",
        table.as_str().unwrap_or(""),
        key["pk"]["S"].as_str().unwrap_or(""),
        key["sk"]["S"].as_str().unwrap_or("")
    )
}

/// The items a DynamoDB request names, from its JSON body.
fn touch_of(operation: &str, body: &[u8]) -> Option<Touch> {
    let b: Value = serde_json::from_slice(body).ok()?;
    let named = |x: &Value| match (x.get("Item"), x.get("Key")) {
        (Some(item), _) => (wire_key(&x["TableName"], item), wire_item_bytes(item)),
        (None, Some(key)) => (wire_key(&x["TableName"], key), 0),
        _ => (String::new(), 0),
    };
    let (kind, items) = match operation {
        "GetItem" => (TouchKind::Read, vec![named(&b)]),
        "Query" | "Scan" => (TouchKind::Query, vec![]),
        "PutItem" | "UpdateItem" | "DeleteItem" => (TouchKind::Write, vec![named(&b)]),
        "TransactWriteItems" => (
            TouchKind::Transaction,
            b["TransactItems"]
                .as_array()?
                .iter()
                .filter_map(|t| t.as_object()?.values().next().map(named))
                .collect(),
        ),
        _ => return None,
    };
    Some(Touch { kind, items })
}

#[derive(Debug, Clone)]
struct Metered {
    service: &'static str,
    meter: Arc<Meter>,
}

impl aws_sdk_dynamodb::config::Intercept for Metered {
    fn name(&self) -> &'static str {
        "request-meter"
    }

    fn read_after_serialization(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let request = context.request();
        let operation = match request.headers().get("x-amz-target") {
            Some(t) => t.rsplit('.').next().unwrap_or(t).to_owned(),
            None => {
                let path = request.uri().split('?').next().unwrap_or("");
                let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
                format!("{} /{first}", request.method())
            }
        };
        let body = request.body().bytes().unwrap_or_default();
        let bytes = body.len() as u64;
        if self.service == "DynamoDB"
            && let Some(touch) = touch_of(&operation, body)
        {
            self.meter.touched.lock().unwrap().push(touch);
        }
        let mut calls = self.meter.calls.lock().unwrap();
        let entry = calls
            .entry(format!("{} {operation}", self.service))
            .or_default();
        entry.0 += 1;
        entry.1 += bytes;
        Ok(())
    }
}

async fn metered_clients(meter: &Arc<Meter>) -> Clients {
    let base = clients().await;
    let m = |service| Metered {
        service,
        meter: Arc::clone(meter),
    };
    Clients {
        dynamodb: aws_sdk_dynamodb::Client::from_conf(
            base.dynamodb
                .config()
                .to_builder()
                .interceptor(m("DynamoDB"))
                .build(),
        ),
        sqs: aws_sdk_sqs::Client::from_conf(
            base.sqs.config().to_builder().interceptor(m("SQS")).build(),
        ),
        scheduler: aws_sdk_scheduler::Client::from_conf(
            base.scheduler
                .config()
                .to_builder()
                .interceptor(m("Scheduler"))
                .build(),
        ),
    }
}

/// DynamoDB's size of an item (attribute names plus values, as its pricing counts them).
fn item_bytes(item: &HashMap<String, aws_sdk_dynamodb::types::AttributeValue>) -> usize {
    fn value(v: &aws_sdk_dynamodb::types::AttributeValue) -> usize {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        match v {
            A::S(s) => s.len(),
            A::N(n) => n.trim_start_matches('-').len().div_ceil(2) + 1,
            A::L(l) => 3 + l.iter().map(|x| 1 + value(x)).sum::<usize>(),
            A::M(m) => 3 + m.iter().map(|(k, x)| 1 + k.len() + value(x)).sum::<usize>(),
            _ => 1,
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

/// The size of every item of both tables now, by key.
async fn item_sizes(aws: &Aws) -> HashMap<String, usize> {
    let mut sizes = HashMap::new();
    for table in [&aws.names.delivery_table, &aws.names.touchpoints_table] {
        let mut start = None;
        loop {
            let page = aws
                .clients
                .dynamodb
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            for item in page.items() {
                let k = |a: &str| {
                    item.get(a)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default()
                };
                sizes.insert(format!("{table}|{}|{}", k("pk"), k("sk")), item_bytes(item));
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
    }
    sizes
}

/// Public on-demand prices, us-east-1, as of 2026-11 (USD).
const LAMBDA_PER_GB_S: f64 = 0.000_016_666_7;
const LAMBDA_PER_REQUEST: f64 = 0.20 / 1e6;
const SQS_STANDARD_PER_REQUEST: f64 = 0.40 / 1e6;
const SQS_FIFO_PER_REQUEST: f64 = 0.50 / 1e6;
const DYNAMODB_PER_WRU: f64 = 0.625 / 1e6;
const DYNAMODB_PER_RRU: f64 = 0.125 / 1e6;

struct Bill {
    users: u64,
    requests: u64,
    cost: f64,
    /// DynamoDB write request units per user.
    wru_per_user: f64,
    /// DynamoDB `PutItem`s (batch claims, dispatch opens).
    puts: u64,
}

/// One dispatch of `users` users at `batch`: the campaign system's SendMessage, the event
/// source mapping's receive and delete (made by Lambda, counted here by the model), and every
/// request the dispatcher Lambda makes, metered.
async fn metered_dispatch(users: i64, batch: u32) -> Bill {
    metered_dispatches(1, users, batch).await
}

/// `dispatches` dispatches of `users` users each, as [`metered_dispatch`]; SQS hands the
/// dispatcher up to 10 records per invocation.
async fn metered_dispatches(dispatches: usize, users: i64, batch: u32) -> Bill {
    let per_dispatch = users;
    let users = users * dispatches as i64;
    let meter = Arc::new(Meter::default());
    let aws = Aws::with(metered_clients(&meter).await).await;
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let mut tp = fixture_body("apigw-create-touchpoint.json");
    tp["url"] = json!(rx.url());
    tp["batchSize"] = json!(batch);
    // One request in flight: the counts do not depend on it, and moto fails concurrent
    // transactions now and then (HTTP 500, which the SDK would retry and we would count).
    tp["maxConcurrency"] = json!(1);
    let id = aws.create(tp).await;
    meter.take();
    meter.take_touched();

    // The campaign system's producer puts the dispatches on the queue.
    let queue = aws.names.dispatch_queue_url.clone().unwrap();
    for d in 0..dispatches {
        let body = dispatch_body(
            &format!("cost-{batch}-{per_dispatch}-{d}"),
            &id,
            per_dispatch,
        );
        aws.clients
            .sqs
            .send_message()
            .queue_url(&queue)
            .message_body(body.to_string())
            .send()
            .await
            .unwrap();
    }
    let produced = meter.take();
    let records = aws.drain(&queue).await;
    assert_eq!(records.len(), dispatches);
    meter.take();
    meter.take_touched();
    let started = std::time::Instant::now();
    // Events of up to the template's `BatchSize` records; SQS hands at most ten messages to a
    // receive and deletes at most ten in a batch.
    let batch_size = crate::sim::Template::read(1.0).batch_size.max(1) as usize;
    let mut events = 0u64;
    for chunk in records.chunks(batch_size) {
        let response = aws.dispatcher.handle(event_of(chunk.to_vec())).await;
        assert!(response.batch_item_failures.is_empty());
        events += chunk.len().div_ceil(10) as u64;
    }
    let handler_seconds = started.elapsed().as_secs_f64();
    let mut calls = meter.take();
    for (name, c) in produced {
        calls.insert(format!("{name} (campaign system, dispatch queue)"), c);
    }
    // Lambda's event source mapping: one ReceiveMessage and one DeleteMessageBatch per ten
    // records of an event.
    calls.insert(
        "SQS ReceiveMessage (event source mapping)".into(),
        (events, 0),
    );
    calls.insert(
        "SQS DeleteMessageBatch (event source mapping)".into(),
        (events, 0),
    );
    assert_eq!(
        rx.seen().iter().map(|s| s.gids.len()).sum::<usize>(),
        users as usize
    );

    // Capacity units, priced per item touched: a write costs the item's size in KiB rounded
    // up (the larger of the item it puts and the item as it is now: items only grow here but
    // for an outbox entry of a few dozen bytes), twice in a transaction; a strongly
    // consistent read costs its size in 4 KiB; a query is counted as one unit (its items
    // are small: dispatch and counters).
    let sizes = item_sizes(&aws).await;
    let (mut wru, mut rru) = (0.0, 0.0);
    for touch in meter.take_touched() {
        for (key, put) in &touch.items {
            let size = sizes.get(key).copied().unwrap_or(0).max(*put).max(1);
            match touch.kind {
                TouchKind::Read => rru += size.div_ceil(4096) as f64,
                TouchKind::Write => wru += size.div_ceil(1024) as f64,
                TouchKind::Transaction => wru += 2.0 * size.div_ceil(1024) as f64,
                TouchKind::Query => {}
            }
        }
        if touch.kind == TouchKind::Query {
            rru += 1.0;
        }
    }
    let largest = sizes.values().max().copied().unwrap_or(0);
    let per_1000 = 1000.0 / users as f64;
    let mut requests = 0;
    let mut sqs = 0.0;
    let per_dispatch_factor = 1.0 / dispatches as f64;
    println!(
        "\n{dispatches} dispatch(es) of {per_dispatch} users, {users} users at batch {batch}: largest delivery item {largest} bytes, handler {handler_seconds:.2} s against moto"
    );
    println!("| request | count | per 1,000 users | per dispatch |");
    println!("|---|---|---|---|");
    for (name, (count, bytes)) in &calls {
        requests += count;
        println!(
            "| {name} | {count} | {:.2} | {:.2} |",
            *count as f64 * per_1000,
            *count as f64 * per_dispatch_factor
        );
        let c = *count as f64;
        match name.as_str() {
            n if n.contains("SendMessage") && n.starts_with("SQS") => {
                // SQS bills every 64 KiB of a message as one request.
                let chunks = (*bytes as f64 / c / 65_536.0).ceil().max(1.0);
                // The dispatcher's own sends go to the FIFO results queue.
                let price = if n == "SQS SendMessage" {
                    SQS_FIFO_PER_REQUEST
                } else {
                    SQS_STANDARD_PER_REQUEST
                };
                sqs += c * chunks * price;
            }
            n if n.starts_with("SQS") => sqs += c * SQS_STANDARD_PER_REQUEST,
            _ => {}
        }
    }
    // The dispatcher Lambda at the template's 256 MB for the handler's time here (moto and
    // the receiver on loopback: real latencies are longer, see BENCHMARKS.md).
    let lambda = LAMBDA_PER_REQUEST + 0.25 * handler_seconds * LAMBDA_PER_GB_S;
    let cost = sqs + wru * DYNAMODB_PER_WRU + rru * DYNAMODB_PER_RRU + lambda;
    println!(
        "| total | {requests} | {:.2} | {:.2} |\nestimated cost per 1 million users: ${:.4} (SQS ${:.4}, DynamoDB {:.0} WRU ${:.4} + {:.0} RRU ${:.4}, Lambda ${:.4})",
        requests as f64 * per_1000,
        requests as f64 * per_dispatch_factor,
        cost * 1e6 / users as f64,
        sqs * 1e6 / users as f64,
        wru * 1e6 / users as f64,
        wru * DYNAMODB_PER_WRU * 1e6 / users as f64,
        rru * 1e6 / users as f64,
        rru * DYNAMODB_PER_RRU * 1e6 / users as f64,
        lambda * 1e6 / users as f64,
    );
    Bill {
        users: users as u64,
        requests,
        cost: cost * 1e6 / users as f64,
        wru_per_user: wru / users as f64,
        puts: calls.get("DynamoDB PutItem").map_or(0, |c| c.0),
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn aws_requests_and_cost_of_a_ten_thousand_user_dispatch() {
    let wide = metered_dispatch(10_000, 500).await;
    let per_1000 = wide.requests as f64 * 1000.0 / wide.users as f64;
    assert!(
        per_1000 <= 12.0,
        "{per_1000} AWS requests per 1,000 users at batch 500"
    );
    assert!(
        wide.cost <= 0.05,
        "${} per million users at batch 500",
        wide.cost
    );
    // At batch 1 nearly every request is per batch, so 200 users give about the same figures
    // per 1,000 users (moto copies its tables for every transaction: 10,000 would take an
    // hour). A batch is a claim and a record; counters and results follow per checkpoint.
    let narrow = metered_dispatch(200, 1).await;
    assert!(
        narrow.cost <= 2.0,
        "${} per million users at batch 1",
        narrow.cost
    );
    assert!(
        narrow.wru_per_user <= 4.0,
        "{} write units per user at batch 1",
        narrow.wru_per_user
    );
    assert!(
        narrow.requests >= 2 * narrow.users,
        "a claim and a record per batch: the figures measured what they claim to"
    );
    // A triggered campaign: one-user dispatches, ten to an invocation. Each is a claim that
    // opens it (one PutItem: no dispatch record of its own) and a record, and one checkpoint
    // (its outcome, its user counted as sent, no read first), which the invocation's records
    // make together: one transaction and one SendMessageBatch for them, their counters moved
    // once. 3.70–3.80 requests and 4.9–5.3 write units a dispatch (BENCHMARKS.md); 4.5 and 7.4
    // when a busy store split an invocation's checkpoints into four groups and each instance
    // reported the receiver's health every second; 6.6 and 13 when each checkpointed alone.
    let triggered = metered_dispatches(20, 1, 1).await;
    let per_dispatch = triggered.requests as f64 / 20.0;
    assert_eq!(
        triggered.puts, 20,
        "one PutItem a dispatch: the claim that opens it"
    );
    assert!(
        per_dispatch <= 4.5,
        "{per_dispatch} AWS requests per one-user dispatch"
    );
    // How the checkpoints fall into groups varies a little (each group's counters are
    // transaction items at two units each).
    assert!(
        triggered.wru_per_user <= 7.0,
        "{} write units per one-user dispatch",
        triggered.wru_per_user
    );
    assert!(
        triggered.cost <= 6.0,
        "${} per million one-user dispatches",
        triggered.cost
    );
}

/// The slots and back-pressure of a touchpoint in DynamoDB, as two processes see them: a slot
/// is taken once, renewed only by its lease, free again when given back (with the pace of its
/// last request) or when its lease ran out; a cut is recorded once per spacing and a pause only
/// grows.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn a_touchpoints_slots_and_back_pressure_hold_in_dynamodb() {
    use touchpoint::limits::{Cut, Pressure, SharedLimits};
    let clients = clients().await;
    let names = provision(&clients).await;
    let store = touchpoint_aws::DynamoLimits::new(clients.dynamodb.clone(), &names.delivery_table);
    let tp: touchpoint::ids::TouchpointId = "tp_limits".into();
    let now = 1_000_000;
    assert_eq!(
        store.take(1, &tp, 0, "a-1", now, now + 100).await.unwrap(),
        Some(0)
    );
    assert_eq!(
        store
            .take(1, &tp, 0, "b-1", now + 50, now + 150)
            .await
            .unwrap(),
        None,
        "held"
    );
    assert!(
        !store.renew(1, &tp, 0, "b-1", now + 200).await.unwrap(),
        "not b's"
    );
    assert!(store.renew(1, &tp, 0, "a-1", now + 300).await.unwrap());
    // Another project's touchpoint of the same id is another partition.
    assert_eq!(
        store.take(2, &tp, 0, "c-1", now, now + 100).await.unwrap(),
        Some(0)
    );
    store.release(1, &tp, 0, "a-1", now + 250).await.unwrap();
    assert_eq!(
        store
            .take(1, &tp, 0, "b-1", now + 60, now + 160)
            .await
            .unwrap(),
        Some(now + 250),
        "given back, with the pace of its last request"
    );
    // b dies holding it: free once its lease ran out, and b's late release changes nothing.
    assert_eq!(
        store
            .take(1, &tp, 0, "c-2", now + 150, now + 400)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .take(1, &tp, 0, "c-2", now + 161, now + 400)
            .await
            .unwrap()
            .is_some()
    );
    store.release(1, &tp, 0, "b-1", now + 170).await.unwrap();
    assert!(
        store.renew(1, &tp, 0, "c-2", now + 500).await.unwrap(),
        "still c's"
    );
    let state = store.state(1, &tp).await.unwrap();
    assert_eq!(state.slots.len(), 1);
    assert_eq!(
        (state.slots[0].lease.as_deref(), state.slots[0].until),
        (Some("c-2"), now + 500)
    );
    // Back-pressure.
    let cut = |to: f64, at| Cut {
        to,
        from: 2.0 * to,
        at,
    };
    store.cut(1, &tp, cut(10.0, now), now - 1000).await.unwrap();
    store
        .cut(1, &tp, cut(5.0, now + 500), now - 500)
        .await
        .unwrap();
    assert_eq!(
        store.state(1, &tp).await.unwrap().pressure.cut,
        Some(cut(10.0, now)),
        "one cut a spacing"
    );
    store
        .cut(1, &tp, cut(5.0, now + 1500), now + 500)
        .await
        .unwrap();
    store.pause(1, &tp, now + 3000).await.unwrap();
    store.pause(1, &tp, now + 2000).await.unwrap();
    let p = store.state(1, &tp).await.unwrap().pressure;
    assert_eq!(
        (p.cut, p.paused_until),
        (Some(cut(5.0, now + 1500)), now + 3000)
    );
    // What the senders read every few hundred milliseconds: the same, from one small item.
    assert_eq!(store.pressure(1, &tp).await.unwrap(), p);
    assert_eq!(
        store.pressure(1, &"tp_never_pressed".into()).await.unwrap(),
        Pressure::default()
    );
}

/// A receiver's health in DynamoDB: every instance adds its counts to the window slot of the
/// minute (a slot of an older number is started again, a late report of a passed slot is
/// dropped); the breaker opens once, one instance takes the probe after the cool-down, and a
/// probe's answer reopens (longer) or closes it, which empties the window and lifts its pause.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn a_receivers_health_and_breaker_hold_in_dynamodb() {
    use touchpoint::health::Breaker;
    use touchpoint::limits::SharedLimits;
    let clients = clients().await;
    let names = provision(&clients).await;
    let store = touchpoint_aws::DynamoLimits::new(clients.dynamodb.clone(), &names.delivery_table);
    let tp: touchpoint::ids::TouchpointId = "tp_health".into();
    let p = store.report(1, &tp, 100, 3, 2).await.unwrap();
    assert_eq!(p.window.totals(100), (3, 2));
    let p = store.report(1, &tp, 100, 4, 4).await.unwrap();
    assert_eq!(p.window.totals(100), (7, 6), "added by another instance");
    let p = store.report(1, &tp, 101, 1, 1).await.unwrap();
    assert_eq!(p.window.totals(101), (8, 7));
    // Slot 105 takes slot 100's place (5 slots): its counts leave the window.
    let p = store.report(1, &tp, 105, 2, 0).await.unwrap();
    assert_eq!(p.window.totals(105), (3, 1));
    let p = store.report(1, &tp, 100, 9, 9).await.unwrap();
    assert_eq!(
        p.window.totals(105),
        (3, 1),
        "a late report of a passed slot is dropped"
    );
    // Projects do not share health.
    assert_eq!(
        store
            .report(2, &tp, 105, 1, 0)
            .await
            .unwrap()
            .window
            .totals(105),
        (1, 0)
    );

    let b = Breaker {
        since: 1_000,
        reason: "20 of the last 20 requests failed".into(),
        until: 61_000,
        probe_until: 0,
        opened: 1,
    };
    assert!(store.trip(1, &tp, &b).await.unwrap());
    let mut other = b.clone();
    other.reason = "another instance's".into();
    assert!(!store.trip(1, &tp, &other).await.unwrap(), "open already");
    let p = store.pressure(1, &tp).await.unwrap();
    assert_eq!(p.breaker, Some(b.clone()));
    assert_eq!(p.paused_until, 61_000, "its cool-down is a pause");
    assert!(
        !store.probe(1, &tp, 60_000, 70_000).await.unwrap(),
        "cooling down"
    );
    assert!(store.probe(1, &tp, 61_000, 71_000).await.unwrap());
    assert!(
        !store.probe(1, &tp, 62_000, 72_000).await.unwrap(),
        "one probe"
    );
    assert!(
        store.probe(1, &tp, 71_001, 81_000).await.unwrap(),
        "a lost probe's lease ran out"
    );
    let again = Breaker {
        until: 200_000,
        opened: 2,
        ..b.clone()
    };
    // The first probe's late answer changes nothing: the second holds the breaker.
    store.settle(1, &tp, None, Some(71_000)).await.unwrap();
    assert!(store.pressure(1, &tp).await.unwrap().breaker.is_some());
    // A probe given back unsent lets another go at once.
    store.release_probe(1, &tp, 81_000).await.unwrap();
    assert!(store.probe(1, &tp, 71_002, 81_500).await.unwrap());
    store
        .settle(1, &tp, Some(&again), Some(81_500))
        .await
        .unwrap();
    let p = store.pressure(1, &tp).await.unwrap();
    assert_eq!(p.breaker, Some(again));
    assert_eq!(p.paused_until, 200_000);
    // An admin's resume closes it whatever holds it.
    store.settle(1, &tp, None, None).await.unwrap();
    let p = store.pressure(1, &tp).await.unwrap();
    assert_eq!(p.breaker, None);
    assert_eq!(p.paused_until, 0);
    assert_eq!(p.window.totals(105), (0, 0), "a fresh window");
    assert!(
        !store.probe(1, &tp, 300_000, 310_000).await.unwrap(),
        "closed: nothing to probe"
    );
    assert!(store.trip(1, &tp, &b).await.unwrap(), "it can open again");
}

/// An instance delivers at most `BODY_BYTES_AT_ONCE` of dispatch bodies at once (an event of
/// `BatchSize` records may refer to stored bodies far larger than its payload): a record whose
/// body does not fit waits for the ones before it. Here the budget is one body: the two
/// dispatches of one event go one after the other, where they go side by side by default.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn an_instance_holds_a_bounded_amount_of_dispatch_bodies_at_once() {
    let aws = Aws::new().await;
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_at = Arc::clone(&arrivals);
    let rx = Receiver::start(move |seen, _| {
        seen_at.lock().unwrap().push(std::time::Instant::now());
        Reply::After(Duration::from_millis(400), Box::new(Reply::all_ok(seen)))
    })
    .await;
    let mut tp = fixture_body("apigw-create-touchpoint.json");
    tp["url"] = json!(rx.url());
    tp["batchSize"] = json!(10);
    let id = aws.create(tp).await;
    let queue = aws.names.dispatch_queue_url.clone().unwrap();
    let mut gaps = Vec::new();
    for (round, budget) in [("default", None), ("one body", Some(()))] {
        for i in 0..2 {
            let (status, _) = aws
                .api(
                    fixture("apigw-submit-dispatch.json"),
                    "POST",
                    "/v1/dispatches",
                    Some(dispatch_body(&format!("budget-{round}-{i}"), &id, 10)),
                    "campaign",
                )
                .await;
            assert_eq!(status, 202);
        }
        let records = aws.drain(&queue).await;
        assert_eq!(records.len(), 2);
        let largest = records
            .iter()
            .map(|r| r.body.as_deref().unwrap_or_default().len())
            .max()
            .unwrap();
        let lambda = match budget {
            None => Arc::clone(&aws.dispatcher),
            Some(()) => {
                let mut lambda = DispatcherLambda::new(
                    &aws.clients,
                    &aws.names,
                    queue.clone(),
                    Outbound::new(true).unwrap(),
                    DispatcherConfig::default(),
                    5,
                )
                .unwrap();
                lambda.bodies_in_hand = Arc::new(tokio::sync::Semaphore::new(largest));
                Arc::new(lambda)
            }
        };
        arrivals.lock().unwrap().clear();
        let response = lambda.handle(event_of(records.clone())).await;
        assert!(response.batch_item_failures.is_empty());
        aws.delete(&queue, &records).await;
        let at = arrivals.lock().unwrap().clone();
        assert_eq!(at.len(), 2, "{round}: one request per dispatch");
        gaps.push(at[1].duration_since(at[0]));
    }
    assert!(
        gaps[0] < Duration::from_millis(300),
        "side by side: {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(400),
        "one after the other: {gaps:?}"
    );
}

/// Operational notifications on AWS wait as messages on the dispatch queue, sealed with the
/// project's notification token: the dispatcher Lambda sends a genuine one (signed with the
/// Standard Webhooks headers), puts one the endpoint failed back for later, and sends nothing
/// for a message someone else wrote (anyone who may send dispatches may write to that queue).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn notifications_travel_the_dispatch_queue_sealed_and_a_forged_one_is_not_sent() {
    const HOOK_TOKEN: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NEW_TOKEN: &str = "whsec_c2Vjb25kLXRva2VuLWZvci1ub3RpZmljYXRpb25z";
    let aws = Aws::new().await;
    // The endpoint fails its first request.
    let hooks = Receiver::start(|_, n| {
        if n == 1 {
            Reply::Json(503, json!({}))
        } else {
            Reply::Json(204, Value::Null)
        }
    })
    .await;
    let admin = touchpoint_services::Services::aws(
        &aws.clients,
        &aws.names,
        Outbound::new(true).unwrap(),
        touchpoint_services::Settings {
            urls: UrlPolicy {
                allow_plain_http: true,
            },
            ..Default::default()
        },
    )
    .unwrap()
    .touchpoints;
    admin
        .put_notification_settings(
            1,
            &json!({"url": format!("http://{}/notify", hooks.addr), "token": HOOK_TOKEN,
                    "events": ["touchpoint.paused"]}),
        )
        .await
        .unwrap();
    let tp = admin
        .create(
            1,
            &json!({"name": "hooked", "kind": "notification", "url": "https://example.com/t",
                    "userAttributes": [{"attribute": "a", "displayName": "a"}],
                    "templateParams": [{"identifier": "t", "displayName": "t", "type": "text"}]}),
        )
        .await
        .unwrap();
    admin
        .pause(1, &tp.id, &json!({"reason": "maintenance"}))
        .await
        .unwrap();
    let queue = aws.names.dispatch_queue_url.clone().unwrap();
    let genuine = aws.drain(&queue).await;
    assert_eq!(genuine.len(), 1, "the pause, on the dispatch queue");
    let body: Value = serde_json::from_str(genuine[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(body["notification"]["type"], "touchpoint.paused");
    // Forged: the same notification with other data under its seal, and a seal of another
    // token.
    let mut other_data = body.clone();
    other_data["notification"]["data"]["reason"] = json!("send your password to evil.example");
    let mut other_seal = body.clone();
    let n: touchpoint::notify::Notification =
        serde_json::from_value(body["notification"].clone()).unwrap();
    other_seal["seal"] = json!(touchpoint::notify::seal(
        &n,
        &touchpoint::model::Token::new("guessed")
    ));
    for forged in [other_data, other_seal] {
        aws.clients
            .sqs
            .send_message()
            .queue_url(&queue)
            .message_body(forged.to_string())
            .send()
            .await
            .unwrap();
    }
    let forged = aws.drain(&queue).await;
    assert_eq!(forged.len(), 2);
    // The token changes while the genuine one waits: it is still sent, signed with the new one.
    admin
        .put_notification_settings(
            1,
            &json!({"url": format!("http://{}/notify", hooks.addr), "token": NEW_TOKEN,
                    "events": ["touchpoint.paused"]}),
        )
        .await
        .unwrap();
    let response = aws.dispatcher.handle(event_of(forged)).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "dropped, not retried"
    );
    assert_eq!(hooks.requests(), 0, "nothing sent for a forged message");
    // The genuine one: its first attempt fails and goes back onto the queue, delayed.
    let response = aws.dispatcher.handle(event_of(genuine.clone())).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(hooks.requests(), 1);
    let mut again = Vec::new();
    for _ in 0..20 {
        again = aws.drain(&queue).await;
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(again.len(), 1, "the next attempt, after its wait");
    let next: Value = serde_json::from_str(again[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(next["attempt"], 1);
    let response = aws.dispatcher.handle(event_of(again)).await;
    assert!(response.batch_item_failures.is_empty());
    let seen = hooks.seen_at("/notify");
    assert_eq!(seen.len(), 2);
    for s in &seen {
        let header = |name: &str| s.headers[name].to_str().unwrap().to_owned();
        assert_eq!(header("webhook-id"), n.id);
        assert!(touchpoint::protocol::verify_webhook_signature(
            NEW_TOKEN,
            &n.id,
            header("webhook-timestamp").parse().unwrap(),
            &s.raw,
            &header("webhook-signature"),
        ));
        assert_eq!(s.body["data"]["reason"], "maintenance");
    }
    assert!(
        aws.drain(&queue).await.is_empty(),
        "delivered: nothing left"
    );
}
