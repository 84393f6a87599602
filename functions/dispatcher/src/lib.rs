//! The dispatcher: one dispatch message in, every user of it delivered and recorded.
//!
//! [`Dispatcher::handle`] is safe to call any number of times for the same message (SQS
//! redelivery, a local restart): the ledger's claims make sure no batch whose outcome is final
//! is sent again, and a batch that was in flight when a process died is sent again with the
//! same `orderNo`. Transient failures are not waited out in memory: the batch is recorded with
//! its next attempt time and [`Handled::RetryAt`] tells the queue when to redeliver.
#![forbid(unsafe_code)]

pub mod options;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use options::EnumOptions;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use touchpoint::clock::{Clock, Millis};
use touchpoint::delivery::{
    AttemptOutcome, AttemptRecord, Claim, DeliveryStore, DispatchMeta, UserResult,
};
use touchpoint::dispatch::{
    Dispatch, PlannedBatch, batch_count, order_no, plan_batch, read_dispatch, resolve_template_with,
};
use touchpoint::model::{EnumSource, Receipt, Touchpoint};
use touchpoint::ports::{StoreError, TouchpointStore};
use touchpoint::protocol::{
    ReceiptReading, TouchRequest, USER_AGENT, UserData, UserStatus, read_receipt, settle_sync,
    sign, signature_headers, truncate,
};
use touchpoint_outbound::Outbound;

/// How transient failures are retried: the waits between attempts (attempts = waits + 1).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub waits: Vec<Duration>,
    /// ± this fraction of each wait, so retries of many batches spread out.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Protocol §3: 6 attempts, waiting about 30 s, 2 min, 10 min, 30 min and 1 h.
    fn default() -> Self {
        RetryPolicy {
            waits: [30, 120, 600, 1800, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    pub fn max_attempts(&self) -> u32 {
        self.waits.len() as u32 + 1
    }

    /// Parses `30s,2m,10m,30m,1h`.
    pub fn parse(s: &str) -> Result<RetryPolicy, String> {
        let waits = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetryPolicy { waits, jitter: 0.2 })
    }

    fn wait_after(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let base = self
            .waits
            .get(attempt.saturating_sub(1) as usize)
            .copied()
            .unwrap_or_default();
        let cap = self.waits.iter().max().copied().unwrap_or_default();
        let jittered = base.mul_f64(1.0 + self.jitter * (2.0 * unit_random() - 1.0));
        // Retry-After is honoured up to the schedule's cap.
        retry_after.map_or(jittered, |r| r.min(cap).max(jittered))
    }
}

/// `500ms`, `30s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?} is not a duration like 30s")),
    })
}

fn unit_random() -> f64 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    pub retry: RetryPolicy,
    /// Requests in flight at once per touchpoint in this process.
    pub per_touchpoint_concurrency: usize,
    pub request_timeout: Duration,
    /// How long a claim holds a batch; after it, a crashed sender's batch is sent again.
    pub lease: Duration,
    /// How often async receipts are polled (protocol §2.2: every 5 minutes).
    pub receipt_poll_interval: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            retry: RetryPolicy::default(),
            per_touchpoint_concurrency: 4,
            request_timeout: touchpoint_outbound::DEFAULT_REQUEST_TIMEOUT,
            lease: Duration::from_secs(120),
            receipt_poll_interval: Duration::from_secs(300),
        }
    }
}

/// What became of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Every user of the dispatch is final (or awaits an async receipt): delete the message.
    Done,
    /// Some batches wait for a retry or another sender: redeliver the message at this time.
    RetryAt(Millis),
    /// Unreadable as a dispatch; nobody can be told per user. Delete it (and log the reason).
    Malformed(String),
}

pub struct Dispatcher {
    touchpoints: Arc<dyn TouchpointStore>,
    ledger: Arc<dyn DeliveryStore>,
    outbound: Outbound,
    clock: Arc<dyn Clock>,
    cfg: DispatcherConfig,
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
    options: Arc<EnumOptions>,
}

/// The outcome of one HTTP exchange with a receiver.
struct Exchange {
    http_status: Option<u16>,
    latency_ms: Option<u64>,
    error: Option<String>,
    excerpt: Option<String>,
    verdict: Verdict,
}

enum Verdict {
    /// Async: the receiver accepted; `None` users await their receipt.
    Accepted(Vec<Option<UserStatus>>),
    Final(Vec<UserStatus>),
    Retry(Option<Duration>),
}

impl Dispatcher {
    pub fn new(
        touchpoints: Arc<dyn TouchpointStore>,
        ledger: Arc<dyn DeliveryStore>,
        outbound: Outbound,
        clock: Arc<dyn Clock>,
        cfg: DispatcherConfig,
    ) -> Dispatcher {
        Dispatcher {
            touchpoints,
            ledger,
            options: Arc::new(EnumOptions::new(outbound.clone(), Arc::clone(&clock))),
            outbound,
            clock,
            cfg,
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// The enum-options cache this dispatcher validates with (shared with the options API).
    pub fn options(&self) -> Arc<EnumOptions> {
        Arc::clone(&self.options)
    }

    /// Known codes of the touchpoint's API-backed enum parameters, for a dispatch not yet
    /// opened (an opened one was checked when it was accepted; a changed list must not
    /// refuse the rest of it).
    async fn api_codes(
        &self,
        dispatch: &Dispatch,
        tp: Option<&Touchpoint>,
    ) -> Result<HashMap<String, HashSet<String>>, StoreError> {
        let Some(tp) = tp else {
            return Ok(HashMap::new());
        };
        let uses_api = tp.spec.template_params.iter().any(|p| {
            matches!(
                p.enum_spec.as_ref().map(|e| &e.source),
                Some(EnumSource::Api { .. })
            ) && dispatch.template_values.contains_key(&p.identifier)
        });
        if !uses_api
            || self
                .ledger
                .dispatch(dispatch.project_id, &dispatch.dispatch_id)
                .await?
                .is_some()
        {
            return Ok(HashMap::new());
        }
        Ok(self.options.api_codes(tp).await)
    }

    /// Delivers one dispatch message as far as it can go now.
    pub async fn handle(&self, message: &Value) -> Result<Handled, StoreError> {
        self.handle_owned(message.clone()).await
    }

    /// [`Dispatcher::handle`] taking the message, which is dropped once read: while the
    /// batches go out, memory holds one copy of the users, not two.
    pub async fn handle_owned(&self, message: Value) -> Result<Handled, StoreError> {
        let read = read_dispatch(&message);
        drop(message);
        let (dispatch, problems) = match read {
            Ok(d) => d,
            Err(m) => return Ok(Handled::Malformed(m.0)),
        };
        let touchpoint = if problems.is_empty() {
            self.touchpoints
                .get(dispatch.project_id, &dispatch.touchpoint_id)
                .await?
        } else {
            None
        };
        let meta = meta_of(&dispatch, touchpoint.as_ref());
        let now = self.clock.now_ms();
        let checked = if problems.is_empty() {
            let codes = self.api_codes(&dispatch, touchpoint.as_ref()).await?;
            resolve_template_with(&dispatch, touchpoint.as_ref(), &codes)
        } else {
            Err(format!("invalid dispatch: {}", problems.join("; ")))
        };
        let (tp, template) = match (touchpoint, checked) {
            (Some(tp), Ok(template)) => (tp, template),
            (_, Err(why)) => return self.reject(&dispatch, &meta, &why, now).await,
            (None, Ok(_)) => {
                let why = format!("touchpoint {} does not exist", dispatch.touchpoint_id);
                return self.reject(&dispatch, &meta, &why, now).await;
            }
        };
        self.ledger
            .open_dispatch(
                &meta,
                dispatch.users.len() as u32,
                u32::from(tp.spec.batch_size),
                now,
            )
            .await?;
        self.deliver_all(&tp, &meta, &dispatch, &template).await
    }

    /// Ends every user of a dispatch that has no outcome yet with `why`. A dispatch that was
    /// never opened is refused whole; one that was (its touchpoint changed or vanished since,
    /// or the queue gave up on it) keeps the outcomes it has and fails only the rest.
    async fn reject(
        &self,
        dispatch: &Dispatch,
        meta: &DispatchMeta,
        why: &str,
        now: Millis,
    ) -> Result<Handled, StoreError> {
        tracing::warn!(dispatch = %dispatch.dispatch_id, project = dispatch.project_id, reason = %why, "dispatch refused");
        let opened = self
            .ledger
            .dispatch(dispatch.project_id, &dispatch.dispatch_id)
            .await?;
        match opened {
            Some(view) if view.rejected.is_none() && view.batch_size > 0 => {
                let chunks = dispatch.users.chunks(view.batch_size as usize);
                for (index, chunk) in chunks.enumerate() {
                    let order = order_no(dispatch.project_id, &dispatch.dispatch_id, index);
                    let claim = self
                        .ledger
                        .claim_batch(&view.meta, index, &order, chunk.len() as u32, now, i64::MAX)
                        .await?;
                    let (attempt, sent_at) = match claim {
                        Claim::Done => continue,
                        Claim::Send { attempt, sent_at } => (attempt, sent_at),
                        Claim::NotBefore(_) => (self.cfg.retry.max_attempts(), now),
                    };
                    let results = chunk
                        .iter()
                        .map(|u| UserResult {
                            gid: u.gid,
                            status: UserStatus::failed(why),
                        })
                        .collect();
                    self.ledger
                        .record_attempt(&AttemptRecord {
                            meta: view.meta.clone(),
                            order_no: order,
                            batch_index: index,
                            sent_at,
                            attempt,
                            http_status: None,
                            error: Some(why.to_owned()),
                            response_excerpt: None,
                            at: now,
                            outcome: AttemptOutcome::Final(results),
                        })
                        .await?;
                }
            }
            _ => {
                let gids: Vec<i64> = dispatch.users.iter().map(|u| u.gid).collect();
                self.ledger.reject_dispatch(meta, &gids, why, now).await?;
            }
        }
        Ok(Handled::Done)
    }

    /// The queue gave up on a message: every user still without an outcome fails with
    /// `reason`, so none is left pending forever.
    pub async fn give_up(&self, message: &Value, reason: &str) -> Result<(), StoreError> {
        let Ok((dispatch, _)) = read_dispatch(message) else {
            return Ok(());
        };
        let tp = self
            .touchpoints
            .get(dispatch.project_id, &dispatch.touchpoint_id)
            .await?;
        let meta = meta_of(&dispatch, tp.as_ref());
        self.reject(&dispatch, &meta, reason, self.clock.now_ms())
            .await?;
        Ok(())
    }

    /// Requests in flight at once towards this touchpoint.
    fn concurrency(&self, tp: &Touchpoint) -> usize {
        tp.spec
            .max_concurrency
            .map_or(self.cfg.per_touchpoint_concurrency, usize::from)
            .max(1)
    }

    fn timeout(&self, tp: &Touchpoint) -> Duration {
        tp.spec
            .request_timeout_seconds
            .map_or(self.cfg.request_timeout, |s| {
                Duration::from_secs(u64::from(s))
            })
    }

    fn gate(&self, tp: &Touchpoint) -> Arc<Semaphore> {
        let limit = self.concurrency(tp);
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        // Keyed by the limit too, so an edited limit takes effect at once.
        Arc::clone(
            gates
                .entry(format!("{}#{limit}", tp.id))
                .or_insert_with(|| Arc::new(Semaphore::new(limit))),
        )
    }

    async fn deliver_all(
        &self,
        tp: &Touchpoint,
        meta: &DispatchMeta,
        dispatch: &Dispatch,
        template: &Map<String, Value>,
    ) -> Result<Handled, StoreError> {
        let gate = self.gate(tp);
        let limit = self.concurrency(tp);
        let timeout = self.timeout(tp);
        let mut set = tokio::task::JoinSet::new();
        let mut retry_at: Option<Millis> = None;
        let mut first_error = None;
        // Batches run concurrently up to the touchpoint's gate; the JoinSet holds at most
        // `per_touchpoint_concurrency` + 1 tasks so a 10,000-user dispatch does not spawn
        // thousands of waiting tasks.
        let shared = Arc::new((tp.clone(), meta.clone()));
        // Each batch is mapped and rendered when it is about to go out: memory holds the
        // batches in flight, not every user's rendered data for the whole dispatch.
        let mut pending = 0..batch_count(dispatch, tp);
        loop {
            while set.len() <= limit {
                let Some(index) = pending.next() else { break };
                let batch = plan_batch(dispatch, tp, template, index);
                let permit = Arc::clone(&gate)
                    .acquire_owned()
                    .await
                    .map_err(StoreError::backend)?;
                let job = BatchJob {
                    shared: Arc::clone(&shared),
                    batch,
                    ledger: Arc::clone(&self.ledger),
                    outbound: self.outbound.clone(),
                    clock: Arc::clone(&self.clock),
                    cfg: DispatcherConfig {
                        request_timeout: timeout,
                        ..self.cfg.clone()
                    },
                };
                set.spawn(async move {
                    let out = job.run().await;
                    drop(permit);
                    out
                });
            }
            match set.join_next().await {
                None => break,
                Some(Ok(Ok(next))) => {
                    if let Some(t) = next {
                        retry_at = Some(retry_at.map_or(t, |r| r.min(t)));
                    }
                }
                Some(Ok(Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Some(Err(join)) => {
                    first_error.get_or_insert(StoreError::backend(join));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(retry_at.map_or(Handled::Done, Handled::RetryAt))
    }

    /// One real, signed request with a fresh `orderNo`, for the admin's "test send". Not
    /// recorded in the ledger or statistics.
    pub async fn test_send(
        &self,
        tp: &Touchpoint,
        users: Vec<UserData>,
        order_no: String,
    ) -> Value {
        let now = self.clock.now_ms();
        let (body, headers) = build_request(tp, &order_no, now, &users);
        let shown_headers: Map<String, Value> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(v.clone())))
            .collect();
        let request = json!({
            "method": "POST",
            "url": tp.spec.url,
            "headers": shown_headers,
            "body": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        });
        let gids: Vec<i64> = users.iter().map(|u| u.gid).collect();
        let exchange = exchange(&self.outbound, tp, body, &headers, &gids, self.timeout(tp)).await;
        let results: Vec<Value> = match &exchange.verdict {
            Verdict::Final(statuses) => gids
                .iter()
                .zip(statuses)
                .map(|(gid, s)| json!({"gid": gid, "status": s.code(), "errorMsg": s.reason()}))
                .collect(),
            Verdict::Accepted(statuses) => gids
                .iter()
                .zip(statuses)
                .map(|(gid, s)| match s {
                    Some(s) => json!({"gid": gid, "status": s.code(), "errorMsg": s.reason()}),
                    None => json!({"gid": gid, "status": "PENDING", "errorMsg": "awaiting the async receipt"}),
                })
                .collect(),
            Verdict::Retry(_) => Vec::new(),
        };
        json!({
            "orderNo": order_no,
            "request": request,
            "httpStatus": exchange.http_status,
            "latencyMs": exchange.latency_ms,
            "ok": match &exchange.verdict {
                Verdict::Final(s) => s.iter().all(|s| *s == UserStatus::Succeeded),
                Verdict::Accepted(s) => s.iter().all(|s| s.as_ref().is_none_or(|s| *s == UserStatus::Succeeded)),
                Verdict::Retry(_) => false,
            },
            "error": exchange.error,
            "responseExcerpt": exchange.excerpt,
            "results": results,
        })
    }
}

fn meta_of(d: &Dispatch, tp: Option<&Touchpoint>) -> DispatchMeta {
    DispatchMeta {
        project_id: d.project_id,
        dispatch_id: d.dispatch_id.clone(),
        space_id: d.space_id.clone(),
        campaign_id: d.campaign_id.clone(),
        strategy_id: d.strategy_id.clone(),
        touchpoint_id: d.touchpoint_id.clone(),
        touchpoint_kind: tp.map(|t| t.spec.kind),
    }
}

struct BatchJob {
    shared: Arc<(Touchpoint, DispatchMeta)>,
    batch: PlannedBatch,
    ledger: Arc<dyn DeliveryStore>,
    outbound: Outbound,
    clock: Arc<dyn Clock>,
    cfg: DispatcherConfig,
}

impl BatchJob {
    /// Sends the batch if the ledger lets us; returns when to come back, if not done.
    async fn run(self) -> Result<Option<Millis>, StoreError> {
        let (tp, meta) = &*self.shared;
        let batch = &self.batch;
        let now = self.clock.now_ms();
        let lease_until = now + (self.cfg.lease.as_millis() as i64);
        let (attempt, first_sent_at) = match self
            .ledger
            .claim_batch(
                meta,
                batch.index,
                &batch.order_no,
                batch.users.len() as u32,
                now,
                lease_until,
            )
            .await?
        {
            Claim::Done => return Ok(None),
            Claim::NotBefore(t) => return Ok(Some(t)),
            Claim::Send { attempt, sent_at } => (attempt, sent_at),
        };
        let sent_at = self.clock.now_ms();
        let (body, headers) = build_request(tp, &batch.order_no, sent_at, &batch.users);
        let gids: Vec<i64> = batch.users.iter().map(|u| u.gid).collect();
        let ex = exchange(
            &self.outbound,
            tp,
            body,
            &headers,
            &gids,
            self.cfg.request_timeout,
        )
        .await;
        let at = self.clock.now_ms();
        let (outcome, next) = match ex.verdict {
            Verdict::Final(statuses) => (final_results(&gids, statuses), None),
            Verdict::Accepted(statuses) => (self.accepted(tp, &gids, statuses, at), None),
            Verdict::Retry(retry_after) if attempt < self.cfg.retry.max_attempts() => {
                let wait = self.cfg.retry.wait_after(attempt, retry_after);
                let next = at + wait.as_millis() as i64;
                (
                    AttemptOutcome::Retry {
                        next_attempt_at: next,
                    },
                    Some(next),
                )
            }
            Verdict::Retry(_) => {
                let reason = format!(
                    "retries exhausted after {attempt} attempts: {}",
                    ex.error.as_deref().unwrap_or("transient failure")
                );
                (
                    final_results(&gids, vec![UserStatus::failed(reason); gids.len()]),
                    None,
                )
            }
        };
        if let (AttemptOutcome::Retry { .. }, Some(err)) = (&outcome, &ex.error) {
            tracing::info!(order_no = %batch.order_no, attempt, error = %err, "batch will be retried");
        }
        self.ledger
            .record_attempt(&AttemptRecord {
                meta: meta.clone(),
                order_no: batch.order_no.clone(),
                batch_index: batch.index,
                sent_at: first_sent_at,
                attempt,
                http_status: ex.http_status,
                error: ex.error,
                response_excerpt: ex.excerpt,
                at,
                outcome,
            })
            .await?;
        Ok(next)
    }
}

impl BatchJob {
    /// An async acceptance: final users now, the rest polled until the receipt timeout.
    fn accepted(
        &self,
        tp: &Touchpoint,
        gids: &[i64],
        statuses: Vec<Option<UserStatus>>,
        at: Millis,
    ) -> AttemptOutcome {
        let Receipt::Async {
            receipt_url,
            timeout_minutes,
        } = &tp.spec.receipt
        else {
            return final_results(
                gids,
                statuses
                    .into_iter()
                    .map(|s| s.unwrap_or_else(|| UserStatus::failed("no status returned")))
                    .collect(),
            );
        };
        let mut results = Vec::new();
        let mut pending = Vec::new();
        for (gid, status) in gids.iter().zip(statuses) {
            match status {
                Some(status) => results.push(UserResult { gid: *gid, status }),
                None => pending.push(*gid),
            }
        }
        if pending.is_empty() {
            return AttemptOutcome::Final(results);
        }
        AttemptOutcome::Accepted {
            results,
            pending,
            receipt_url: receipt_url.clone(),
            deadline: at + i64::from(*timeout_minutes) * 60_000,
            next_poll_at: at + self.cfg.receipt_poll_interval.as_millis() as i64,
        }
    }
}

fn final_results(gids: &[i64], statuses: Vec<UserStatus>) -> AttemptOutcome {
    AttemptOutcome::Final(
        gids.iter()
            .zip(statuses)
            .map(|(gid, status)| UserResult { gid: *gid, status })
            .collect(),
    )
}

/// The body and headers of a touch request (protocol §1).
fn build_request(
    tp: &Touchpoint,
    order_no: &str,
    now: Millis,
    users: &[UserData],
) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let token = tp.token.as_ref().map(|t| t.expose());
    let body = serde_json::to_vec(&TouchRequest {
        time_stamp: now,
        order_no,
        sign: token.map(|t| sign(t, now, order_no)),
        data_list: users,
    })
    .unwrap_or_default();
    let mut headers = vec![("user-agent", USER_AGENT.to_owned())];
    if let Some(token) = token {
        headers.extend(signature_headers(
            token,
            order_no,
            now.div_euclid(1000),
            &body,
        ));
    }
    (body, headers)
}

/// Sends one request and decides what it means for the batch (protocol §2.1, §3).
async fn exchange(
    outbound: &Outbound,
    tp: &Touchpoint,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
    gids: &[i64],
    timeout: Duration,
) -> Exchange {
    let fail_all = |reason: String| Verdict::Final(vec![UserStatus::failed(reason); gids.len()]);
    match outbound
        .post_json(&tp.spec.url, body, headers, timeout)
        .await
    {
        Err(e) => {
            let verdict = if e.retryable() {
                Verdict::Retry(None)
            } else {
                fail_all(e.to_string())
            };
            Exchange {
                http_status: None,
                latency_ms: None,
                error: Some(e.to_string()),
                excerpt: None,
                verdict,
            }
        }
        Ok(reply) => {
            let excerpt = Some(truncate(&String::from_utf8_lossy(&reply.body), 1_000))
                .filter(|s| !s.is_empty());
            let status = reply.status;
            let oversized = format!(
                "invalid receipt: the response is larger than {} bytes",
                touchpoint_outbound::MAX_RESPONSE_BYTES
            );
            let (verdict, error) = match status {
                200..=299 if reply.truncated => (fail_all(oversized.clone()), Some(oversized)),
                200..=299 if matches!(tp.spec.receipt, Receipt::Async { .. }) => {
                    match read_receipt(&reply.body, false) {
                        ReceiptReading::Statuses(mut known) => {
                            let statuses = gids.iter().map(|g| known.remove(g)).collect();
                            (Verdict::Accepted(statuses), None)
                        }
                        other => (Verdict::Final(settle_sync(gids, other).0), None),
                    }
                }
                200..=299 => {
                    let reading = read_receipt(&reply.body, true);
                    let (statuses, unknown) = settle_sync(gids, reading);
                    if !unknown.is_empty() {
                        tracing::warn!(touchpoint = %tp.id, unknown = ?unknown, "receipt named gids not in the batch; ignored");
                    }
                    (Verdict::Final(statuses), None)
                }
                300..=399 => {
                    let why = format!("HTTP {status}: redirects are not followed");
                    (fail_all(why.clone()), Some(why))
                }
                408 | 429 | 500..=599 => (
                    Verdict::Retry(reply.retry_after),
                    Some(format!("HTTP {status}")),
                ),
                _ => {
                    let why = format!("HTTP {status}");
                    (fail_all(why.clone()), Some(why))
                }
            };
            Exchange {
                http_status: Some(status),
                latency_ms: Some(reply.latency.as_millis() as u64),
                error,
                excerpt,
                verdict,
            }
        }
    }
}
