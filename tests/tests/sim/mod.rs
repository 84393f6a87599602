//! A faithful emulation of what AWS does around the dispatcher and the receipt poller, against
//! the moto server (which stores SQS and DynamoDB state but runs no Lambda): an event source
//! mapping that long-polls the dispatch queue and invokes the real dispatcher Lambda handler
//! with up to `BatchSize` records and the function's `Timeout` as its deadline, drops the
//! invocation at that deadline (its records come back after the visibility timeout, as on AWS),
//! applies `ReportBatchItemFailures`, and runs several instances side by side; and EventBridge
//! Scheduler invoking the receipt poller at a fixed rate, at least once. Queues get the
//! attributes `template.yaml` gives them (moto applies visibility, delays, receive counts and
//! the redrive policy). Time is compressed by one factor throughout a scenario
//! ([`Template::factor`]): the retry schedule, visibility, timeouts and poll interval alike.

pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::sqs::event_of;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use serde_json::{Value, json};
use touchpoint::clock::{Clock, SystemClock};
use touchpoint::delivery::{BatchView, DeliveryStore};
use touchpoint_aws::{AwsNames, Clients};
use touchpoint_dispatcher_lambda::DispatcherLambda;
use touchpoint_receipt_poller_lambda::PollerLambda;

pub use template::Template;

/// Whole seconds as SQS takes them, rounded up (never down) and at least `min`.
pub fn sqs_seconds(d: Duration, min: u64) -> i32 {
    (d.as_secs_f64().ceil() as u64).max(min) as i32
}

/// A moto server of the scenario's own (`infra/moto_server.py`, when `MOTO_PYTHON` names the
/// Python that has moto, as the test command sets it), so that scenarios running side by side do not queue behind each other in
/// one Python process, and moto's transactions (which copy every table it holds) stay fast;
/// otherwise the shared one at `AWS_ENDPOINT_URL`. Stopped when dropped.
pub struct Moto {
    child: Option<std::process::Child>,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let shared =
            std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL: run through infra/test.sh");
        assert!(
            shared.starts_with("http://127.0.0.1:"),
            "not local: {shared}"
        );
        let Ok(python) = std::env::var("MOTO_PYTHON") else {
            return Moto {
                child: None,
                endpoint: shared,
            };
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/moto_server.py");
        let client = crate::support::http_client();
        // A free port can be taken by another test's server before moto binds it: moto then
        // exits, and whatever holds the port does not answer as moto does. Another port then.
        for _ in 0..5 {
            let port = crate::support::service::free_port();
            let mut child = std::process::Command::new(&python)
                .arg(script)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                // Gone with this process, even when it is killed before dropping this.
                .env("MOTO_WATCH_PID", std::process::id().to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {script} with {python}: {e}"));
            let endpoint = format!("http://127.0.0.1:{port}");
            let started = Instant::now();
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                let answered = client.get(format!("{endpoint}/moto-api/")).send().await;
                if answered.is_ok_and(|r| r.status().is_success()) {
                    return Moto {
                        child: Some(child),
                        endpoint,
                    };
                }
                if started.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("moto did not start");
    }
}

/// What the moto server has done so far, when it profiles its requests (`MOTO_PROFILE=<file>`,
/// see `infra/moto_server.py`): requests by operation (DynamoDB item writes and reads by the
/// kind of item), and its CPU time.
pub struct MotoLoad {
    requests: BTreeMap<String, u64>,
    cpu_ms: u64,
}

impl MotoLoad {
    /// The load so far (the server writes its counts every second: read a second later), or
    /// `None` without `MOTO_PROFILE`.
    pub async fn now(moto: &Moto) -> Option<MotoLoad> {
        let path = std::env::var("MOTO_PROFILE").ok()?;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let counts: BTreeMap<String, (u64, f64)> =
            serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        let ticks: u64 = moto.child.as_ref().map_or(0, |c| {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", c.id())).unwrap_or_default();
            // utime and stime (clock ticks, a hundred a second), after the name in parentheses.
            let after = stat.rsplit(')').next().unwrap_or("");
            let fields: Vec<&str> = after.split_whitespace().collect();
            fields
                .iter()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        });
        Some(MotoLoad {
            requests: counts.into_iter().map(|(op, (n, _))| (op, n)).collect(),
            cpu_ms: ticks * 10,
        })
    }

    /// Prints what happened since `before`, per unit (`units` of them).
    pub fn print_since(&self, before: &MotoLoad, what: &str, units: usize) {
        let per = |n: u64| n as f64 / units as f64;
        let ops: Vec<String> = self
            .requests
            .iter()
            .map(|(op, n)| (op, n - before.requests.get(op).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .map(|(op, n)| format!("{op} {:.2}", per(n)))
            .collect();
        let total = self.requests.values().sum::<u64>() - before.requests.values().sum::<u64>();
        eprintln!(
            "  moto, {what}: {:.2} requests, {:.1} ms of its CPU ({})",
            per(total),
            per(self.cpu_ms - before.cpu_ms),
            ops.join(", ")
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The dispatch queue as the template declares it (attributes scaled), and its dead-letter
/// queue with the template's redrive policy.
pub async fn configure_queues(clients: &Clients, names: &AwsNames, t: &Template) -> String {
    let dlq = clients
        .sqs
        .create_queue()
        .queue_name(touchpoint_aws::provision::unique("dispatch-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
    let queue = names.dispatch_queue_url.clone().unwrap();
    clients
        .sqs
        .set_queue_attributes()
        .queue_url(&queue)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            sqs_seconds(t.scaled(t.visibility_timeout), 1).to_string(),
        )
        .attributes(
            QueueAttributeName::MessageRetentionPeriod,
            t.retention.as_secs().to_string(),
        )
        .attributes(
            QueueAttributeName::MaximumMessageSize,
            t.maximum_message_size.to_string(),
        )
        .attributes(
            QueueAttributeName::DelaySeconds,
            t.delay_seconds.to_string(),
        )
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": t.max_receive_count})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    dlq
}

/// What the event source mapping saw.
#[derive(Default)]
pub struct EsmStats {
    pub invocations: AtomicU64,
    /// Invocations still running at the function's timeout (dropped, as Lambda kills them).
    pub killed: AtomicU64,
    /// Invocations the scenario aborted at a random point (a crash).
    pub aborted: AtomicU64,
    pub max_receive_count: AtomicU64,
    /// Deliveries per dispatch id.
    pub deliveries: Mutex<HashMap<String, u64>>,
    /// Batches of records handed to one invocation at most.
    pub max_records: AtomicU64,
}

/// Decides, per invocation, whether to abort it and after how long (a crash at a random point),
/// knowing what the mapping saw so far.
pub type Abort = Arc<dyn Fn(&EsmStats) -> Option<Duration> + Send + Sync>;

/// The event source mapping: `instances` concurrent pollers, each invoking its own Lambda
/// instance (a process with its own per-touchpoint gates), as SQS scales the function out.
pub struct Esm {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub stats: Arc<EsmStats>,
}

impl Esm {
    pub fn start(
        clients: &Clients,
        queue: &str,
        t: &Template,
        lambdas: Vec<Arc<DispatcherLambda>>,
        abort: Option<Abort>,
    ) -> Esm {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(EsmStats::default());
        let timeout = t.scaled(t.dispatcher_timeout);
        let tasks = lambdas
            .into_iter()
            .map(|lambda| {
                let sqs = clients.sqs.clone();
                let queue = queue.to_owned();
                let stop = Arc::clone(&stop);
                let stats = Arc::clone(&stats);
                let abort = abort.clone();
                let (batch_size, window) = (t.batch_size, t.scaled(t.batching_window));
                let max_message = t.maximum_message_size as usize;
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let Some(messages) =
                            gather(&sqs, &queue, batch_size, window, max_message).await
                        else {
                            continue;
                        };
                        let records: Vec<_> = messages
                            .into_iter()
                            .map(crate::support::sqs::record_of)
                            .collect();
                        stats
                            .max_records
                            .fetch_max(records.len() as u64, Ordering::SeqCst);
                        for r in &records {
                            let receives: u64 = r
                                .attributes
                                .get("ApproximateReceiveCount")
                                .and_then(|c| c.parse().ok())
                                .unwrap_or(1);
                            stats
                                .max_receive_count
                                .fetch_max(receives, Ordering::SeqCst);
                            let id = r
                                .body
                                .as_deref()
                                .and_then(|b| serde_json::from_str::<Value>(b).ok())
                                .and_then(|b| b["dispatchId"].as_str().map(str::to_owned))
                                .unwrap_or_default();
                            *stats.deliveries.lock().unwrap().entry(id).or_default() += 1;
                        }
                        stats.invocations.fetch_add(1, Ordering::SeqCst);
                        let deadline = SystemClock.now_ms() + timeout.as_millis() as i64;
                        let cut = abort
                            .as_ref()
                            .and_then(|a| a(&stats))
                            .filter(|d| *d < timeout);
                        let limit = cut.unwrap_or(timeout);
                        let event = event_of(records.clone());
                        match tokio::time::timeout(limit, lambda.handle_until(event, deadline))
                            .await
                        {
                            // An invocation meant to die that finished first dies just before it
                            // returns: its records are neither deleted nor reported (a crash at
                            // the last moment, after its work was done).
                            Ok(_) if cut.is_some() => {
                                stats.aborted.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(response) => {
                                let failed: Vec<String> = response
                                    .batch_item_failures
                                    .iter()
                                    .map(|f| f.item_identifier.clone())
                                    .collect();
                                let done: Vec<_> = records
                                    .iter()
                                    .filter(|r| !failed.contains(r.message_id.as_ref().unwrap()))
                                    .collect();
                                for chunk in done.chunks(10) {
                                    delete_batch(
                                        &sqs,
                                        &queue,
                                        chunk.iter().map(|r| r.receipt_handle.clone().unwrap()),
                                    )
                                    .await;
                                }
                            }
                            // Dropped: its records come back after the visibility timeout.
                            Err(_) if cut.is_some() => {
                                stats.aborted.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => {
                                stats.killed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        Esm { stop, tasks, stats }
    }

    pub async fn stop(self) -> Arc<EsmStats> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        self.stats
    }
}

/// What a Lambda invocation's payload holds at most (synchronous invocation: 6 MB).
const INVOCATION_PAYLOAD: usize = 6_000_000;
/// About what an SQS record adds to its body in the event (ids, attributes, ARN).
const RECORD_OVERHEAD: usize = 1_000;

/// One invocation's records, gathered as the event source mapping does: a long poll for the
/// first, then receives of at most ten (SQS's limit) until `BatchSize` records, the batching
/// window since the first, or the invocation payload's 6 MB (no record left out for it:
/// gathering stops while one more of the queue's largest could not fit). `None`: nothing came.
async fn gather(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    batch_size: i32,
    window: Duration,
    max_message: usize,
) -> Option<Vec<aws_sdk_sqs::types::Message>> {
    let mut messages: Vec<aws_sdk_sqs::types::Message> = Vec::new();
    let mut bytes = 0usize;
    let mut closes: Option<Instant> = None;
    loop {
        let left = (batch_size as usize).saturating_sub(messages.len());
        let now = Instant::now();
        if left == 0
            || bytes + max_message + RECORD_OVERHEAD > INVOCATION_PAYLOAD
            || closes.is_some_and(|c| now >= c)
        {
            return Some(messages);
        }
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(left.min(10) as i32)
            .wait_time_seconds(if messages.is_empty() { 1 } else { 0 })
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await;
        let got = match got {
            Ok(r) => r.messages.unwrap_or_default(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Vec::new()
            }
        };
        if messages.is_empty() && got.is_empty() {
            return None;
        }
        if got.is_empty() {
            // The window is still open: look again shortly.
            let rest = closes.map_or(Duration::ZERO, |c| c.saturating_duration_since(now));
            tokio::time::sleep(rest.min(Duration::from_millis(20))).await;
            continue;
        }
        closes.get_or_insert(now + window);
        bytes += got
            .iter()
            .map(|m| m.body.as_deref().map_or(0, str::len) + RECORD_OVERHEAD)
            .sum::<usize>();
        messages.extend(got);
    }
}

/// EventBridge Scheduler for the receipt poller: every schedule of the group fires at the fixed
/// rate (scaled), invoking the poller with the schedule's input and the function's timeout as
/// its deadline; every `twice_every`-th firing is delivered twice at once (at least once), and a
/// failed invocation is retried as the function's async-retry setting says.
pub struct Scheduler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    pub invocations: Arc<AtomicUsize>,
}

impl Scheduler {
    pub fn start(
        clients: &Clients,
        group: String,
        poller: Arc<PollerLambda>,
        t: &Template,
        twice_every: usize,
    ) -> Scheduler {
        let stop = Arc::new(AtomicBool::new(false));
        let invocations = Arc::new(AtomicUsize::new(0));
        let rate = t.scaled(touchpoint_aws::schedule::SCHEDULE_INTERVAL);
        let timeout = t.scaled(t.poller_timeout);
        let retries = t.poller_async_retries;
        let scheduler = clients.scheduler.clone();
        let task = {
            let stop = Arc::clone(&stop);
            let invocations = Arc::clone(&invocations);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(rate);
                ticker.tick().await;
                let mut firing = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    ticker.tick().await;
                    let Ok(list) = scheduler.list_schedules().group_name(&group).send().await
                    else {
                        continue;
                    };
                    for summary in list.schedules() {
                        let Some(name) = summary.name() else { continue };
                        let Ok(s) = scheduler
                            .get_schedule()
                            .group_name(&group)
                            .name(name)
                            .send()
                            .await
                        else {
                            continue;
                        };
                        let Some(input) = s.target().and_then(|t| t.input()) else {
                            continue;
                        };
                        let input: Value = serde_json::from_str(input).unwrap();
                        firing += 1;
                        let copies = if twice_every > 0 && firing.is_multiple_of(twice_every) {
                            2
                        } else {
                            1
                        };
                        for _ in 0..copies {
                            let poller = Arc::clone(&poller);
                            let input = input.clone();
                            let invocations = Arc::clone(&invocations);
                            tokio::spawn(async move {
                                for _ in 0..=retries {
                                    invocations.fetch_add(1, Ordering::SeqCst);
                                    let deadline =
                                        SystemClock.now_ms() + timeout.as_millis() as i64;
                                    let run = poller.handle_until(input.clone(), deadline);
                                    match tokio::time::timeout(timeout, run).await {
                                        Ok(Ok(_)) => break,
                                        _ => continue,
                                    }
                                }
                            });
                        }
                    }
                }
            })
        };
        Scheduler {
            stop,
            task,
            invocations,
        }
    }

    pub async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
        let _ = self.task.await;
        self.invocations.load(Ordering::SeqCst)
    }
}

/// Every batch of a dispatch with its per-user results.
pub async fn batches(ledger: &dyn DeliveryStore, project: i64, dispatch: &str) -> Vec<BatchView> {
    let mut out = Vec::new();
    for b in ledger
        .dispatch_batches(project, &dispatch.into())
        .await
        .unwrap()
    {
        out.push(ledger.batch(project, &b.order_no).await.unwrap().unwrap());
    }
    out
}

/// Waits until every user of the dispatches (all of campaign `cmp-sim`) has a final result;
/// panics after `limit`. Reads the campaign's counters (16 small items), not the batches, so
/// that watching does not load the moto server.
pub async fn until_final(
    ledger: &dyn DeliveryStore,
    dispatches: &[(String, usize)],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut said = Instant::now();
    let want: u64 = dispatches.iter().map(|(_, n)| *n as u64).sum();
    loop {
        let c = ledger
            .stats(1, touchpoint::delivery::StatsScope::Campaign, "cmp-sim")
            .await
            .unwrap();
        let done = c.succeeded + c.failed;
        if done >= want {
            return started.elapsed();
        }
        if said.elapsed() > Duration::from_secs(15) {
            said = Instant::now();
            eprintln!(
                "  … {:.0?}: {done} of {want} users final",
                started.elapsed()
            );
        }
        if started.elapsed() > limit {
            let mut states: HashMap<&'static str, usize> = HashMap::new();
            for (id, _) in dispatches {
                for b in ledger
                    .dispatch_batches(1, &id.as_str().into())
                    .await
                    .unwrap()
                {
                    *states.entry(b.state.as_str()).or_default() += 1;
                }
            }
            panic!(
                "{done} of {want} users have an outcome after {limit:?}; batches by state {states:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The data center: reads the results queue as events arrive (as it would; a FIFO queue that
/// only grows also slows moto down) and counts the events per (dispatch, gid), de-duplicating
/// messages by their `MessageDeduplicationId` as README tells consumers to (the FIFO itself
/// only does so within 5 minutes).
pub struct ResultsReader {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    per_user: Arc<Mutex<Counted>>,
    clients: Clients,
    queue: String,
}

impl ResultsReader {
    pub fn start(clients: &Clients, names: &AwsNames) -> ResultsReader {
        let stop = Arc::new(AtomicBool::new(false));
        let per_user: Arc<Mutex<Counted>> = Arc::default();
        let queue = names.results_queue_url.clone().unwrap();
        let task = {
            let (stop, per_user, clients, queue) = (
                Arc::clone(&stop),
                Arc::clone(&per_user),
                clients.clone(),
                queue.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let bodies = drain_with_ids(&clients, &queue).await;
                    count_events(&per_user, &bodies);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        ResultsReader {
            stop,
            task,
            per_user,
            clients: clients.clone(),
            queue,
        }
    }

    /// Stops reading, reads what is left, and answers the events per user and how many
    /// messages came again with a deduplication id already seen.
    pub async fn finish(self) -> Counted {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let bodies = drain_with_ids(&self.clients, &self.queue).await;
        count_events(&self.per_user, &bodies);
        self.per_user.lock().unwrap().clone()
    }
}

/// Distinct events per (dispatch, gid) after de-duplicating on `eventId`, as README tells
/// consumers to (the FIFO queue itself only drops a message sent again within 5 minutes), and
/// how many events came again.
#[derive(Clone, Default)]
pub struct Counted {
    pub per_user: HashMap<(String, i64), usize>,
    seen: std::collections::HashSet<String>,
    pub republished: usize,
}

fn count_events(counted: &Mutex<Counted>, bodies: &[(String, String)]) {
    let mut c = counted.lock().unwrap();
    for (_, body) in bodies {
        let v: Value = serde_json::from_str(body).unwrap();
        for e in v["events"].as_array().unwrap() {
            let id = e["eventId"].as_str().expect("every event has an eventId");
            if !c.seen.insert(id.to_owned()) {
                c.republished += 1;
                continue;
            }
            *c.per_user
                .entry((
                    e["dispatchId"].as_str().unwrap().to_owned(),
                    e["gid"].as_i64().unwrap(),
                ))
                .or_default() += 1;
        }
    }
}

/// Drains a queue: every message's deduplication id (its message id on a standard queue) and
/// body (deleted as read).
async fn drain_with_ids(clients: &Clients, queue: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let got = clients
            .sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::MessageDeduplicationId,
            )
            .send()
            .await
            .unwrap();
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        // Deleted ten at a time, as a consumer does (the scenarios' peer serves every request
        // in turn: the reader's should not weigh on what is measured).
        let handles: Vec<String> = messages
            .iter()
            .map(|m| m.receipt_handle.clone().unwrap())
            .collect();
        for m in messages {
            let dedup = m
                .attributes
                .as_ref()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageDeduplicationId)
                })
                .cloned()
                .unwrap_or_else(|| m.message_id.clone().unwrap_or_default());
            out.push((dedup, m.body.clone().unwrap_or_default()));
        }
        delete_batch(&clients.sqs, queue, handles.into_iter()).await;
    }
    out
}

/// Deletes up to ten messages in one request (failures leave them to come back).
async fn delete_batch(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    handles: impl Iterator<Item = String>,
) {
    let entries: Vec<_> = handles
        .enumerate()
        .map(|(i, handle)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(handle)
                .build()
                .unwrap()
        })
        .collect();
    let _ = sqs
        .delete_message_batch()
        .queue_url(queue)
        .set_entries(Some(entries))
        .send()
        .await;
}

/// Drains a queue: every message body (deleted as read).
pub async fn drain(clients: &Clients, queue: &str) -> Vec<String> {
    drain_with_ids(clients, queue)
        .await
        .into_iter()
        .map(|(_, body)| body)
        .collect()
}

/// The figures every scenario prints and asserts on.
#[derive(Debug, Default)]
pub struct Figures {
    pub succeeded: usize,
    pub failed_by_reason: HashMap<String, usize>,
    pub max_attempts: u32,
    pub max_receives: u64,
    pub killed: u64,
    /// Batches a receiver got more often than it answered with a transient failure, plus one.
    pub sent_twice: usize,
    pub dead_lettered: usize,
    pub invocations: u64,
    /// Users with exactly one results event / with more than one (after de-duplicating on
    /// `eventId`).
    pub one_event: usize,
    pub repeated_events: usize,
    /// Events published again (after a crash, or by two deliveries that found the same
    /// settlement), with the same `eventId`.
    pub republished: usize,
}

impl Figures {
    /// From the ledger, the results queue (when there is one), the dead-letter queue and the mapping's stats (the
    /// batches sent twice come from the receiver: see the scenarios).
    pub async fn gather(
        clients: &Clients,
        results: Option<ResultsReader>,
        ledger: &dyn DeliveryStore,
        dispatches: &[(String, usize)],
        stats: &EsmStats,
        dlq: &str,
    ) -> Figures {
        let mut f = Figures {
            max_receives: stats.max_receive_count.load(Ordering::SeqCst),
            killed: stats.killed.load(Ordering::SeqCst),
            invocations: stats.invocations.load(Ordering::SeqCst),
            ..Figures::default()
        };
        for (id, _) in dispatches {
            for b in batches(ledger, 1, id).await {
                f.max_attempts = f.max_attempts.max(b.attempts);
                for r in &b.results {
                    match &r.status {
                        touchpoint::protocol::UserStatus::Succeeded => f.succeeded += 1,
                        touchpoint::protocol::UserStatus::Failed { reason } => {
                            let key = reason.split(':').next().unwrap_or_default().to_owned();
                            *f.failed_by_reason.entry(key).or_default() += 1;
                        }
                    }
                }
            }
        }
        f.dead_lettered = drain(clients, dlq).await.len();
        // Without the results queue (the embedded store), the caller counts the events.
        if let Some(results) = results {
            let counted = results.finish().await;
            f.republished = counted.republished;
            let per_user = counted.per_user;
            f.one_event = per_user.values().filter(|n| **n == 1).count();
            f.repeated_events = per_user.values().filter(|n| **n > 1).count();
        }
        f
    }

    pub fn print(&self, scenario: &str, elapsed: Duration, factor: f64) {
        let mut reasons: Vec<_> = self.failed_by_reason.iter().collect();
        reasons.sort();
        eprintln!(
            "scenario {scenario}: {:.1?} (×{factor} compressed); users succeeded {}, failed by reason {:?}; \
             max attempts of a batch {}; max receives of a message {}; invocations {} of which killed at the \
             deadline {}; batches sent twice {}; dead-lettered {}; users with one results event {}, with more {} \
             (events published again with their eventId: {})",
            elapsed,
            self.succeeded,
            reasons,
            self.max_attempts,
            self.max_receives,
            self.invocations,
            self.killed,
            self.sent_twice,
            self.dead_lettered,
            self.one_event,
            self.repeated_events,
            self.republished,
        );
    }
}

/// DynamoDB faults as AWS produces them, injected in the SDK's interceptor chain of the clients
/// the functions get: every `conflict_every`-th `TransactWriteItems` is cancelled with
/// `TransactionConflict` (sent to moto as a harmless `ListTables` instead, so nothing of it is
/// applied, as with a real cancellation), and every `lost_every`-th `UpdateItem` that records a
/// batch's final outcome is applied but answered with HTTP 500, as a write that timed out after
/// taking effect (the SDK tries it again and meets its own write), and every n-th of those
/// records is refused, not applied, with `TransactionConflictException` (a transaction naming
/// the same item was under way).
#[derive(Debug)]
pub struct Faults {
    conflict_every: usize,
    lost_every: usize,
    refuse_every: usize,
    transactions: AtomicUsize,
    records: AtomicUsize,
    pub conflicts: AtomicUsize,
    pub lost_answers: AtomicUsize,
    pub refused_records: AtomicUsize,
}

/// The config bag carries an attempt's injected fault from signing to deserialization (the
/// request is gone by then) in a type the SDK already stores: its app name.
const INJECTED: &str = "sim-injected-";

fn mark(cfg: &mut aws_sdk_dynamodb::config::ConfigBag, fault: &str) {
    cfg.interceptor_state()
        .store_put(aws_sdk_dynamodb::config::AppName::new(format!("{INJECTED}{fault}")).unwrap());
}

impl Faults {
    /// Every `conflict_every`-th transaction cancelled, every `lost_every`-th outcome record's
    /// answer lost, and every `refuse_every`-th outcome record refused with a conflict.
    pub fn refusing_records(
        conflict_every: usize,
        lost_every: usize,
        refuse_every: usize,
    ) -> Arc<Faults> {
        Arc::new(Faults {
            conflict_every,
            lost_every,
            refuse_every,
            transactions: AtomicUsize::new(0),
            records: AtomicUsize::new(0),
            conflicts: AtomicUsize::new(0),
            lost_answers: AtomicUsize::new(0),
            refused_records: AtomicUsize::new(0),
        })
    }

    /// `clients` with these faults in their DynamoDB client.
    pub fn clients(self: &Arc<Faults>, clients: &Clients) -> Clients {
        Clients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                clients
                    .dynamodb
                    .config()
                    .to_builder()
                    .interceptor(FaultInterceptor(Arc::clone(self)))
                    .build(),
            ),
            ..clients.clone()
        }
    }
}

/// Sends a harmless `ListTables` instead of the request, so that nothing of it is applied (its
/// answer is replaced by the fault's).
fn swallow(request: &mut aws_sdk_dynamodb::config::http::HttpRequest) {
    request
        .headers_mut()
        .insert("x-amz-target", "DynamoDB_20120810.ListTables");
    request.headers_mut().insert("content-length", "2");
    *request.body_mut() = "{}".into();
}

#[derive(Debug)]
struct FaultInterceptor(Arc<Faults>);

impl aws_sdk_dynamodb::config::Intercept for FaultInterceptor {
    fn name(&self) -> &'static str {
        "sim-faults"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextMut<
            '_,
        >,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let request = context.request_mut();
        let target = request
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .to_owned();
        let f = &self.0;
        if target.ends_with(".TransactWriteItems")
            && f.transactions.fetch_add(1, Ordering::SeqCst) % f.conflict_every
                == f.conflict_every - 1
        {
            f.conflicts.fetch_add(1, Ordering::SeqCst);
            swallow(request);
            mark(cfg, "conflict");
        } else if target.ends_with(".UpdateItem")
            && request
                .body()
                .bytes()
                .is_some_and(|b| String::from_utf8_lossy(b).contains("first_results = :first"))
        {
            let n = f.records.fetch_add(1, Ordering::SeqCst);
            if n % f.refuse_every == f.refuse_every - 1 {
                f.refused_records.fetch_add(1, Ordering::SeqCst);
                swallow(request);
                mark(cfg, "record-conflict");
            } else if n % f.lost_every == f.lost_every - 1 {
                f.lost_answers.fetch_add(1, Ordering::SeqCst);
                mark(cfg, "lost");
            }
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        // The attempt's mark, taken off so that the SDK's next attempt goes through.
        let injected = cfg
            .load::<aws_sdk_dynamodb::config::AppName>()
            .map(|a| a.to_string())
            .and_then(|a| a.strip_prefix(INJECTED).map(str::to_owned));
        cfg.interceptor_state()
            .unset::<aws_sdk_dynamodb::config::AppName>();
        let (status, body) = match injected.as_deref() {
            Some("conflict") => (
                400u16,
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","Message":"Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict]","CancellationReasons":[{"Code":"TransactionConflict","Message":"Transaction is ongoing for the item"}]}"#,
            ),
            Some("record-conflict") => (
                400,
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#,
            ),
            Some("lost") => (
                500,
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected: the write was applied, its answer lost"}"#,
            ),
            _ => return Ok(()),
        };
        let response = context.response_mut();
        *response.status_mut() = status.try_into().unwrap();
        response.headers_mut().remove("content-length");
        response.headers_mut().remove("x-amz-crc32");
        response
            .headers_mut()
            .insert("content-type", "application/x-amz-json-1.0");
        *response.body_mut() = body.into();
        Ok(())
    }
}
