//! The delivery promise under the conditions the product exists for, proven in a faithful
//! emulation of AWS (see `sim/mod.rs`) against the moto server, and against the real local
//! binary: receiver outages shorter and longer than the retry horizon, a slow receiver at batch
//! size 1, a hanging receiver next to healthy ones in one SQS batch, a panicking record, async
//! receipts with a 5-minute timeout and a schedule that failed to be created, aborts of
//! invocations at random points, a 45-second outage with the default schedule, and a batch size
//! edited during a retry wait. Each scenario prints one line of figures (RELIABILITY.md quotes
//! them). The scenarios run side by side: most of their time is spent waiting, compressed. The
//! test command runs them in a pass of their own with a thread per scenario (`--test-threads`),
//! and skips `scenario_` in the workspace run.

use crate::sim;
use crate::support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use sim::{Esm, Figures, Scheduler, Template};
use support::{Receiver, Reply, Seen};
use touchpoint::audit::{AuditEntry, AuditFilter};
use touchpoint::clock::{Clock, SystemClock};
use touchpoint::ids::TouchpointId;
use touchpoint::ledger::RetryPolicy;
use touchpoint::model::{CampaignRef, ProjectId, Touchpoint};
use touchpoint::ports::{ListFilter, StoreError, TouchpointStore, UpdateGuard};
use touchpoint::{Touchpoints, UrlPolicy};
use touchpoint_aws::{AwsNames, Clients, DynamoDelivery, DynamoTouchpoints, SchedulerReceipts};
use touchpoint_dispatcher::DispatcherConfig;
use touchpoint_dispatcher_lambda::DispatcherLambda;
use touchpoint_outbound::Outbound;
use touchpoint_receipt_poller::PollerConfig;
use touchpoint_receipt_poller_lambda::PollerLambda;
use touchpoint_services::{Ports, Services, Settings};

/// Time that storage calls take does not compress (and moto serves them one at a time): kept
/// free before a deadline to record the batches in flight.
const MARGIN: Duration = Duration::from_millis(1000);

fn config(t: &Template, margin: Duration) -> DispatcherConfig {
    DispatcherConfig {
        // The default schedule, jitter on, compressed.
        retry: RetryPolicy::default().scaled(t.factor),
        request_timeout: t.scaled(Duration::from_secs(15)),
        lease: t.scaled(Duration::from_secs(120)),
        receipt_poll_interval: t.scaled(touchpoint_aws::schedule::SCHEDULE_INTERVAL),
        deadline_margin: margin,
        max_stalls: t.max_receives_env,
        time_scale: t.factor,
        ..DispatcherConfig::default()
    }
}

/// Scenarios that load the moto server run one at a time (it is one Python process; its
/// latency does not compress), beside the ones that mostly wait.
static HEAVY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// One deployment: tables, queues as the template declares them, and the stores.
struct World {
    clients: Clients,
    names: AwsNames,
    template: Template,
    dlq: String,
    ledger: Arc<DynamoDelivery>,
    touchpoints: Arc<DynamoTouchpoints>,
    admin: Touchpoints,
    results: Mutex<Option<sim::ResultsReader>>,
    /// Last: the moto server stops after everything that talks to it.
    _moto: sim::Moto,
}

/// The production wiring with http:// receivers allowed (they are on 127.0.0.1).
fn plain_http() -> Settings {
    Settings {
        urls: UrlPolicy {
            allow_plain_http: true,
        },
        ..Settings::default()
    }
}

impl World {
    /// The world's AWS ports, for wiring a function around a faulty one.
    fn ports(&self) -> Ports {
        Ports {
            touchpoints: self.touchpoints.clone(),
            delivery: self.ledger.clone(),
            intake: self.ledger.clone(),
            schedule: Arc::new(
                SchedulerReceipts::new(self.clients.scheduler.clone(), &self.names).unwrap(),
            ),
            clock: Arc::new(SystemClock),
            outbound: Outbound::new(true).unwrap(),
            limits: Some(Arc::new(touchpoint_aws::DynamoLimits::new(
                self.clients.dynamodb.clone(),
                &self.names.delivery_table,
            ))),
            outbox: None,
        }
    }

    async fn new(factor: f64) -> World {
        // SIM_LOG=touchpoint_dispatcher=debug,info shows what the functions log.
        if let Ok(filter) = std::env::var("SIM_LOG") {
            use tracing_subscriber::prelude::*;
            if let Ok(targets) = filter.parse::<tracing_subscriber::filter::Targets>() {
                let _ = tracing_subscriber::registry()
                    .with(targets)
                    .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                    .try_init();
            }
        }
        let moto = sim::Moto::start().await;
        let clients = Clients::with_endpoint(&moto.endpoint).await;
        let names = touchpoint_aws::provision::provision(&clients).await;
        let template = Template::read(factor);
        let dlq = sim::configure_queues(&clients, &names, &template).await;
        let ledger = Arc::new(DynamoDelivery::new(&clients, &names));
        let touchpoints = Arc::new(DynamoTouchpoints::new(clients.dynamodb.clone(), &names));
        let admin = Services::aws(&clients, &names, Outbound::new(true).unwrap(), plain_http())
            .unwrap()
            .touchpoints;
        let results = Mutex::new(Some(sim::ResultsReader::start(&clients, &names)));
        World {
            _moto: moto,
            results,
            clients,
            names,
            template,
            dlq,
            ledger,
            touchpoints,
            admin,
        }
    }

    fn queue(&self) -> String {
        self.names.dispatch_queue_url.clone().unwrap()
    }

    async fn touchpoint(&self, name: &str, extra: Value) -> String {
        create_touchpoint(&self.admin, name, extra).await
    }

    /// Sends a dispatch to the dispatch queue, as the campaign system does.
    async fn send(&self, id: &str, touchpoint: &str, users: usize) {
        send_dispatch(&self.clients, &self.queue(), id, touchpoint, users).await;
    }

    fn lambda(&self, cfg: DispatcherConfig) -> Arc<DispatcherLambda> {
        self.lambda_on(&self.clients, cfg)
    }

    /// A dispatcher instance whose SDK clients are `clients` (faults injected in them).
    fn lambda_on(&self, clients: &Clients, cfg: DispatcherConfig) -> Arc<DispatcherLambda> {
        Arc::new(
            DispatcherLambda::new(
                clients,
                &self.names,
                self.queue(),
                Outbound::new(true).unwrap(),
                cfg,
                self.template.max_receives_env,
            )
            .unwrap(),
        )
    }

    /// The event source mapping with `instances` Lambda instances side by side.
    fn esm(&self, instances: usize, abort: Option<sim::Abort>) -> Esm {
        self.esm_with(instances, abort, MARGIN)
    }

    /// The event source mapping with `instances` instances whose clients are `clients`.
    fn esm_on(&self, clients: &Clients, instances: usize) -> Esm {
        let lambdas = (0..instances)
            .map(|_| self.lambda_on(clients, config(&self.template, MARGIN)))
            .collect();
        Esm::start(&self.clients, &self.queue(), &self.template, lambdas, None)
    }

    /// `instances` dispatcher instances configured by `cfg`.
    fn esm_of(&self, instances: usize, cfg: DispatcherConfig) -> Esm {
        let lambdas = (0..instances).map(|_| self.lambda(cfg.clone())).collect();
        Esm::start(&self.clients, &self.queue(), &self.template, lambdas, None)
    }

    fn esm_with(&self, instances: usize, abort: Option<sim::Abort>, margin: Duration) -> Esm {
        let lambdas = (0..instances)
            .map(|_| self.lambda(config(&self.template, margin)))
            .collect();
        Esm::start(&self.clients, &self.queue(), &self.template, lambdas, abort)
    }

    async fn figures(
        &self,
        dispatches: &[(String, usize)],
        rx: &Tracked,
        esm: &sim::EsmStats,
    ) -> Figures {
        let results = self.results.lock().unwrap().take().unwrap();
        let mut f = Figures::gather(
            &self.clients,
            Some(results),
            &*self.ledger,
            dispatches,
            esm,
            &self.dlq,
        )
        .await;
        f.sent_twice = rx.sent_twice();
        // Attempts as the receiver saw them, when it kept count: the ledger's attempt number
        // also counts the claims handed back unsent (no slot or pace came in time), which
        // fence but send nothing.
        if let Some(most) = rx.most_requests() {
            f.max_attempts = most;
        }
        f
    }
}

/// What the template must say for the promises of RELIABILITY.md: the poller has no async
/// retries (a round is not run again by Lambda), and the dispatcher's poison guard gives up
/// before the queue's redrive policy takes a message away from it.
#[test]
fn the_template_turns_off_the_pollers_retries_and_gives_up_before_the_queue_does() {
    let t = Template::read(1.0);
    assert_eq!(t.poller_async_retries, 0);
    assert!(
        t.max_receives_env < t.max_receive_count,
        "MAX_RECEIVES {} must be below maxReceiveCount {}",
        t.max_receives_env,
        t.max_receive_count
    );
}

/// The backstops on scale-out: the dispatcher's event source runs at most MaximumConcurrency
/// invocations at once, below its reserved concurrency (above it, SQS would throttle and retry),
/// and the HTTP API throttles every route.
#[test]
fn the_template_bounds_the_dispatchers_scale_out_and_throttles_the_api() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml")).unwrap();
    let v = |path: &[&str]| sim::template::value(&text, path).unwrap_or_default();
    let dispatcher = ["Resources", "DispatcherFunction", "Properties"];
    assert_eq!(
        v(&[&dispatcher[..], &["ReservedConcurrentExecutions"]].concat()),
        "!Ref DispatcherReservedConcurrency"
    );
    assert_eq!(
        v(&[
            &dispatcher[..],
            &[
                "Events",
                "Dispatches",
                "Properties",
                "ScalingConfig",
                "MaximumConcurrency"
            ]
        ]
        .concat()),
        "!Ref DispatcherMaxConcurrency"
    );
    let default = |p: &str| -> u32 { v(&["Parameters", p, "Default"]).parse().unwrap() };
    assert!(default("DispatcherMaxConcurrency") <= default("DispatcherReservedConcurrency"));
    let api = ["Resources", "HttpApi", "Properties", "DefaultRouteSettings"];
    assert_eq!(
        v(&[&api[..], &["ThrottlingRateLimit"]].concat()),
        "!Ref ApiThrottleRate"
    );
    assert_eq!(
        v(&[&api[..], &["ThrottlingBurstLimit"]].concat()),
        "!Ref ApiThrottleBurst"
    );
    assert!(default("ApiThrottleRate") > 0 && default("ApiThrottleBurst") > 0);
}

/// A touchpoint authorized for `space-a`, `extra` over the defaults.
async fn create_touchpoint(admin: &Touchpoints, name: &str, extra: Value) -> String {
    let mut body = json!({
        "name": name, "kind": "notification", "url": "http://127.0.0.1:9/touch", "token": "sim-token",
        "batchSize": 50,
        "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "n"}],
        "templateParams": [{"identifier": "title", "displayName": "t", "type": "text", "required": true}]
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let tp = admin.create(1, &body).await.unwrap();
    admin
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

/// Sends a dispatch of `users` users to the dispatch queue, as the campaign system does.
async fn send_dispatch(clients: &Clients, queue: &str, id: &str, touchpoint: &str, users: usize) {
    let users: Vec<Value> = (0..users as i64)
        .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
        .collect();
    let body = json!({
        "dispatchId": id, "projectId": 1, "spaceId": "space-a", "campaignId": "cmp-sim",
        "touchpointId": touchpoint, "templateValues": {"title": "Hi {{name}}"}, "users": users
    });
    clients
        .sqs
        .send_message()
        .queue_url(queue)
        .message_body(body.to_string())
        .send()
        .await
        .unwrap();
}

/// A touchpoint's audience as dispatches of at most 2,500 users: an SQS message holds 256 KiB
/// (about 100 KiB each here).
fn audience(prefix: &str, users: usize) -> Vec<(String, usize)> {
    (0..users.div_ceil(2500))
        .map(|i| (format!("{prefix}-{i}"), 2500.min(users - i * 2500)))
        .collect()
}

/// A Tracked receiver that answers 503 until `up_at`, then accepts every user.
async fn receiver_down_until(up_at: Instant) -> (Receiver, Tracked) {
    receiver_failing_until(up_at, 503).await
}

/// A Tracked receiver that answers `status` until `up_at`, then accepts every user.
async fn receiver_failing_until(up_at: Instant, status: u16) -> (Receiver, Tracked) {
    let tracked = Tracked::default();
    let t = tracked.clone();
    let rx = Receiver::start(move |seen, _| {
        if Instant::now() < up_at {
            t.answer(seen, Reply::Json(status, json!({})), true)
        } else {
            t.answer(seen, Reply::all_ok(seen), false)
        }
    })
    .await;
    (rx, tracked)
}

/// A Tracked receiver that answers every request after `slow`.
async fn slow_receiver(slow: Duration) -> (Receiver, Tracked) {
    let tracked = Tracked::default();
    let t = tracked.clone();
    let rx = Receiver::start(move |seen, _| {
        t.answer(
            seen,
            Reply::After(slow, Box::new(Reply::all_ok(seen))),
            false,
        )
    })
    .await;
    (rx, tracked)
}

/// A receiver's answers, tracked: how often each orderNo was answered with a transient failure,
/// so that a request beyond those (and the first) counts as the batch sent twice.
#[derive(Clone, Default)]
struct Tracked {
    transient: Arc<Mutex<HashMap<String, usize>>>,
    requests: Arc<Mutex<HashMap<String, usize>>>,
}

impl Tracked {
    fn answer(&self, seen: &Seen, reply: Reply, transient: bool) -> Reply {
        *self
            .requests
            .lock()
            .unwrap()
            .entry(seen.order_no.clone())
            .or_default() += 1;
        if transient {
            *self
                .transient
                .lock()
                .unwrap()
                .entry(seen.order_no.clone())
                .or_default() += 1;
        }
        reply
    }

    /// The most requests one batch (orderNo) got; `None` when this receiver kept no count.
    fn most_requests(&self) -> Option<u32> {
        let most = self.requests.lock().unwrap().values().copied().max()?;
        Some(u32::try_from(most).unwrap_or(u32::MAX))
    }

    fn sent_twice(&self) -> usize {
        let transient = self.transient.lock().unwrap();
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(order, n)| **n > transient.get(*order).copied().unwrap_or(0) + 1)
            .count()
    }
}

fn total(dispatches: &[(String, usize)]) -> usize {
    dispatches.iter().map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_an_outage_of_40_percent_of_the_retry_horizon_fails_no_one() {
    let _heavy = HEAVY.acquire().await.unwrap();
    let w = World::new(60.0).await;
    let horizon = w.template.scaled(RetryPolicy::default().horizon());
    let (_rx, tracked) = receiver_down_until(Instant::now() + horizon.mul_f64(0.4)).await;
    let url = _rx.url();
    let tp = w
        .touchpoint("outage", json!({"url": url, "batchSize": 50}))
        .await;
    let dispatches: Vec<(String, usize)> = (0..5).map(|i| (format!("outage-{i}"), 1_000)).collect();
    for (id, n) in &dispatches {
        w.send(id, &tp, *n).await;
    }
    let esm = w.esm(3, None);
    let elapsed = sim::until_final(&*w.ledger, &dispatches, horizon * 2).await;
    let stats = esm.stop().await;
    let f = w.figures(&dispatches, &tracked, &stats).await;
    f.print(
        "receiver down 40% of the retry horizon, 5 dispatches × 20 batches, jitter on",
        elapsed,
        w.template.factor,
    );
    assert_eq!(f.succeeded, total(&dispatches), "{f:?}");
    assert!(f.failed_by_reason.is_empty(), "{f:?}");
    assert!(f.max_attempts <= 6, "{f:?}");
    assert_eq!(f.dead_lettered, 0);
    assert_eq!((f.one_event, f.repeated_events), (total(&dispatches), 0));
    assert_eq!(f.killed, 0);
    assert!(f.max_receives <= 2, "{f:?}");
    assert_eq!(f.sent_twice, 0, "{f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_an_outage_longer_than_the_horizon_fails_users_only_when_their_attempts_run_out() {
    let w = World::new(60.0).await;
    let horizon = w.template.scaled(RetryPolicy::default().horizon());
    let tracked = Tracked::default();
    let t = tracked.clone();
    let rx =
        Receiver::start(move |seen, _| t.answer(seen, Reply::Json(503, json!({})), true)).await;
    let tp = w
        .touchpoint("down", json!({"url": rx.url(), "batchSize": 10}))
        .await;
    let dispatches = vec![("down-0".to_owned(), 50)];
    w.send("down-0", &tp, 50).await;
    let esm = w.esm(2, None);
    let elapsed = sim::until_final(&*w.ledger, &dispatches, horizon * 3).await;
    let stats = esm.stop().await;
    let f = w.figures(&dispatches, &tracked, &stats).await;
    f.print(
        "receiver down longer than the retry horizon, 5 batches",
        elapsed,
        w.template.factor,
    );
    assert_eq!(
        f.failed_by_reason.get("retries exhausted after 6 attempts"),
        Some(&50),
        "{f:?}"
    );
    assert_eq!(f.failed_by_reason.len(), 1, "no other reason: {f:?}");
    assert_eq!(f.max_attempts, 6);
    // At about the schedule's end: the waits with their jitter, rounded up to whole seconds
    // where SQS delays.
    assert!(
        elapsed >= horizon.mul_f64(0.8) && elapsed <= horizon.mul_f64(1.6),
        "{elapsed:?} for a horizon of {horizon:?}"
    );
    assert_eq!(f.dead_lettered, 0);
    assert_eq!(f.killed, 0, "{f:?}");
    assert!(f.max_receives <= 2, "{f:?}");
    assert_eq!(
        rx.requests(),
        30,
        "six attempts of each of the five batches"
    );
    assert_eq!((f.one_event, f.repeated_events), (50, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_a_slow_receiver_at_batch_size_1_is_served_across_invocations_without_a_kill_or_a_resend()
 {
    let _heavy = HEAVY.acquire().await.unwrap();
    let w = World::new(20.0).await;
    // 1,000 users: moto settles about 15 batches a second (one Python process), and at batch
    // size 1 every user is a batch. The next scenario runs 10,000 against the embedded store.
    let users = 1000;
    // A third of the function's timeout per request.
    let slow = w.template.scaled(w.template.dispatcher_timeout) / 3;
    let (rx, tracked) = slow_receiver(slow).await;
    // Its request timeout must let such a receiver answer: 45 s.
    let tp = w
        .touchpoint(
            "slow",
            json!({"url": rx.url(), "batchSize": 1, "requestTimeoutSeconds": 45, "maxConcurrency": 64}),
        )
        .await;
    let dispatches = audience("slow", users);
    for (id, n) in &dispatches {
        w.send(id, &tp, *n).await;
    }
    // Recording 64 batches at once takes moto about a second (it serves one request at a
    // time); a deployment's 5 s margin covers DynamoDB's concurrent writes.
    let esm = w.esm_with(2, None, Duration::from_secs(3));
    let elapsed = sim::until_final(&*w.ledger, &dispatches, Duration::from_secs(600)).await;
    let stats = esm.stop().await;
    let f = w.figures(&dispatches, &tracked, &stats).await;
    f.print(
        &format!("slow receiver ({slow:?} a request), batch size 1, {users} users"),
        elapsed,
        w.template.factor,
    );
    assert_slow_receiver_served(&f, users, dispatches.len());
}

fn assert_slow_receiver_served(f: &Figures, users: usize, dispatches: usize) {
    assert_eq!(f.succeeded, users, "{f:?}");
    assert_eq!(f.killed, 0, "no invocation reached its timeout: {f:?}");
    assert_eq!(f.sent_twice, 0, "{f:?}");
    assert!(
        f.invocations as usize > dispatches,
        "a dispatch needs more than one invocation: {f:?}"
    );
    assert!(f.max_receives <= 2, "{f:?}");
    assert_eq!((f.one_event, f.repeated_events), (users, 0), "{f:?}");
}

/// The same at the size, 10,000 users at batch size 1, with the embedded store behind
/// the dispatcher Lambda in place of DynamoDB (the claim, settle and progress decisions are the
/// domain's either way: `touchpoint::ledger`), so that the time goes to the receiver and the
/// queue, not to moto's Python. The queue, the mapping and the deadlines are as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_ten_thousand_users_at_batch_size_1_behind_a_slow_receiver_embedded_store() {
    let moto = sim::Moto::start().await;
    let clients = Clients::with_endpoint(&moto.endpoint).await;
    let names = touchpoint_aws::provision::provision(&clients).await;
    let template = Template::read(30.0);
    let dlq = sim::configure_queues(&clients, &names, &template).await;
    let queue = names.dispatch_queue_url.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = touchpoint_embedded::SqliteStore::open(dir.path()).unwrap();
    let embedded = |settings: Settings| {
        Services::embedded(
            &store,
            Outbound::new(true).unwrap(),
            Arc::new(SystemClock),
            settings,
        )
    };
    let admin = embedded(plain_http()).touchpoints;
    let users = 10_000;
    let slow = template.scaled(template.dispatcher_timeout) / 3;
    let (rx, tracked) = slow_receiver(slow).await;
    // Its request timeout lets such a receiver answer with room to spare on a loaded machine:
    // 60 s (2 s at ×30) against 40 s (1.33 s). At 45 s (167 ms to spare), one run on a test
    // machine running eight scenarios at once sent 16 batches twice, two attempts each, as
    // requests timing out at the client do.
    let tp = create_touchpoint(
        &admin,
        "slow",
        json!({"url": rx.url(), "batchSize": 1, "requestTimeoutSeconds": 60, "maxConcurrency": 64}),
    )
    .await;
    let dispatches = audience("slow10k", users);
    for (id, n) in &dispatches {
        send_dispatch(&clients, &queue, id, &tp, *n).await;
    }
    let lambdas = (0..2)
        .map(|_| {
            let dispatcher =
                embedded(plain_http().with_dispatcher(config(&template, MARGIN))).dispatcher;
            Arc::new(DispatcherLambda::from_parts(
                dispatcher,
                clients.sqs.clone(),
                queue.clone(),
                template.max_receives_env,
            ))
        })
        .collect();
    let esm = Esm::start(&clients, &queue, &template, lambdas, None);
    let elapsed = sim::until_final(&store, &dispatches, Duration::from_secs(900)).await;
    let stats = esm.stop().await;
    let mut f = Figures::gather(&clients, None, &store, &dispatches, &stats, &dlq).await;
    f.sent_twice = tracked.sent_twice();
    // The embedded store's results channel: results.jsonl, one line per settlement.
    let path = dir.path().join("results.jsonl");
    let results = touchpoint_embedded::ResultsFile::new(store.clone(), path.clone());
    while results.publish_pending().await.unwrap() > 0 {}
    let mut per_user: HashMap<(String, i64), usize> = HashMap::new();
    for e in support::results_events(&path) {
        let key = (
            e["dispatchId"].as_str().unwrap_or_default().to_owned(),
            e["gid"].as_i64().unwrap_or(-1),
        );
        *per_user.entry(key).or_default() += 1;
    }
    f.one_event = per_user.values().filter(|n| **n == 1).count();
    f.repeated_events = per_user.values().filter(|n| **n > 1).count();
    f.print(
        &format!("slow receiver ({slow:?} a request), batch size 1, {users} users, embedded store"),
        elapsed,
        template.factor,
    );
    assert_slow_receiver_served(&f, users, dispatches.len());
    drop(moto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_a_hanging_receiver_costs_the_other_records_of_its_batch_nothing() {
    let w = World::new(20.0).await;
    let ok = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let hang = Receiver::start(|seen, _| {
        Reply::After(Duration::from_secs(30), Box::new(Reply::all_ok(seen)))
    })
    .await;
    let a = w
        .touchpoint("healthy-a", json!({"url": ok.url(), "batchSize": 10}))
        .await;
    let b = w
        .touchpoint("healthy-b", json!({"url": ok.url(), "batchSize": 10}))
        .await;
    let c = w
        .touchpoint("hanging", json!({"url": hang.url(), "batchSize": 10}))
        .await;
    let mut healthy = Vec::new();
    for i in 0..10 {
        let tp = [&a, &b, &c][i % 3];
        let id = format!("mixed-{i}");
        w.send(&id, tp, 30).await;
        if i % 3 != 2 {
            healthy.push((id, 30));
        }
    }
    // One instance: the ten messages arrive as one SQS batch.
    let esm = w.esm(1, None);
    let elapsed = sim::until_final(&*w.ledger, &healthy, Duration::from_secs(60)).await;
    let stats = esm.stop().await;
    let deliveries = stats.deliveries.lock().unwrap().clone();
    let f = w.figures(&healthy, &Tracked::default(), &stats).await;
    f.print(
        "10 dispatches for 3 touchpoints in one SQS batch, one receiver hanging",
        elapsed,
        w.template.factor,
    );
    assert_eq!(
        stats.max_records.load(Ordering::SeqCst),
        10,
        "one SQS batch of ten"
    );
    assert_eq!(f.succeeded, total(&healthy));
    for (id, _) in &healthy {
        assert_eq!(
            deliveries.get(id),
            Some(&1),
            "{id} was delivered once: {deliveries:?}"
        );
    }
    assert!(
        elapsed < w.template.scaled(w.template.dispatcher_timeout) * 2,
        "the healthy dispatches finished in the first invocation: {elapsed:?}"
    );
}

/// A touchpoint store whose first read of one touchpoint panics (a bug met by one record).
struct PanicOnce {
    inner: Arc<DynamoTouchpoints>,
    id: String,
    fired: AtomicBool,
}

#[async_trait]
impl TouchpointStore for PanicOnce {
    async fn insert(&self, tp: &Touchpoint, a: &AuditEntry) -> Result<(), StoreError> {
        self.inner.insert(tp, a).await
    }
    async fn get(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<Option<Touchpoint>, StoreError> {
        if **id == *self.id && !self.fired.swap(true, Ordering::SeqCst) {
            panic!("a bug met by one record");
        }
        self.inner.get(project, id).await
    }
    async fn list(
        &self,
        project: ProjectId,
        f: &ListFilter,
    ) -> Result<Vec<Touchpoint>, StoreError> {
        self.inner.list(project, f).await
    }
    async fn list_for_space(&self, p: ProjectId, s: &str) -> Result<Vec<Touchpoint>, StoreError> {
        self.inner.list_for_space(p, s).await
    }
    async fn update(
        &self,
        n: &Touchpoint,
        v: u64,
        g: UpdateGuard,
        a: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.inner.update(n, v, g, a).await
    }
    async fn delete(
        &self,
        p: ProjectId,
        id: &TouchpointId,
        v: u64,
        a: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.inner.delete(p, id, v, a).await
    }
    async fn campaigns(
        &self,
        p: ProjectId,
        id: &TouchpointId,
    ) -> Result<Vec<CampaignRef>, StoreError> {
        self.inner.campaigns(p, id).await
    }
    async fn put_campaign(
        &self,
        p: ProjectId,
        id: &TouchpointId,
        c: &CampaignRef,
        a: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.inner.put_campaign(p, id, c, a).await
    }
    async fn delete_campaign(
        &self,
        p: ProjectId,
        id: &TouchpointId,
        c: &str,
        a: &AuditEntry,
    ) -> Result<bool, StoreError> {
        self.inner.delete_campaign(p, id, c, a).await
    }
    async fn record_audit(&self, a: &AuditEntry) -> Result<(), StoreError> {
        self.inner.record_audit(a).await
    }
    async fn notification_config(
        &self,
        p: ProjectId,
    ) -> Result<Option<touchpoint::notify::NotificationConfig>, StoreError> {
        self.inner.notification_config(p).await
    }
    async fn put_notification_config(
        &self,
        p: ProjectId,
        c: Option<&touchpoint::notify::NotificationConfig>,
        a: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.inner.put_notification_config(p, c, a).await
    }
    async fn audit_log(
        &self,
        p: ProjectId,
        f: &AuditFilter,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit_log(p, f).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_a_record_whose_handling_panics_is_redelivered_and_its_users_get_outcomes() {
    // ×20, not ×60: a ×60 invocation lasts 2 s and claims for less than one, and taking the
    // receiver's slots costs real round trips to moto; on a loaded machine the calm record then
    // needs a second invocation, which is not what this scenario is about.
    let w = World::new(20.0).await;
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let bad = w
        .touchpoint("panics", json!({"url": rx.url(), "batchSize": 10}))
        .await;
    let good = w
        .touchpoint("fine", json!({"url": rx.url(), "batchSize": 10}))
        .await;
    let store = Arc::new(PanicOnce {
        inner: w.touchpoints.clone(),
        id: bad.clone(),
        fired: AtomicBool::new(false),
    });
    let dispatcher = Services::new(
        Ports {
            touchpoints: store,
            ..w.ports()
        },
        plain_http().with_dispatcher(config(&w.template, MARGIN)),
    )
    .dispatcher;
    let lambda = Arc::new(DispatcherLambda::from_parts(
        dispatcher,
        w.clients.sqs.clone(),
        w.queue(),
        w.template.max_receives_env,
    ));
    w.send("panic-0", &bad, 30).await;
    w.send("calm-0", &good, 30).await;
    let dispatches = vec![("panic-0".to_owned(), 30), ("calm-0".to_owned(), 30)];
    let esm = Esm::start(&w.clients, &w.queue(), &w.template, vec![lambda], None);
    let elapsed = sim::until_final(
        &*w.ledger,
        &dispatches,
        w.template.scaled(w.template.visibility_timeout) * 3,
    )
    .await;
    let stats = esm.stop().await;
    let deliveries = stats.deliveries.lock().unwrap().clone();
    let f = w.figures(&dispatches, &Tracked::default(), &stats).await;
    f.print(
        "a record whose handling panics, next to a calm one",
        elapsed,
        w.template.factor,
    );
    assert_eq!(f.succeeded, 60, "{f:?}");
    assert_eq!(
        deliveries.get("panic-0"),
        Some(&2),
        "redelivered once: {deliveries:?}"
    );
    assert_eq!(deliveries.get("calm-0"), Some(&1), "{deliveries:?}");
    assert_eq!(f.max_receives, 2);
    assert_eq!((f.one_event, f.repeated_events), (60, 0));
}

/// When a batch was accepted, and its users.
type Accepted = (Instant, Vec<i64>);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_a_five_minute_receipt_timeout_is_polled_and_a_failed_schedule_heals() {
    let w = World::new(60.0).await;
    let minute = w.template.scaled(Duration::from_secs(60));
    let accepted: Arc<Mutex<HashMap<String, Accepted>>> = Arc::default();
    let polls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let rx = {
        let accepted = Arc::clone(&accepted);
        let polls = Arc::clone(&polls);
        Receiver::start(move |seen, _| match seen.path.as_str() {
            "/touch" => {
                accepted
                    .lock()
                    .unwrap()
                    .insert(seen.order_no.clone(), (Instant::now(), seen.gids.clone()));
                Reply::Json(
                    200,
                    json!({"code": 0, "message": "", "orderNo": seen.order_no}),
                )
            }
            _ => {
                *polls
                    .lock()
                    .unwrap()
                    .entry(seen.order_no.clone())
                    .or_default() += 1;
                let (at, gids) = accepted.lock().unwrap()[&seen.order_no].clone();
                // The statuses arrive just before the 5-minute deadline.
                if at.elapsed() >= minute * 5 - minute / 6 {
                    Reply::statuses_for(&seen.order_no, &gids, |_| ("TOU_SUCC", ""))
                } else {
                    Reply::Json(200, json!({"code": 0, "sendStatusList": []}))
                }
            }
        })
        .await
    };
    let tp = w
        .touchpoint(
            "async",
            json!({"url": rx.url(), "batchSize": 10,
                   "receipt": {"mode": "async", "receiptUrl": rx.receipt_url(), "timeoutMinutes": 5}}),
        )
        .await;
    // The schedule's creation failed (it is not there): the dispatcher makes it.
    let group = w.names.schedule_group.clone().unwrap();
    w.clients
        .scheduler
        .delete_schedule()
        .group_name(&group)
        .name(touchpoint_aws::schedule::schedule_name(
            1,
            &tp.as_str().into(),
        ))
        .send()
        .await
        .unwrap();
    let poller = Arc::new(PollerLambda {
        poller: Services::new(
            w.ports(),
            Settings {
                poller: PollerConfig {
                    interval: w
                        .template
                        .scaled(touchpoint_aws::schedule::SCHEDULE_INTERVAL),
                    lease: w.template.scaled(Duration::from_secs(60)),
                    request_timeout: w.template.scaled(Duration::from_secs(15)),
                    deadline_margin: MARGIN,
                    time_scale: w.template.factor,
                    ..PollerConfig::default()
                },
                ..plain_http()
            },
        )
        .poller,
    });
    // Every firing is delivered twice at once (Scheduler invokes at least once).
    let scheduler = Scheduler::start(&w.clients, group, poller, &w.template, 1);
    w.send("async-0", &tp, 40).await;
    let dispatches = vec![("async-0".to_owned(), 40)];
    let esm = w.esm(1, None);
    let elapsed = sim::until_final(&*w.ledger, &dispatches, minute * 15).await;
    let stats = esm.stop().await;
    let firings = scheduler.stop().await;
    let f = w.figures(&dispatches, &Tracked::default(), &stats).await;
    f.print(
        "async receipts, timeoutMinutes 5, schedule creation failed once",
        elapsed,
        w.template.factor,
    );
    let polls = polls.lock().unwrap().clone();
    eprintln!("scenario async: poller invocations {firings}; receipt polls per batch {polls:?}");
    assert_eq!(
        f.succeeded, 40,
        "the statuses that came just before the deadline: {f:?}"
    );
    assert_eq!(polls.len(), 4, "every batch was polled");
    assert!(
        polls.values().all(|n| *n == 1),
        "each batch polled once, at its deadline, though every firing came twice: {polls:?}"
    );
    assert_eq!((f.one_event, f.repeated_events), (40, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_ten_aborts_at_random_points_lose_no_one_and_resend_only_what_was_in_flight() {
    let w = World::new(60.0).await;
    let (rx, tracked) = slow_receiver(Duration::from_millis(80)).await;
    let tp = w
        .touchpoint("aborts", json!({"url": rx.url(), "batchSize": 10}))
        .await;
    let dispatches: Vec<(String, usize)> = (0..4).map(|i| (format!("abort-{i}"), 800)).collect();
    for (id, n) in &dispatches {
        w.send(id, &tp, *n).await;
    }
    let timeout = w.template.scaled(w.template.dispatcher_timeout);
    let seed = Arc::new(AtomicUsize::new((SystemClock.now_ms() as usize) | 1));
    let abort: sim::Abort = Arc::new(move |stats: &sim::EsmStats| {
        // Every other invocation dies at a random point (a xorshift step picks it) until ten
        // did: crashes among normal deliveries, never ten in a row (that is the poison guard's
        // case, tested in tests/dispatch.rs).
        let mut x = seed.load(Ordering::SeqCst);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        seed.store(x, Ordering::SeqCst);
        let turn = stats.invocations.load(Ordering::SeqCst);
        (stats.aborted.load(Ordering::SeqCst) < 10 && turn % 2 == 1)
            .then(|| timeout.mul_f64(0.02 + 0.6 * (x % 1000) as f64 / 1000.0))
    });
    let esm = w.esm(2, Some(abort));
    let elapsed = sim::until_final(&*w.ledger, &dispatches, Duration::from_secs(240)).await;
    let stats = esm.stop().await;
    let aborted = stats.aborted.load(Ordering::SeqCst) as usize;
    assert!(aborted >= 10, "ten invocations died: {aborted}");
    let f = w.figures(&dispatches, &tracked, &stats).await;
    f.print(
        &format!("{aborted} aborts of an invocation at random points"),
        elapsed,
        w.template.factor,
    );
    let users = total(&dispatches);
    assert_eq!(f.succeeded, users, "users lost: {}", users - f.succeeded);
    assert_eq!(
        (f.one_event, f.repeated_events),
        (users, 0),
        "one outcome each"
    );
    // Only batches in flight at an abort are sent again: at most the touchpoint's concurrency
    // (4 in flight per instance) per abort.
    assert!(
        f.sent_twice <= 4 * aborted,
        "{} re-sent for {aborted} aborts",
        f.sent_twice
    );
    assert_eq!(f.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_transactions_cancelled_by_conflicts_and_lost_answers_resend_nothing_and_count_exactly()
 {
    let _heavy = HEAVY.acquire().await.unwrap();
    let w = World::new(60.0).await;
    let (rx, tracked) = slow_receiver(Duration::from_millis(20)).await;
    let tp = w
        .touchpoint("conflicts", json!({"url": rx.url(), "batchSize": 10}))
        .await;
    let dispatches: Vec<(String, usize)> = (0..6).map(|i| (format!("conflict-{i}"), 400)).collect();
    for (id, n) in &dispatches {
        w.send(id, &tp, *n).await;
    }
    // One transaction in five cancelled; one outcome record in seven applied with its answer
    // lost, one in eleven refused because a transaction on its item was under way. Four
    // instances side by side.
    let faults = sim::Faults::refusing_records(5, 7, 11);
    let esm = w.esm_on(&faults.clients(&w.clients), 4);
    let elapsed = sim::until_final(&*w.ledger, &dispatches, Duration::from_secs(240)).await;
    let stats = esm.stop().await;
    let f = w.figures(&dispatches, &tracked, &stats).await;
    let (conflicts, lost, refused) = (
        faults.conflicts.load(Ordering::SeqCst),
        faults.lost_answers.load(Ordering::SeqCst),
        faults.refused_records.load(Ordering::SeqCst),
    );
    f.print(
        &format!(
            "{conflicts} transactions cancelled by a conflict, {lost} records' answers lost, \
             {refused} records refused by a conflict"
        ),
        elapsed,
        w.template.factor,
    );
    assert!(
        conflicts >= 5 && lost >= 5 && refused >= 5,
        "the faults happened: {conflicts} {lost} {refused}"
    );
    let users = total(&dispatches);
    assert_eq!(f.succeeded, users, "{f:?}");
    assert_eq!(f.sent_twice, 0, "no batch sent twice: {f:?}");
    assert_eq!((f.one_event, f.repeated_events), (users, 0), "{f:?}");
    for (scope, key) in [
        (touchpoint::delivery::StatsScope::Touchpoint, tp.as_str()),
        (touchpoint::delivery::StatsScope::Campaign, "cmp-sim"),
    ] {
        let c = touchpoint::delivery::DeliveryReports::stats(&*w.ledger, 1, scope, key)
            .await
            .unwrap();
        assert_eq!(
            (c.sent, c.succeeded, c.failed, c.pending),
            (users as u64, users as u64, 0, 0),
            "{scope:?} counters exact"
        );
    }
    assert_eq!(f.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_distinct_long_reasons_and_long_ids_are_published_in_full_with_items_under_the_limits()
 {
    let _heavy = HEAVY.acquire().await.unwrap();
    // Little compression: this scenario is about sizes, and an answer of 750 KB must not
    // outlast a compressed request timeout on a loaded machine (a timeout sends it again).
    let w = World::new(5.0).await;
    let tracked = Tracked::default();
    let t = tracked.clone();
    // Every user failed with its own 500-character reason (3 bytes a character).
    let rx = Receiver::start(move |seen, _| {
        let list: Vec<Value> = seen
            .gids
            .iter()
            .map(|g| json!({"gid": g, "status": "TOU_FAIL", "errorMsg": format!("{g:06}{}", "失".repeat(494))}))
            .collect();
        t.answer(
            seen,
            Reply::Json(200, json!({"code": 0, "message": "ok", "sendStatusList": list})),
            false,
        )
    })
    .await;
    let tp = w
        .touchpoint("reasons", json!({"url": rx.url(), "batchSize": 500}))
        .await;
    // Ids of 256 characters, the most a dispatch may carry.
    let long = |c: char| c.to_string().repeat(touchpoint::dispatch::MAX_ID_CHARS);
    let (dispatch_id, campaign) = (long('d'), long('c'));
    let users: Vec<Value> = (0..1000)
        .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
        .collect();
    let body = json!({
        "dispatchId": dispatch_id, "projectId": 1, "spaceId": "space-a", "campaignId": campaign,
        "strategyId": long('s'), "touchpointId": tp, "templateValues": {"title": "Hi {{name}}"},
        "users": users
    });
    w.clients
        .sqs
        .send_message()
        .queue_url(w.queue())
        .message_body(body.to_string())
        .send()
        .await
        .unwrap();
    let esm = w.esm(2, None);
    let started = Instant::now();
    loop {
        let c = touchpoint::delivery::DeliveryReports::stats(
            &*w.ledger,
            1,
            touchpoint::delivery::StatsScope::Campaign,
            &campaign,
        )
        .await
        .unwrap();
        if c.failed >= 1000 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{c:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let elapsed = started.elapsed();
    let stats = esm.stop().await;
    let dispatches = vec![(dispatch_id, 1000)];
    let mut f = w.figures(&dispatches, &tracked, &stats).await;
    // Every item of the delivery table, measured as DynamoDB counts its size.
    let mut largest = 0;
    let mut start = None;
    loop {
        let page = w
            .clients
            .dynamodb
            .scan()
            .table_name(&w.names.delivery_table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        for item in page.items() {
            let size: usize = item.iter().map(|(k, v)| k.len() + attribute_bytes(v)).sum();
            largest = largest.max(size);
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    let reasons: Vec<String> = sim::batches(&*w.ledger, 1, &dispatches[0].0)
        .await
        .iter()
        .flat_map(|b| b.results.iter().map(|r| r.status.reason().to_owned()))
        .collect();
    let longest = reasons.iter().map(|r| r.chars().count()).max().unwrap_or(0);
    let failed: usize = f.failed_by_reason.values().sum();
    let distinct = f.failed_by_reason.len();
    f.failed_by_reason = HashMap::from([(format!("{distinct} distinct reasons"), failed)]);
    f.print(
        &format!(
            "every user failed with its own 500-character reason, ids of 256 characters: largest item {largest} bytes, longest reason kept {longest} characters"
        ),
        elapsed,
        w.template.factor,
    );
    assert_eq!((failed, distinct), (1000, 1000), "{f:?}");
    assert_eq!(
        (f.one_event, f.repeated_events),
        (1000, 0),
        "published in full: {f:?}"
    );
    assert_eq!(f.sent_twice, 0, "{f:?}");
    assert!(largest < 200_000, "an item of {largest} bytes");
    assert_eq!(longest, touchpoint::delivery::REASON_MAX_CHARS + 1);
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    );
}

/// Limits across instances: 8 dispatcher invocations side by side (each its own process, as
/// Lambda instances are) and an admin instance's test sends share each touchpoint's slots and
/// pace through DynamoDB. 50 dispatches of 20 users (batches of 10) over two touchpoints with
/// `maxConcurrency` 4 and `maxRequestsPerSecond` 20: a slow receiver (the 4 in flight bind) and
/// a fast one (the 20 a second bind).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_eight_instances_hold_a_touchpoints_requests_in_flight_and_per_second() {
    let w = World::new(10.0).await;
    let slow = Duration::from_millis(400);
    let (rx_slow, tracked_slow) = slow_receiver(slow).await;
    let fast = Duration::from_millis(20);
    let (rx_fast, tracked_fast) = slow_receiver(fast).await;
    let limits = json!({"maxConcurrency": 4, "maxRequestsPerSecond": 20, "batchSize": 10});
    let mut slow_body = limits.clone();
    slow_body["url"] = json!(rx_slow.url());
    let mut fast_body = limits.clone();
    fast_body["url"] = json!(rx_fast.url());
    let tp_slow = w.touchpoint("slow", slow_body).await;
    let tp_fast = w.touchpoint("fast", fast_body).await;
    let mut dispatches = Vec::new();
    for i in 0..25 {
        for (name, tp) in [("slow", &tp_slow), ("fast", &tp_fast)] {
            let id = format!("{name}-{i}");
            w.send(&id, tp, 20).await;
            dispatches.push((id, 20));
        }
    }
    let esm = w.esm(8, None);
    // An admin instance test-sends to the fast touchpoint meanwhile: its requests count too.
    // They wait for a slot up to their request timeout, here 30 s: the instances keep their
    // slots while they have batches to send (RELIABILITY.md: not fair yet).
    let admin = Services::aws(
        &w.clients,
        &w.names,
        Outbound::new(true).unwrap(),
        plain_http().with_dispatcher(DispatcherConfig {
            request_timeout: Duration::from_secs(30),
            ..config(&w.template, MARGIN)
        }),
    )
    .unwrap();
    let tp = w
        .touchpoints
        .get(1, &tp_fast.as_str().into())
        .await
        .unwrap()
        .unwrap();
    let mut test_sends = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (send, tp) = (admin.test_send.clone(), tp.clone());
        test_sends.spawn(async move {
            let user = touchpoint::protocol::UserData {
                gid: 100_000 + i,
                dynamic_data: Default::default(),
                tem_data: Default::default(),
            };
            send.send(&tp, vec![user], format!("test-{i}")).await
        });
    }
    let started = Instant::now();
    let elapsed = sim::until_final(&*w.ledger, &dispatches, Duration::from_secs(300)).await;
    let sent = test_sends.join_all().await;
    let stats = esm.stop().await;
    let f = w.figures(&dispatches, &tracked_fast, &stats).await;
    let (slow_in_flight, slow_per_second) = in_flight_and_per_second(&rx_slow.seen(), slow);
    let (fast_in_flight, fast_per_second) = in_flight_and_per_second(&rx_fast.seen(), fast);
    let tested = sent.iter().filter(|r| r.ok).count();
    eprintln!(
        "scenario limits across 8 instances (maxConcurrency 4, maxRequestsPerSecond 20), 25 dispatches × 2 batches per touchpoint \
         and 10 test sends: {:.1?}; slow receiver: at most {slow_in_flight} in flight, {slow_per_second} in a second; \
         fast receiver: at most {fast_in_flight} in flight, {fast_per_second} in a second, {} requests; \
         test sends answered {tested}; invocations {}",
        started.elapsed(),
        rx_fast.seen().len(),
        f.invocations,
    );
    f.print("limits across 8 instances", elapsed, w.template.factor);
    assert_eq!(f.succeeded, 1000, "{f:?}");
    assert_eq!((f.sent_twice, tracked_slow.sent_twice()), (0, 0), "{f:?}");
    let refused: Vec<_> = sent.iter().filter_map(|r| r.error.clone()).collect();
    assert_eq!(
        tested, 10,
        "every test send went out within the limits: {refused:?}"
    );
    assert!(slow_in_flight <= 4, "{slow_in_flight} in flight");
    assert!(
        slow_in_flight >= 3,
        "the instances use the slots between them: {slow_in_flight}"
    );
    assert!(fast_in_flight <= 4, "{fast_in_flight} in flight");
    // The receiver stamps a request when its handler runs: on a loaded machine one may be
    // stamped late, and the next on time.
    assert!(fast_per_second <= 22, "{fast_per_second} in a second");
    assert!(slow_per_second <= 22, "{slow_per_second} in a second");
}

/// Issue 16, item 7, in the simulation: the same 200 users at batch size 1 as two dispatches,
/// then as 200 one-user dispatches (a triggered campaign's), through eight instances. moto
/// answers every AWS request in turn, so the two throughputs compare the AWS requests each way
/// costs; both are printed with their ratio (BENCHMARKS.md). Everyone succeeds, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_one_user_dispatches_flow_through_eight_instances_without_a_resend() {
    // It keeps its moto server busy all the time (its figure is that server's throughput): one
    // heavy scenario at a time, or the others' invocations overrun their compressed deadlines.
    let _heavy = HEAVY.acquire().await.unwrap();
    const USERS: usize = 200;
    let w = World::new(10.0).await;
    let (rx, tracked) = slow_receiver(Duration::ZERO).await;
    let body = json!({"maxConcurrency": 64, "batchSize": 1, "url": rx.url()});
    let tp_large = w.touchpoint("large", body.clone()).await;
    let tp_small = w.touchpoint("small", body).await;
    let large: Vec<(String, usize)> = (0..2).map(|i| (format!("large-{i}"), USERS / 2)).collect();
    for (id, n) in &large {
        w.send(id, &tp_large, *n).await;
    }
    // MOTO_PROFILE=<file>: what each phase asked of the AWS peer.
    let start = sim::MotoLoad::now(&w._moto).await;
    let esm = w.esm(8, None);
    let in_large = sim::until_final(&*w.ledger, &large, Duration::from_secs(600)).await;
    let _ = esm.stop().await;
    let after_large = sim::MotoLoad::now(&w._moto).await;
    let small: Vec<(String, usize)> = (0..USERS).map(|i| (format!("small-{i}"), 1)).collect();
    for (id, n) in &small {
        w.send(id, &tp_small, *n).await;
    }
    let all: Vec<(String, usize)> = large.iter().chain(&small).cloned().collect();
    let before_small = sim::MotoLoad::now(&w._moto).await;
    let esm = w.esm(8, None);
    let in_small = sim::until_final(&*w.ledger, &all, Duration::from_secs(600)).await;
    let stats = esm.stop().await;
    let after = sim::MotoLoad::now(&w._moto).await;
    if let (Some(a), Some(b), Some(c), Some(d)) = (&start, &after_large, &before_small, &after) {
        b.print_since(a, "two dispatches, per user", USERS);
        d.print_since(c, "one-user dispatches, per dispatch", USERS);
    }
    let f = w.figures(&all, &tracked, &stats).await;
    let rate = |t: Duration| USERS as f64 / t.as_secs_f64();
    eprintln!(
        "scenario one-user dispatches, 8 instances, batch size 1, {USERS} users: two dispatches \
         {:.1} users/s ({in_large:.1?}), one-user dispatches {:.1} users/s ({in_small:.1?}), \
         ratio {:.2}",
        rate(in_large),
        rate(in_small),
        rate(in_small) / rate(in_large)
    );
    assert_eq!(f.succeeded, 2 * USERS, "{f:?}");
    assert_eq!(f.sent_twice, 0, "{f:?}");
}

/// The same instances against a receiver that, after 60 requests, answers 429 (with
/// `Retry-After: 1`) to every fifth: a cut or a pause seen by one instance slows every
/// instance, and nobody fails. In real time (the back-pressure's steps and the `Retry-After`
/// are not compressed), with a short retry schedule so that refused batches come back soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_eight_instances_slow_down_together_for_a_receiver_answering_429_to_a_fifth() {
    let w = World::new(1.0).await;
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let tracked = Tracked::default();
    let t = tracked.clone();
    let refused: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let r = Arc::clone(&refused);
    let rx = Receiver::start(move |seen, _| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if n >= 60 && n % 5 == 4 {
            r.lock().unwrap().push(Instant::now());
            t.answer(
                seen,
                Reply::Raw(429, vec![("retry-after", "1".to_owned())], b"{}".to_vec()),
                true,
            )
        } else {
            t.answer(
                seen,
                Reply::After(Duration::from_millis(10), Box::new(Reply::all_ok(seen))),
                false,
            )
        }
    })
    .await;
    let tp = w
        .touchpoint(
            "busy",
            json!({"url": rx.url(), "batchSize": 10, "maxConcurrency": 8}),
        )
        .await;
    let dispatches: Vec<(String, usize)> = (0..25).map(|i| (format!("busy-{i}"), 60)).collect();
    for (id, n) in &dispatches {
        w.send(id, &tp, *n).await;
    }
    let esm = w.esm_of(
        8,
        DispatcherConfig {
            retry: RetryPolicy::parse("200ms,400ms,800ms,1s,1s").unwrap(),
            ..config(&w.template, MARGIN)
        },
    );
    let elapsed = sim::until_final(&*w.ledger, &dispatches, Duration::from_secs(300)).await;
    let stats = esm.stop().await;
    let f = w.figures(&dispatches, &tracked, &stats).await;
    let mut seen: Vec<Instant> = rx.seen().iter().map(|s| s.at).collect();
    seen.sort();
    let first = seen[0];
    let mut per_second =
        vec![0usize; seen.last().unwrap().duration_since(first).as_secs() as usize + 1];
    for at in &seen {
        per_second[at.duration_since(first).as_secs() as usize] += 1;
    }
    // The busiest second before the first 429, and from a second after it on.
    let busiest = |from: usize, to: usize| {
        (from..to)
            .map(|i| {
                seen[i..to]
                    .iter()
                    .take_while(|t| t.duration_since(seen[i]) < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    let before = busiest(0, 60);
    let settled = seen
        .iter()
        .position(|t| t.duration_since(seen[60]) >= Duration::from_secs(1))
        .unwrap_or(seen.len());
    let after = busiest(settled, seen.len());
    // Requests that came in the second half of a Retry-After (every instance has read the
    // pause by then, a quarter of a second after it was recorded), against all those after
    // the first 429.
    let refused = refused.lock().unwrap().clone();
    let in_pause = seen
        .iter()
        .filter(|at| {
            refused.iter().any(|r| {
                *at > r
                    && at.duration_since(*r) >= Duration::from_millis(500)
                    && at.duration_since(*r) < Duration::from_secs(1)
            })
        })
        .count();
    f.print(
        &format!(
            "429 to a fifth of requests after 60, 8 instances: {} requests (150 batches), requests a second {per_second:?}; \
             busiest second before the first 429 {before}, after it {after}; \
             {in_pause} of {} requests after the first 429 came in the second half of a Retry-After",
            seen.len(),
            seen.len() - 60
        ),
        elapsed,
        w.template.factor,
    );
    assert_eq!(f.succeeded, 1500, "no user fails: {f:?}");
    assert_eq!((f.one_event, f.repeated_events), (1500, 0), "{f:?}");
    // Each instance alone would honour only the Retry-Afters it got itself: about a third of
    // the requests then land in a pause another instance was told of (40 and 42 of 112 with
    // the sharing switched off; 0 to 13 with it, the most on a loaded machine).
    let total = seen.len() - 60;
    assert!(
        in_pause * 5 <= total,
        "every instance holds its requests for a Retry-After any of them got: {in_pause} of {total} came in one"
    );
    assert!(
        after < before,
        "{after} a second after the first 429, {before} before"
    );
}

/// An attribute value's size as DynamoDB counts it (strings and numbers; lists and maps of them).
fn attribute_bytes(v: &aws_sdk_dynamodb::types::AttributeValue) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    match v {
        A::S(s) => s.len(),
        A::N(n) => n.len(),
        A::L(l) => 3 + l.iter().map(|x| 1 + attribute_bytes(x)).sum::<usize>(),
        A::M(m) => {
            3 + m
                .iter()
                .map(|(k, x)| 1 + k.len() + attribute_bytes(x))
                .sum::<usize>()
        }
        _ => 1,
    }
}

// ---- Against the real local binary ----

const ADMIN: &str = "sim-admin-key-00001";
const CAMPAIGN: &str = "sim-campaign-key-001";

/// The operators' notification secret of the scenarios (Standard Webhooks' `whsec_` form).
const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An operators' endpoint that answers every notification.
async fn hooks() -> Receiver {
    Receiver::start(|_, _| Reply::Json(204, Value::Null)).await
}

/// An operators' endpoint subscribed to every notification of the local service's project.
async fn subscribe_local(service: &support::service::Service) -> Receiver {
    let hooks = hooks().await;
    let (status, body) = service
        .call(
            reqwest::Method::PUT,
            "/v1/notifications",
            ADMIN,
            Some(notification_settings(&hooks)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    hooks
}

fn notification_settings(hooks: &Receiver) -> Value {
    json!({
        "url": format!("http://{}/notify", hooks.addr),
        "token": HOOK_SECRET,
        "events": ["touchpoint.paused", "touchpoint.resumed", "dispatch.completed",
                   "batch.retries_exhausted", "receipt.timeout"],
    })
}

/// The notifications `hooks` received once every type of `want` has come (within `limit`),
/// each verified with the official Standard Webhooks library: (type, data) in arrival order.
async fn notifications_of(
    hooks: &Receiver,
    want: &[&str],
    limit: Duration,
) -> Vec<(String, Value)> {
    notifications_until(
        hooks,
        |told| want.iter().all(|w| told.iter().any(|(t, _)| t == w)),
        limit,
    )
    .await
}

/// The notifications `hooks` received once `done` says they are all there (within `limit`),
/// each verified with the official Standard Webhooks library: (type, data) in arrival order.
async fn notifications_until(
    hooks: &Receiver,
    done: impl Fn(&[(String, Value)]) -> bool,
    limit: Duration,
) -> Vec<(String, Value)> {
    let started = Instant::now();
    loop {
        let seen = hooks.seen_at("/notify");
        let told: Vec<(String, Value)> = seen
            .iter()
            .map(|s| {
                (
                    s.body["type"].as_str().unwrap_or_default().to_owned(),
                    s.body["data"].clone(),
                )
            })
            .collect();
        if done(&told) {
            let refused = support::standard_webhooks_refusals(HOOK_SECRET, &seen);
            assert!(
                refused.is_empty(),
                "refused by standardwebhooks: {refused:?}"
            );
            return told;
        }
        assert!(
            started.elapsed() < limit,
            "notifications not all received: {told:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn local(dir: &std::path::Path, extra: &[(&str, &str)]) -> support::service::Service {
    let keys = format!("{ADMIN}=1:admin,{CAMPAIGN}=1:campaign");
    let mut env = vec![
        ("TOUCHPOINT_API_KEYS", keys.as_str()),
        ("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true"),
    ];
    env.extend_from_slice(extra);
    support::service::Service::start(dir, &env)
}

/// A touchpoint of the local scenarios: one user attribute (`usr_name` as `name`), one required
/// text parameter (`title`).
fn local_touchpoint(name: &str, url: &str, batch_size: u16) -> Value {
    json!({
        "name": name, "kind": "notification", "url": url, "batchSize": batch_size,
        "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "n"}],
        "templateParams": [{"identifier": "title", "displayName": "t", "type": "text", "required": true}]
    })
}

fn local_dispatch(id: &str, touchpoint: &str, users: i64) -> Value {
    let users: Vec<Value> = (0..users)
        .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
        .collect();
    json!({
        "dispatchId": id, "projectId": 1, "spaceId": "space-a", "campaignId": "cmp-local",
        "touchpointId": touchpoint, "templateValues": {"title": "Hi {{name}}"}, "users": users
    })
}

async fn local_completed(service: &support::service::Service, id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, d) = service
            .call(
                reqwest::Method::GET,
                &format!("/v1/dispatches/{id}"),
                CAMPAIGN,
                None,
            )
            .await;
        if status == 200 && d["state"] == "completed" {
            return d;
        }
        assert!(
            started.elapsed() < limit,
            "not completed after {limit:?}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_the_local_binary_rides_out_a_45_second_outage_with_the_default_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let (rx, tracked) = receiver_down_until(Instant::now() + Duration::from_secs(45)).await;
    let service = local(&tmp.path().join("data"), &[]);
    let body = json!({
        "name": "outage", "kind": "notification", "url": rx.url(), "batchSize": 500,
        "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "n"}],
        "templateParams": [{"identifier": "title", "displayName": "t", "type": "text", "required": true}]
    });
    let tp = service.register(ADMIN, body, &["space-a"]).await;
    let started = Instant::now();
    let (status, _) = service
        .call(
            reqwest::Method::POST,
            "/v1/dispatches",
            CAMPAIGN,
            Some(local_dispatch("outage-45", &tp, 10_000)),
        )
        .await;
    assert_eq!(status, 202);
    // 30 s ± 20 %, then 2 min ± 20 %: done within about three minutes.
    let d = local_completed(&service, "outage-45", Duration::from_secs(240)).await;
    let elapsed = started.elapsed();
    let max_attempts = d["batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["attempts"].as_u64())
        .max()
        .unwrap_or(0);
    eprintln!(
        "scenario local 45-second outage: {elapsed:.1?}; users succeeded {}, failed {}; max attempts of a \
         batch {max_attempts}; receiver POSTs {}; batches sent twice {}",
        d["counts"]["succeeded"],
        d["counts"]["failed"],
        rx.requests(),
        tracked.sent_twice()
    );
    assert_eq!(d["counts"]["succeeded"], 10_000, "{}", d["counts"]);
    assert_eq!(d["counts"]["failed"], 0);
    assert!(
        max_attempts <= 3,
        "two retry rounds at most: {max_attempts}"
    );
    assert_eq!(tracked.sent_twice(), 0);
    service.terminate();
}

/// The most requests a receiver held at once (each is held `latency` before its answer) and the
/// most that arrived within one second, from their arrival times.
fn in_flight_and_per_second(seen: &[Seen], latency: Duration) -> (usize, usize) {
    let mut at: Vec<Instant> = seen.iter().map(|s| s.at).collect();
    at.sort();
    let most = |within: Duration| {
        (0..at.len())
            .map(|i| {
                at[i..]
                    .iter()
                    .take_while(|t| t.duration_since(at[i]) < within)
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    (most(latency), most(Duration::from_secs(1)))
}

/// A touchpoint of the local binary with its limits, sent 25 dispatches of 20 users (50
/// batches of 10); waits until every user has an outcome.
async fn limited_run(
    service: &support::service::Service,
    name: &str,
    url: String,
    limits: Value,
) -> usize {
    let mut body = json!({
        "name": name, "kind": "notification", "url": url, "batchSize": 10,
        "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "n"}],
        "templateParams": [{"identifier": "title", "displayName": "t", "type": "text", "required": true}]
    });
    for (k, v) in limits.as_object().unwrap() {
        body[k] = v.clone();
    }
    let tp = service.register(ADMIN, body, &["space-a"]).await;
    for i in 0..25 {
        let (status, _) = service
            .call(
                reqwest::Method::POST,
                "/v1/dispatches",
                CAMPAIGN,
                Some(local_dispatch(&format!("{name}-{i}"), &tp, 20)),
            )
            .await;
        assert_eq!(status, 202);
    }
    let mut succeeded = 0;
    for i in 0..25 {
        let d = local_completed(service, &format!("{name}-{i}"), Duration::from_secs(120)).await;
        succeeded += d["counts"]["succeeded"].as_u64().unwrap() as usize;
    }
    succeeded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_the_local_binary_holds_a_touchpoints_requests_in_flight_and_per_second() {
    let tmp = tempfile::tempdir().unwrap();
    let service = local(&tmp.path().join("data"), &[]);
    // A slow receiver: the 4 in flight bind (10 a second, below the rate limit).
    let slow = Duration::from_millis(400);
    let rx_slow =
        Receiver::start(move |seen, _| Reply::After(slow, Box::new(Reply::all_ok(seen)))).await;
    // A fast one: the 20 a second bind (4 in flight could make 200).
    let fast = Duration::from_millis(20);
    let rx_fast =
        Receiver::start(move |seen, _| Reply::After(fast, Box::new(Reply::all_ok(seen)))).await;
    let limits = json!({"maxConcurrency": 4, "maxRequestsPerSecond": 20});
    let started = Instant::now();
    let (slow_ok, fast_ok) = tokio::join!(
        limited_run(&service, "slow", rx_slow.url(), limits.clone()),
        limited_run(&service, "fast", rx_fast.url(), limits.clone()),
    );
    let elapsed = started.elapsed();
    let (slow_in_flight, slow_per_second) = in_flight_and_per_second(&rx_slow.seen(), slow);
    let (fast_in_flight, fast_per_second) = in_flight_and_per_second(&rx_fast.seen(), fast);
    eprintln!(
        "scenario local limits (maxConcurrency 4, maxRequestsPerSecond 20), 25 dispatches × 5 batches per touchpoint: \
         {elapsed:.1?}; slow receiver: {slow_ok} users succeeded, at most {slow_in_flight} in flight, {slow_per_second} in a second; \
         fast receiver: {fast_ok} succeeded, at most {fast_in_flight} in flight, {fast_per_second} in a second"
    );
    assert_eq!((slow_ok, fast_ok), (500, 500));
    assert_eq!(
        slow_in_flight, 4,
        "the slow receiver holds 4 at most, and gets 4"
    );
    // The receiver stamps a request when its handler runs: on a loaded machine one may be
    // stamped late, and the next on time.
    assert!(fast_per_second <= 22, "{fast_per_second} in a second");
    assert!(
        fast_per_second >= 15,
        "the limit is used: {fast_per_second}"
    );
    assert!(slow_per_second <= 22 && fast_in_flight <= 4);
    service.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_a_receiver_answering_429_to_a_fifth_of_requests_fails_no_one_and_slows_the_touchpoint()
 {
    let tmp = tempfile::tempdir().unwrap();
    // Short retry waits, so that the batches refused come back within the test.
    let service = local(
        &tmp.path().join("data"),
        &[("TOUCHPOINT_RETRY_SCHEDULE", "200ms,400ms,800ms,1s,1s")],
    );
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let rx = Receiver::start(move |seen, _| {
        if counter.fetch_add(1, Ordering::SeqCst) % 5 == 4 {
            Reply::Raw(429, vec![("retry-after", "1".to_owned())], b"{}".to_vec())
        } else {
            Reply::After(Duration::from_millis(10), Box::new(Reply::all_ok(seen)))
        }
    })
    .await;
    let started = Instant::now();
    let ok = limited_run(&service, "busy", rx.url(), json!({"maxConcurrency": 8})).await;
    let elapsed = started.elapsed();
    let seen = rx.seen();
    let first = seen.iter().map(|s| s.at).min().unwrap();
    // Requests a second, second by second.
    let mut per_second = vec![0usize; elapsed.as_secs() as usize + 2];
    for s in &seen {
        per_second[s.at.duration_since(first).as_secs() as usize] += 1;
    }
    while per_second.last() == Some(&0) {
        per_second.pop();
    }
    eprintln!(
        "scenario 429 to a fifth of requests: {elapsed:.1?}; {ok} users succeeded of 500; {} requests (50 batches); \
         requests a second: {per_second:?}",
        seen.len()
    );
    assert_eq!(ok, 500, "no user fails");
    // Unrestrained, 8 in flight at 10 ms make hundreds a second; each 429 halves the rate and
    // its Retry-After holds every request of the touchpoint for a second.
    let (_, busiest) = in_flight_and_per_second(&seen, Duration::from_millis(10));
    assert!(
        busiest < 60,
        "the touchpoint slowed down: {busiest} in a second"
    );
    assert!(
        elapsed > Duration::from_secs(2),
        "Retry-After held the touchpoint: {elapsed:?}"
    );
    service.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_a_batch_size_edited_during_a_retry_wait_sends_no_user_under_two_order_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    // The first request of every batch holding a gid below 500 fails (a 500: an error, not an
    // overload that would slow the touchpoint down); the rest succeed.
    let rx = Receiver::start(|seen, n| {
        if n == 1 && seen.gids.iter().any(|g| *g < 500) {
            Reply::Json(500, json!({}))
        } else {
            Reply::all_ok(seen)
        }
    })
    .await;
    let service = local(
        &tmp.path().join("data"),
        &[("TOUCHPOINT_RETRY_SCHEDULE", "3s,3s,3s")],
    );
    let body = json!({
        "name": "resized", "kind": "notification", "url": rx.url(), "batchSize": 100,
        "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "n"}],
        "templateParams": [{"identifier": "title", "displayName": "t", "type": "text", "required": true}]
    });
    let tp = service.register(ADMIN, body.clone(), &["space-a"]).await;
    let (status, _) = service
        .call(
            reqwest::Method::POST,
            "/v1/dispatches",
            CAMPAIGN,
            Some(local_dispatch("resized-0", &tp, 1_000)),
        )
        .await;
    assert_eq!(status, 202);
    // Wait until every batch was sent once: five wait for their retry.
    let started = Instant::now();
    while rx.requests() < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "first round not sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Disable, change the batch size from 100 to 30, enable: all within the retry wait.
    let (status, disabled) = service
        .call(
            reqwest::Method::POST,
            &format!("/v1/touchpoints/{tp}/disable"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, 200, "{disabled}");
    let mut edit = body;
    edit["batchSize"] = json!(30);
    edit["version"] = disabled["version"].clone();
    let (status, edited) = service
        .call(
            reqwest::Method::PUT,
            &format!("/v1/touchpoints/{tp}"),
            ADMIN,
            Some(edit),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    let (status, _) = service
        .call(
            reqwest::Method::POST,
            &format!("/v1/touchpoints/{tp}/enable"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the edit happened during the retry wait"
    );
    let d = local_completed(&service, "resized-0", Duration::from_secs(30)).await;
    let mut orders_of: HashMap<i64, HashSet<String>> = HashMap::new();
    for s in rx.seen() {
        for g in &s.gids {
            orders_of.entry(*g).or_default().insert(s.order_no.clone());
        }
    }
    let twice = orders_of.values().filter(|o| o.len() > 1).count();
    eprintln!(
        "scenario batch size edited during a retry wait (100 → 30): users succeeded {}, users sent under two \
         orderNos {twice}, receiver POSTs {}",
        d["counts"]["succeeded"],
        rx.requests()
    );
    assert_eq!(d["counts"]["succeeded"], 1_000, "{}", d["counts"]);
    assert_eq!(twice, 0);
    assert_eq!(rx.requests(), 15, "ten batches of 100, five of them twice");
    service.terminate();
}

/// What a rotation scenario saw: the requests signed before the rotation, during its overlap
/// and after it.
#[derive(Debug, Default)]
struct RotationSeen {
    before: usize,
    overlap: usize,
    after: usize,
    /// Sent while the dispatcher may still have held the old tokens (within [`KEYS_LAG`] of the
    /// rotation); they carry either.
    turning: usize,
}

/// How long after a rotation a delivery under way may still sign with the old tokens: the
/// dispatcher's freshness bound, and a loaded machine's read.
const KEYS_LAG: i64 = 2_500;

/// Checks every touch request against a rotation from `old` to `new` made between `rotating`
/// and `rotated` (wall milliseconds) whose overlap ended between `until.0` and `until.1` (an
/// instant known to the second is a range): before it, the old token
/// alone; from the lag after it, `webhook-signature` verifies with the new token and, until
/// the overlap ends, with the old one too, while `sign` keeps the old token; from the end of
/// the overlap, the new token alone.
fn check_rotation(
    seen: &[Seen],
    (old, new): (&str, &str),
    (rotating, rotated, until): (i64, i64, (i64, i64)),
) -> RotationSeen {
    use touchpoint::protocol::{sign, verify_webhook_signature};
    let mut out = RotationSeen::default();
    for s in seen {
        let t = s.body["timeStamp"].as_i64().unwrap();
        let header = |n: &str| s.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let seconds: i64 = header("webhook-timestamp").parse().unwrap();
        assert_eq!(header("webhook-id"), s.order_no);
        let verifies = |token: &str| {
            verify_webhook_signature(
                token,
                &s.order_no,
                seconds,
                &s.raw,
                header("webhook-signature"),
            )
        };
        let signed = |token: &str| s.body["sign"] == sign(token, t, &s.order_no);
        let (old_ok, new_ok) = (verifies(old), verifies(new));
        assert!(old_ok || new_ok, "no valid signature at {t}");
        assert!(signed(old) || signed(new), "no valid sign at {t}");
        if t < rotating {
            assert!(
                old_ok && !new_ok && signed(old),
                "before the rotation at {t}"
            );
            out.before += 1;
        } else if t < rotated + KEYS_LAG || (until.0..until.1).contains(&t) {
            out.turning += 1;
        } else if t < until.0 {
            assert!(
                old_ok && new_ok && signed(old),
                "during the overlap at {t}: old {old_ok}, new {new_ok}, sign {}",
                s.body["sign"]
            );
            out.overlap += 1;
        } else {
            assert!(
                new_ok && !old_ok && signed(new),
                "after the overlap at {t}: old {old_ok}, new {new_ok}"
            );
            out.after += 1;
        }
    }
    out
}

fn wall_ms() -> i64 {
    SystemClock.now_ms()
}

/// Issue 17, item 4, on AWS: a token rotated while a dispatch is being delivered by two
/// instances signs its next batches with both tokens, and `sign` moves to the new token when the
/// overlap ends; nobody is failed or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_a_token_rotated_during_a_dispatch_signs_with_both_until_the_overlap_ends() {
    let _heavy = HEAVY.acquire().await.unwrap();
    let w = World::new(10.0).await;
    let (rx, tracked) = slow_receiver(Duration::from_millis(150)).await;
    let tp = w
        .touchpoint(
            "rotation",
            json!({"url": rx.url(), "batchSize": 10, "token": "old-sim-token"}),
        )
        .await;
    let dispatches = vec![
        ("rotation-0".to_owned(), 2_500usize),
        ("rotation-1".to_owned(), 2_500),
    ];
    for (id, n) in &dispatches {
        w.send(id, &tp, *n).await;
    }
    let esm = w.esm(2, None);
    while rx.requests() < 40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rotating = wall_ms();
    // The admin's clock is not compressed: a 5-second overlap.
    let rotated = w
        .admin
        .rotate_token(
            1,
            &tp.as_str().into(),
            &json!({"token": "new-sim-token", "overlapHours": 5.0 / 3600.0}),
        )
        .await
        .unwrap();
    let done_at = wall_ms();
    let until = rotated.rotation.as_ref().unwrap().until;
    sim::until_final(&*w.ledger, &dispatches, Duration::from_secs(300)).await;
    let stats = esm.stop().await;
    let seen = check_rotation(
        &rx.seen_at("/touch"),
        ("old-sim-token", "new-sim-token"),
        (rotating, done_at, (until, until)),
    );
    let f = w.figures(&dispatches, &tracked, &stats).await;
    eprintln!(
        "scenario token rotation, 2 instances, 500 batches: requests signed with the old token {}, \
         while turning {}, with both {}, with the new one {}; succeeded {}, sent twice {}",
        seen.before, seen.turning, seen.overlap, seen.after, f.succeeded, f.sent_twice
    );
    assert_eq!(f.succeeded, 5_000);
    assert_eq!(f.sent_twice, 0);
    assert!(
        seen.before > 0 && seen.overlap > 0 && seen.after > 0,
        "requests in every phase: {seen:?}"
    );
}

/// Issue 17, item 4, in the local binary: the same, through its admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_the_local_binary_signs_with_both_tokens_during_a_rotations_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let (rx, tracked) = slow_receiver(Duration::from_millis(100)).await;
    let service = local(&tmp.path().join("data"), &[]);
    let mut body = local_touchpoint("rotation", &rx.url(), 10);
    body["token"] = json!("old-local-token");
    let tp = service.register(ADMIN, body, &["space-a"]).await;
    let (status, _) = service
        .call(
            reqwest::Method::POST,
            "/v1/dispatches",
            CAMPAIGN,
            Some(local_dispatch("rotation-local", &tp, 5_000)),
        )
        .await;
    assert_eq!(status, 202);
    while rx.requests() < 40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rotating = wall_ms();
    let (status, rotated) = service
        .call(
            reqwest::Method::POST,
            &format!("/v1/touchpoints/{tp}/token/rotate"),
            ADMIN,
            Some(json!({"token": "new-local-token", "overlapHours": 5.0 / 3600.0})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let done_at = wall_ms();
    let until =
        touchpoint::clock::parse_rfc3339(rotated["tokenOverlapUntil"].as_str().unwrap()).unwrap();
    let d = local_completed(&service, "rotation-local", Duration::from_secs(120)).await;
    // The view shows whole seconds.
    let seen = check_rotation(
        &rx.seen_at("/touch"),
        ("old-local-token", "new-local-token"),
        (rotating, done_at, (until, until + 1_000)),
    );
    eprintln!(
        "scenario local token rotation, 500 batches: requests signed with the old token {}, \
         while turning {}, with both {}, with the new one {}; succeeded {}, sent twice {}",
        seen.before,
        seen.turning,
        seen.overlap,
        seen.after,
        d["counts"]["succeeded"],
        tracked.sent_twice()
    );
    assert_eq!(d["counts"]["succeeded"], 5_000);
    assert_eq!(tracked.sent_twice(), 0);
    assert!(
        seen.before > 0 && seen.overlap > 0 && seen.after > 0,
        "requests in every phase: {seen:?}"
    );
    service.terminate();
}

/// The requests a receiver down from `from` for `outage` would have had from batches first sent
/// at `from` without the breaker: each batch's attempts on the retry schedule (its nominal
/// waits, scaled) that fall within the outage.
fn requests_without_a_breaker(batches: usize, retry: &RetryPolicy, outage: Duration) -> usize {
    let mut at = Duration::ZERO;
    let mut attempts = 0;
    for wait in std::iter::once(Duration::ZERO).chain(retry.waits.iter().copied()) {
        at += wait;
        if at < outage {
            attempts += 1;
        }
    }
    batches * attempts
}

/// Requests a receiver got at or after `from` and before `until` (wall milliseconds).
fn requests_between(seen: &[Seen], from: i64, until: i64) -> usize {
    seen.iter()
        .filter(|s| (from..until).contains(&s.wall_ms))
        .count()
}

/// Issue 17, item 2, on AWS: a receiver down for a fifth of the retry horizon, three instances,
/// a hundred batches. The breaker opens on the shared window, only probes reach the receiver
/// while it is down, the probe after it comes back resumes the touchpoint, and every user
/// succeeds within the retry horizon, none sent twice. Prints the requests the breaker saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn scenario_a_receiver_down_pauses_its_touchpoint_and_a_probe_resumes_it() {
    use touchpoint::health::HealthState;
    use touchpoint_receiver::limits::ReceiverLimits;
    let _heavy = HEAVY.acquire().await.unwrap();
    let w = World::new(60.0).await;
    let horizon = w.template.scaled(RetryPolicy::default().horizon());
    let outage = horizon.mul_f64(0.2);
    let started = Instant::now();
    let down_from = wall_ms();
    let (rx, tracked) = receiver_failing_until(started + outage, 500).await;
    let up_at = down_from + outage.as_millis() as i64;
    let hooks = hooks().await;
    w.admin
        .put_notification_settings(1, &notification_settings(&hooks))
        .await
        .unwrap();
    let tp = w
        .touchpoint("breaker", json!({"url": rx.url(), "batchSize": 20}))
        .await;
    let dispatches: Vec<(String, usize)> =
        (0..2).map(|i| (format!("breaker-{i}"), 1_000)).collect();
    for (id, n) in &dispatches {
        w.send(id, &tp, *n).await;
    }
    // What the admin API shows: the health the instances share, in the table.
    let watcher = ReceiverLimits::new(4)
        .with_time_scale(w.template.factor)
        .with_shared(
            Arc::new(touchpoint_aws::DynamoLimits::new(
                w.clients.dynamodb.clone(),
                &w.names.delivery_table,
            )),
            Arc::new(SystemClock),
        );
    let tp_read = w
        .touchpoints
        .get(1, &tp.as_str().into())
        .await
        .unwrap()
        .unwrap();
    let esm = w.esm(3, None);
    // (paused at, resumed at), wall milliseconds, as the watcher saw them.
    let seen_health: Arc<Mutex<(Option<i64>, Option<i64>)>> = Arc::default();
    let watch = {
        let seen_health = Arc::clone(&seen_health);
        tokio::spawn(async move {
            loop {
                let health = watcher.health(&tp_read).await;
                {
                    let mut s = seen_health.lock().unwrap();
                    match (health.state, s.0, s.1) {
                        (HealthState::Paused, None, _) => {
                            assert!(!health.manual);
                            s.0 = Some(wall_ms());
                        }
                        (HealthState::Healthy | HealthState::Degraded, Some(_), None) => {
                            s.1 = Some(wall_ms());
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let elapsed = sim::until_final(&*w.ledger, &dispatches, horizon * 2).await;
    watch.abort();
    // Told through the dispatch queue, sent by the instances, verified by the official library.
    let completed_both = |told: &[(String, Value)]| {
        told.iter()
            .filter(|(t, _)| t == "dispatch.completed")
            .filter_map(|(_, d)| d["dispatchId"].as_str())
            .collect::<HashSet<&str>>()
            .len()
            == 2
    };
    let told = notifications_until(
        &hooks,
        |told| {
            completed_both(told)
                && ["touchpoint.paused", "touchpoint.resumed"]
                    .iter()
                    .all(|w| told.iter().any(|(t, _)| t == w))
        },
        Duration::from_secs(30),
    )
    .await;
    let (paused_at, resumed_at) = *seen_health.lock().unwrap();
    let stats = esm.stop().await;
    let count = |t: &str| told.iter().filter(|(x, _)| x == t).count();
    assert_eq!(
        count("touchpoint.paused"),
        1,
        "one instance tells the pause: {told:?}"
    );
    assert_eq!(count("touchpoint.resumed"), 1, "{told:?}");
    let paused = told.iter().find(|(t, _)| t == "touchpoint.paused").unwrap();
    assert_eq!(paused.1["touchpointId"], tp.as_str());
    assert_eq!(paused.1["manual"], false);
    let completed: HashSet<&str> = told
        .iter()
        .filter(|(t, _)| t == "dispatch.completed")
        .filter_map(|(_, d)| d["dispatchId"].as_str())
        .collect();
    assert_eq!(completed.len(), 2, "both dispatches: {told:?}");
    eprintln!(
        "scenario breaker: {} notifications through the dispatch queue, each verified by \
         standardwebhooks",
        told.len()
    );
    let paused_at = paused_at.expect("the touchpoint was paused");
    let resumed_at = resumed_at.expect("and resumed");
    let seen = rx.seen_at("/touch");
    let during = requests_between(&seen, down_from, up_at);
    // Paused and still down: probes only, one per cool-down at most (the first is a minute,
    // each failed one doubles it; 0.5 s of slack for a request under way when it opened).
    let while_paused = requests_between(&seen, paused_at + 500, up_at);
    let without = requests_without_a_breaker(
        100,
        &RetryPolicy::default().scaled(w.template.factor),
        outage,
    );
    let f = w.figures(&dispatches, &tracked, &stats).await;
    eprintln!(
        "scenario breaker, 3 instances, 100 batches, receiver down {outage:.1?} (a fifth of the \
         retry horizon): requests while down {during} (paused after {:.1?}, probes while paused \
         {while_paused}), without the breaker about {without}: {} saved; resumed {:.1?} after the \
         receiver came back; all final after {elapsed:.1?}; succeeded {}, sent twice {}",
        Duration::from_millis((paused_at - down_from).max(0) as u64),
        without.saturating_sub(during),
        Duration::from_millis((resumed_at - up_at).max(0) as u64),
        f.succeeded,
        f.sent_twice
    );
    assert_eq!(f.succeeded, 2_000, "{f:?}");
    assert!(f.failed_by_reason.is_empty(), "{f:?}");
    assert_eq!(f.sent_twice, 0, "{f:?}");
    assert!(elapsed < horizon, "within the retry horizon: {elapsed:?}");
    assert!(while_paused <= 6, "{while_paused} requests while paused");
    assert!(
        during * 2 < without,
        "{during} requests while down, {without} without"
    );
    assert!(
        resumed_at >= up_at - 500,
        "resumed only once the receiver answered"
    );
}

/// Issue 17, item 2, in the local binary: a receiver down for 30 seconds under 200 batches. The
/// touchpoint shows `paused` through the admin API while only probes go, resumes once a probe is
/// answered, and every user succeeds, none sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_the_local_binary_pauses_a_touchpoint_whose_receiver_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let outage = Duration::from_secs(30);
    let started = Instant::now();
    let down_from = wall_ms();
    // A 500 (not a 503 or 429, which slow the touchpoint down before anything else).
    let (rx, tracked) = receiver_failing_until(started + outage, 500).await;
    let up_at = down_from + outage.as_millis() as i64;
    let service = local(
        &tmp.path().join("data"),
        &[("TOUCHPOINT_BREAKER_COOLDOWN", "5s")],
    );
    let hooks = subscribe_local(&service).await;
    let body = local_touchpoint("breaker", &rx.url(), 50);
    let tp = service.register(ADMIN, body, &["space-a"]).await;
    let (status, _) = service
        .call(
            reqwest::Method::POST,
            "/v1/dispatches",
            CAMPAIGN,
            Some(local_dispatch("breaker-local", &tp, 10_000)),
        )
        .await;
    assert_eq!(status, 202);
    let mut paused: Option<(i64, Value)> = None;
    let mut resumed_at = None;
    let d = loop {
        let (_, t) = service
            .call(
                reqwest::Method::GET,
                &format!("/v1/touchpoints/{tp}"),
                ADMIN,
                None,
            )
            .await;
        match (t["health"]["state"].as_str(), &paused, resumed_at) {
            (Some("paused"), None, _) => paused = Some((wall_ms(), t["health"].clone())),
            (Some("healthy" | "degraded"), Some(_), None) => resumed_at = Some(wall_ms()),
            _ => {}
        }
        let (_, d) = service
            .call(
                reqwest::Method::GET,
                "/v1/dispatches/breaker-local",
                CAMPAIGN,
                None,
            )
            .await;
        if d["state"] == "completed" {
            break d;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not completed: {d}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (paused_at, health) = paused.expect("paused while down");
    let resumed_at = resumed_at.expect("resumed");
    assert_eq!(health["manual"], false);
    assert!(
        health["reason"].as_str().unwrap().contains("failed"),
        "{health}"
    );
    let seen = rx.seen_at("/touch");
    let during = requests_between(&seen, down_from, up_at);
    let while_paused = requests_between(&seen, paused_at + 500, up_at);
    let without = requests_without_a_breaker(200, &RetryPolicy::default(), outage);
    eprintln!(
        "scenario local breaker, 200 batches, receiver down {outage:?}: requests while down \
         {during} (probes while paused {while_paused}), without the breaker about {without}: {} \
         saved; resumed {:.1?} after the receiver came back; completed after {:.1?}; succeeded \
         {}, sent twice {}",
        without.saturating_sub(during),
        Duration::from_millis((resumed_at - up_at).max(0) as u64),
        started.elapsed(),
        d["counts"]["succeeded"],
        tracked.sent_twice()
    );
    assert_eq!(d["counts"]["succeeded"], 10_000, "{}", d["counts"]);
    assert_eq!(tracked.sent_twice(), 0);
    // Cool-downs of 5, 10 and 20 seconds: three probes at most while down.
    assert!(while_paused <= 4, "{while_paused} requests while paused");
    assert!(
        during * 2 < without,
        "{during} while down, {without} without"
    );
    // The operators were told, and the official library verifies what they were told.
    let told = notifications_of(
        &hooks,
        &[
            "touchpoint.paused",
            "touchpoint.resumed",
            "dispatch.completed",
        ],
        Duration::from_secs(20),
    )
    .await;
    let of = |t: &str| {
        told.iter()
            .filter(|(x, _)| x == t)
            .map(|(_, d)| d)
            .collect::<Vec<_>>()
    };
    let pauses = of("touchpoint.paused");
    assert_eq!(pauses[0]["touchpointId"], tp.as_str());
    assert_eq!(pauses[0]["manual"], false);
    assert!(
        pauses[0]["reason"].as_str().unwrap().contains("failed"),
        "{}",
        pauses[0]
    );
    assert_eq!(
        of("touchpoint.resumed")[0]["pausedSince"],
        pauses[0]["since"]
    );
    let completed = of("dispatch.completed");
    assert_eq!(completed.len(), 1, "{told:?}");
    assert_eq!(completed[0]["succeeded"], 10_000);
    assert!(of("batch.retries_exhausted").is_empty(), "{told:?}");
    eprintln!(
        "scenario local breaker: notifications {:?}, each verified by standardwebhooks",
        told.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>()
    );
    let (_, logs) = service.terminate();
    if std::env::var("SIM_LOG").is_ok() {
        eprintln!("{logs}");
    }
}

/// A receiver down for longer than the retry horizon: the breaker keeps the touchpoint paused,
/// and once it has been down for the horizon the users still waiting fail, with the reason,
/// rather than wait for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_a_touchpoint_paused_past_the_retry_horizon_fails_its_waiting_users() {
    let tmp = tempfile::tempdir().unwrap();
    let (rx, _tracked) =
        receiver_failing_until(Instant::now() + Duration::from_secs(3600), 500).await;
    let service = local(
        &tmp.path().join("data"),
        &[
            ("TOUCHPOINT_RETRY_SCHEDULE", "2s,2s"),
            ("TOUCHPOINT_BREAKER_COOLDOWN", "1s"),
        ],
    );
    let hooks = subscribe_local(&service).await;
    let body = local_touchpoint("down", &rx.url(), 10);
    let tp = service.register(ADMIN, body, &["space-a"]).await;
    let (status, _) = service
        .call(
            reqwest::Method::POST,
            "/v1/dispatches",
            CAMPAIGN,
            Some(local_dispatch("down-local", &tp, 500)),
        )
        .await;
    assert_eq!(status, 202);
    let d = local_completed(&service, "down-local", Duration::from_secs(60)).await;
    assert_eq!(d["counts"]["failed"], 500, "{}", d["counts"]);
    let (_, stats) = service
        .call(
            reqwest::Method::GET,
            &format!("/v1/touchpoints/{tp}/stats"),
            ADMIN,
            None,
        )
        .await;
    let reasons = stats["failureReasons"].to_string();
    assert!(
        reasons.contains("paused past the retry horizon"),
        "{reasons}"
    );
    // 50 batches of three attempts would be 150 requests.
    assert!(rx.requests() < 100, "{} requests", rx.requests());
    eprintln!(
        "scenario local breaker past the horizon: 500 users failed after the horizon with {} \
         requests (50 batches × 3 attempts would be 150)",
        rx.requests()
    );
    // A batch may run out of attempts before the breaker opens; the horizon's give-up comes
    // later, for the users still waiting.
    let past_horizon = |(t, d): &(String, Value)| {
        t == "batch.retries_exhausted"
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("paused past the retry horizon"))
    };
    let told = notifications_until(
        &hooks,
        |told| {
            told.iter().any(past_horizon)
                && ["touchpoint.paused", "dispatch.completed"]
                    .iter()
                    .all(|w| told.iter().any(|(t, _)| t == w))
        },
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        told.iter().filter(|n| past_horizon(n)).count(),
        1,
        "{told:?}"
    );
    let completed = told
        .iter()
        .find(|(t, _)| t == "dispatch.completed")
        .unwrap();
    assert_eq!(completed.1["failed"], 500, "{}", completed.1);
    service.terminate();
}
