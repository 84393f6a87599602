//! The dispatcher: one dispatch message in, every user of it delivered and recorded.
//!
//! [`Dispatcher::handle`] is safe to call any number of times for the same message (SQS
//! redelivery, a local restart): the ledger's claims make sure no batch whose outcome is final
//! is sent again, and a batch that was in flight when a process died is sent again with the
//! same `orderNo`. Transient failures are not waited out in memory: the batch is recorded with
//! its next attempt time and [`Handled::RetryAt`] tells the queue when to redeliver.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use touchpoint::clock::{Clock, Millis};
use touchpoint::delivery::{
    Advance, AttemptOutcome, AttemptRecord, Claim, DeliveryStore, DispatchMeta, Progress,
    ReceiptSchedule, Settled, UserResult,
};
use touchpoint::dispatch::{
    Dispatch, Malformed, PlannedBatch, batch_users, batches_of, order_no, plan_batch_sized,
    read_dispatch, read_dispatch_text, resolve_template_with,
};
use touchpoint::ids::DispatchId;
use touchpoint::ledger::{exhausted_reason, may_claim, next_round, stalled};
use touchpoint::model::{EnumSource, ProjectId, Receipt, Touchpoint};
use touchpoint::notify::{EventType, Notification, Notifications};
use touchpoint::ports::{StoreError, TouchpointStore};
use touchpoint::protocol::UserStatus;
use touchpoint::protocol::touch_request;
use touchpoint_outbound::Outbound;
use touchpoint_receiver::limits::{ReceiverLimits, Reservation};
use touchpoint_receiver::{EnumOptions, Verdict, exchange};
use tracing::Instrument;

pub mod keys;

pub use touchpoint::ledger::{RetryPolicy, parse_duration};

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
    /// Kept free before a delivery's deadline to record the batches in flight and hand the
    /// rest back: no batch is claimed later than the request timeout plus this before it.
    pub deadline_margin: Duration,
    /// Batches given up at once when a dispatch is abandoned (storage writes only).
    pub give_up_concurrency: usize,
    /// The poison guard: deliveries of a dispatch in a row that made no progress (each crashed
    /// or failed on storage before recording anything) after which its remaining users fail.
    pub max_stalls: u32,
    /// Divides the durations a touchpoint states (its request timeout, its receipt timeout):
    /// 1 in production; compressed time in simulations.
    pub time_scale: f64,
    /// A delivery checkpoints (progress saved, outcomes counted and published) at its first
    /// outcome, at its end, and in between after [`CHECKPOINT_BATCHES`] batches,
    /// [`CHECKPOINT_USERS`] users or this long, whichever comes first: results reach the data
    /// center at most this late, and a checkpoint (about 10 write units on DynamoDB) is
    /// shared by every batch recorded in it.
    pub checkpoint_interval: Duration,
    /// When a receiver is taken for down and its touchpoint paused (the circuit breaker).
    pub health: touchpoint::health::HealthPolicy,
}

/// Outcomes a delivery holds before it checkpoints, in batches.
pub const CHECKPOINT_BATCHES: usize = 200;
/// Outcomes a delivery holds before it checkpoints, in users.
pub const CHECKPOINT_USERS: usize = 10_000;

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            retry: RetryPolicy::default(),
            per_touchpoint_concurrency: 4,
            request_timeout: touchpoint_outbound::DEFAULT_REQUEST_TIMEOUT,
            lease: Duration::from_secs(120),
            receipt_poll_interval: Duration::from_secs(300),
            deadline_margin: Duration::from_secs(5),
            give_up_concurrency: 16,
            max_stalls: 10,
            time_scale: 1.0,
            checkpoint_interval: Duration::from_secs(10),
            health: touchpoint::health::HealthPolicy::default(),
        }
    }
}

/// What became of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Every user of the dispatch is final (or awaits an async receipt): delete the message.
    Done,
    /// Some batches wait for a retry or another sender: deliver the dispatch again at this time
    /// (a new delivery: this one made progress).
    RetryAt(Millis),
    /// Stopped before the deadline with batches left, none of them sent twice and no attempt
    /// used: deliver it again at once.
    Continue,
    /// Unreadable as a dispatch; nobody can be told per user. Delete it (and log the reason).
    Malformed(String),
}

/// How a touchpoint's receipt schedule is made sure of before its batches go out.
struct ScheduleCheck {
    schedule: Arc<dyn ReceiptSchedule>,
    /// Touchpoints whose schedule this process ensured, and when.
    ensured: Mutex<HashMap<(i64, touchpoint::ids::TouchpointId), Millis>>,
}

/// A schedule ensured by this process is ensured again after this long (it may have been
/// removed behind its back).
const ENSURE_AGAIN_MS: Millis = 10 * 60 * 1000;

/// A touchpoint read shared by every dispatch that asks for it while it is under way: the
/// records of one SQS event (often one touchpoint's one-user dispatches) read it once. Nothing
/// is kept once the read is answered.
type TouchpointRead = Result<Option<Touchpoint>, String>;
type TouchpointReads = Mutex<
    HashMap<(i64, touchpoint::ids::TouchpointId), Arc<tokio::sync::OnceCell<TouchpointRead>>>,
>;

pub struct Dispatcher {
    touchpoints: Arc<dyn TouchpointStore>,
    reads: TouchpointReads,
    /// The tokens batches are signed with, kept fresh (see [`keys`]).
    keys: Arc<keys::Keys>,
    ledger: Arc<dyn DeliveryStore>,
    outbound: Outbound,
    clock: Arc<dyn Clock>,
    cfg: DispatcherConfig,
    limits: Arc<ReceiverLimits>,
    options: Arc<EnumOptions>,
    schedules: Option<ScheduleCheck>,
    /// Where completed dispatches and batches out of retries are told.
    notifications: Arc<Notifications>,
}

/// Where a batch stands after a delivery looked at it.
enum BatchStatus {
    /// Final or accepted.
    Finished,
    /// Waiting until then (a retry, or another sender's lease).
    Waiting(Millis),
    /// Claimed, and not sent: no slot or pace came in time. Handed back at once: a later
    /// delivery sends it, and no attempt was used.
    Unsent,
    /// Claimed, and not sent because the touchpoint is paused (by an admin or its circuit
    /// breaker) until then at least; handed back, no attempt used.
    Paused(Millis),
}

/// How often a delivery looks again at a touchpoint an admin paused.
pub const PAUSE_RECHECK: Duration = Duration::from_secs(30);

/// An opened dispatch whose remaining users fail.
struct Remaining<'a> {
    meta: &'a DispatchMeta,
    dispatch: &'a Dispatch,
    batch_size: usize,
    progress: Progress,
}

impl<'a> Plan<'a> {
    /// The dispatch's users still without an outcome, as of `progress`.
    fn remaining(&self, progress: Progress) -> Remaining<'a> {
        Remaining {
            meta: self.meta,
            dispatch: self.dispatch,
            batch_size: self.batch_size,
            progress,
        }
    }
}

/// A dispatch ready to deliver: read, checked, opened.
struct Plan<'a> {
    tp: &'a Touchpoint,
    meta: &'a DispatchMeta,
    dispatch: &'a Dispatch,
    template: &'a Map<String, Value>,
    batch_size: usize,
    progress: Progress,
    /// Its only batch's claim opens it ([`touchpoint::delivery::Opened::by_claim`]).
    by_claim: bool,
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
            keys: Arc::new(keys::Keys::new(Arc::clone(&touchpoints))),
            touchpoints,
            reads: Mutex::default(),
            ledger,
            options: Arc::new(EnumOptions::new(outbound.clone(), Arc::clone(&clock))),
            outbound,
            limits: Arc::new(
                ReceiverLimits::new(cfg.per_touchpoint_concurrency)
                    .with_time_scale(cfg.time_scale)
                    .with_health_policy(cfg.health.clone())
                    .with_clock(Arc::clone(&clock)),
            ),
            clock,
            cfg,
            schedules: None,
            notifications: Arc::new(Notifications::none()),
        }
    }

    /// Tells completed dispatches, batches out of retries and the receivers' circuit breakers
    /// (this dispatcher's limits) to `notifications`.
    pub fn with_notifications(mut self, notifications: Arc<Notifications>) -> Dispatcher {
        if notifications.is_wired() {
            self.limits.notify_with(Arc::clone(&notifications));
        }
        self.notifications = notifications;
        self
    }

    /// Makes sure an async touchpoint's receipt schedule exists before its batches go out, so
    /// that a schedule whose creation failed (or that was removed) heals: an accepted batch is
    /// always polled.
    pub fn with_receipt_schedule(mut self, schedule: Arc<dyn ReceiptSchedule>) -> Dispatcher {
        self.schedules = Some(ScheduleCheck {
            schedule,
            ensured: Mutex::new(HashMap::new()),
        });
        self
    }

    pub fn config(&self) -> &DispatcherConfig {
        &self.cfg
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

    /// Delivers one dispatch message as far as it can go now, with no time limit.
    pub async fn handle(&self, message: &Value) -> Result<Handled, StoreError> {
        self.handle_until(message.clone(), Millis::MAX).await
    }

    /// [`Dispatcher::handle`] taking the message, which is dropped once read: while the
    /// batches go out, memory holds one copy of the users, not two.
    pub async fn handle_owned(&self, message: Value) -> Result<Handled, StoreError> {
        self.handle_until(message, Millis::MAX).await
    }

    /// Delivers one dispatch message as far as it can go before `deadline` (epoch ms): no batch
    /// is claimed unless it can be sent and recorded in time; what is left is handed back
    /// ([`Handled::Continue`]).
    pub async fn handle_until(
        &self,
        message: Value,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        self.handle_delivery(message, 1, deadline).await
    }

    /// [`Dispatcher::handle_until`] for a message the queue delivered `receives` times in a row
    /// (a fresh message once a delivery made progress; more after crashes or storage errors).
    /// A redelivery after a delivery that crashed having made progress is handed on at once
    /// ([`Handled::Continue`]), so the queue's receive count only ever counts deliveries without
    /// progress; past [`DispatcherConfig::max_stalls`] of those in a row the dispatch is given up.
    pub async fn handle_delivery(
        &self,
        message: Value,
        receives: u32,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        let read = read_dispatch(&message);
        drop(message);
        self.deliver(read, receives, deadline).await
    }

    /// [`Dispatcher::handle_delivery`] for a message as the queue holds it: its text is read
    /// once, straight into the typed dispatch (what is not JSON is [`Handled::Malformed`]).
    pub async fn handle_text(
        &self,
        text: &str,
        receives: u32,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        self.deliver(read_dispatch_text(text), receives, deadline)
            .await
    }

    async fn deliver(
        &self,
        read: Result<(Dispatch, Vec<String>), Malformed>,
        receives: u32,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        let (dispatch, problems) = match read {
            Ok(d) => d,
            Err(m) => return Ok(Handled::Malformed(m.0)),
        };
        // Every line logged for this dispatch (and its batches) names it.
        let span = tracing::info_span!(
            "dispatch",
            project = dispatch.project_id,
            dispatch_id = %dispatch.dispatch_id,
        );
        let (project, dispatch_id) = (dispatch.project_id, dispatch.dispatch_id.clone());
        let handled = self
            .deliver_read(dispatch, problems, receives, deadline)
            .instrument(span)
            .await;
        if matches!(handled, Ok(Handled::Done)) {
            self.tell_completed(project, &dispatch_id).await;
        }
        handled
    }

    /// Tells `dispatch.completed` once every user of the dispatch has an outcome (a delivery
    /// that leaves users waiting for their receipts leaves it to the receipt poller).
    async fn tell_completed(&self, project: ProjectId, dispatch_id: &DispatchId) {
        if !self
            .notifications
            .wants(project, EventType::DispatchCompleted)
            .await
        {
            return;
        }
        match self.ledger.dispatch(project, dispatch_id).await {
            Ok(Some(view)) => {
                if let Some(n) = touchpoint::notify::dispatch_completed(&view, self.clock.now_ms())
                {
                    self.notifications.notify(n).await;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the dispatch to tell its completion");
            }
        }
    }

    async fn deliver_read(
        &self,
        dispatch: Dispatch,
        problems: Vec<String>,
        receives: u32,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        let touchpoint = if problems.is_empty() {
            self.touchpoint(dispatch.project_id, &dispatch.touchpoint_id)
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
            (_, Err(why)) => return self.reject(&dispatch, &meta, &why, deadline).await,
            (None, Ok(_)) => {
                let why = format!("touchpoint {} does not exist", dispatch.touchpoint_id);
                return self.reject(&dispatch, &meta, &why, deadline).await;
            }
        };
        self.ensure_schedule(&tp, now).await?;
        let opened = self
            .ledger
            .open_dispatch(
                &meta,
                dispatch.users.len() as u32,
                u32::from(tp.spec.batch_size),
                now,
            )
            .await?;
        if !opened.new && opened.batch_size == 0 {
            // Refused whole when it was first delivered: every user has that outcome.
            return Ok(Handled::Done);
        }
        let plan = Plan {
            tp: &tp,
            meta: &meta,
            dispatch: &dispatch,
            template: &template,
            // The batches are those planned when it was opened, whatever the touchpoint's batch
            // size is now: a redelivery never sends a user under a second orderNo.
            batch_size: (opened.batch_size as usize).max(1),
            progress: opened.progress,
            by_claim: opened.by_claim,
        };
        let abandoned = plan.progress.abandoned.clone().or_else(|| {
            let why = stalled(opened.stalls + 1, self.cfg.max_stalls);
            if let Some(why) = &why {
                tracing::error!(dispatch = %meta.dispatch_id, reason = %why, "giving up on a dispatch");
            }
            why
        });
        if abandoned.is_none() && receives > 1 && opened.stalls == 0 && !opened.new {
            // The last delivery of this message made progress and then died: continue on a
            // fresh message.
            return Ok(Handled::Continue);
        }
        if let Some(why) = abandoned {
            let left = Remaining {
                meta: plan.meta,
                dispatch: plan.dispatch,
                batch_size: plan.batch_size,
                progress: plan.progress,
            };
            return self.fail_remaining(&left, &why, deadline).await;
        }
        self.deliver_all(plan, deadline).await
    }

    /// Reads a touchpoint, sharing a read already under way for it (see [`TouchpointReads`]).
    async fn touchpoint(
        &self,
        project: i64,
        id: &touchpoint::ids::TouchpointId,
    ) -> Result<Option<Touchpoint>, StoreError> {
        let key = (project, id.clone());
        let cell = {
            let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(reads.entry(key.clone()).or_default())
        };
        let read = cell
            .get_or_init(|| async {
                let read = self
                    .touchpoints
                    .get(project, id)
                    .await
                    .map_err(|e| e.to_string());
                if let Ok(Some(tp)) = &read {
                    self.keys.note(tp);
                }
                // Whoever asks from now on reads afresh.
                let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
                if reads.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    reads.remove(&key);
                }
                read
            })
            .await;
        read.clone().map_err(|e| StoreError::Backend(e.into()))
    }

    async fn ensure_schedule(&self, tp: &Touchpoint, now: Millis) -> Result<(), StoreError> {
        let Some(check) = &self.schedules else {
            return Ok(());
        };
        if !matches!(tp.spec.receipt, Receipt::Async { .. }) {
            return Ok(());
        }
        let key = (tp.project_id, tp.id.clone());
        let fresh = {
            let ensured = check.ensured.lock().unwrap_or_else(|p| p.into_inner());
            ensured
                .get(&key)
                .is_some_and(|at| now - at < ENSURE_AGAIN_MS)
        };
        if !fresh {
            check.schedule.ensure(tp.project_id, &tp.id).await?;
            check
                .ensured
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, now);
        }
        Ok(())
    }

    /// Ends every user of a dispatch that has no outcome yet with `why`. A dispatch that was
    /// never opened is refused whole; one that was (its touchpoint changed or vanished since,
    /// or the poison guard gave up on it) keeps the outcomes it has and fails only the rest.
    async fn reject(
        &self,
        dispatch: &Dispatch,
        meta: &DispatchMeta,
        why: &str,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        let why = &touchpoint::protocol::truncate(why, touchpoint::delivery::REASON_MAX_CHARS);
        tracing::warn!(dispatch = %dispatch.dispatch_id, project = dispatch.project_id, reason = %why, "dispatch refused");
        let now = self.clock.now_ms();
        let opened = self
            .ledger
            .dispatch(dispatch.project_id, &dispatch.dispatch_id)
            .await?;
        match opened {
            Some(view) if view.rejected.is_none() && view.batch_size > 0 => {
                let opened = self
                    .ledger
                    .open_dispatch(&view.meta, view.users, view.batch_size, now)
                    .await?;
                let left = Remaining {
                    meta: &view.meta,
                    dispatch,
                    batch_size: view.batch_size as usize,
                    progress: opened.progress,
                };
                self.fail_remaining(&left, why, deadline).await
            }
            _ => {
                let gids: Vec<i64> = dispatch.users.iter().map(|u| u.gid).collect();
                self.ledger.reject_dispatch(meta, &gids, why, now).await?;
                Ok(Handled::Done)
            }
        }
    }

    /// The poison guard gave up on a message: every user still without an outcome fails with
    /// `reason`, so none is left pending forever. Bounded by `deadline` and resumable: the
    /// reason is saved on the dispatch first, and every later delivery goes on failing what is
    /// left instead of sending.
    pub async fn give_up_until(
        &self,
        message: &Value,
        reason: &str,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        self.give_up_read(read_dispatch(message), reason, deadline)
            .await
    }

    /// [`Dispatcher::give_up_until`] for a message's text.
    pub async fn give_up_text(
        &self,
        text: &str,
        reason: &str,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        self.give_up_read(read_dispatch_text(text), reason, deadline)
            .await
    }

    /// Gives up on a read dispatch, and tells its completion when that completes it.
    async fn give_up_read(
        &self,
        read: Result<(Dispatch, Vec<String>), Malformed>,
        reason: &str,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        let id = read
            .as_ref()
            .ok()
            .map(|(d, _)| (d.project_id, d.dispatch_id.clone()));
        let handled = self.give_up_dispatch(read, reason, deadline).await;
        if let (Ok(Handled::Done), Some((project, dispatch_id))) = (&handled, id) {
            self.tell_completed(project, &dispatch_id).await;
        }
        handled
    }

    async fn give_up_dispatch(
        &self,
        read: Result<(Dispatch, Vec<String>), Malformed>,
        reason: &str,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        // What cannot be read goes where unreadable messages go, with its reason, also when
        // it is being given up on (it would otherwise disappear without a record).
        let (dispatch, _) = match read {
            Ok(d) => d,
            Err(m) => return Ok(Handled::Malformed(m.0)),
        };
        let tp = self
            .touchpoints
            .get(dispatch.project_id, &dispatch.touchpoint_id)
            .await?;
        let meta = meta_of(&dispatch, tp.as_ref());
        self.reject(&dispatch, &meta, reason, deadline).await
    }

    /// [`Dispatcher::give_up_until`] with no time limit.
    pub async fn give_up(&self, message: &Value, reason: &str) -> Result<(), StoreError> {
        self.give_up_until(message, reason, Millis::MAX).await?;
        Ok(())
    }

    /// Fails every batch of an opened dispatch that has no outcome yet, as far as `deadline`
    /// allows.
    async fn fail_remaining(
        &self,
        plan: &Remaining<'_>,
        why: &str,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        let meta = plan.meta;
        let why = &touchpoint::protocol::truncate(why, touchpoint::delivery::REASON_MAX_CHARS);
        let batches = batches_of(plan.dispatch, plan.batch_size) as u32;
        let mut progress = plan.progress.clone();
        if progress.abandoned.as_deref() != Some(why) {
            progress = self
                .checkpoint(meta, batches, (&[], &[]), Some(why), &[])
                .await?;
        }
        let work: Vec<u32> = progress.work(batches).collect();
        let mut looked = Vec::new();
        let mut finished = Vec::new();
        let mut settled = Vec::new();
        let mut stopped = false;
        let mut set = tokio::task::JoinSet::new();
        let mut first_error = None;
        let mut work = work.into_iter();
        loop {
            while set.len() < self.cfg.give_up_concurrency.max(1) {
                let Some(index) = work.next() else { break };
                if !may_claim(self.clock.now_ms(), deadline, self.cfg.deadline_margin) {
                    stopped = true;
                    break;
                }
                looked.push(index);
                let ledger = Arc::clone(&self.ledger);
                let clock = Arc::clone(&self.clock);
                let meta = meta.clone();
                let gids: Vec<i64> = batch_users(plan.dispatch, plan.batch_size, index as usize)
                    .iter()
                    .map(|u| u.gid)
                    .collect();
                let why = why.to_owned();
                let lease = self.cfg.lease;
                let max_attempts = self.cfg.retry.max_attempts();
                set.spawn(async move {
                    fail_batch(
                        &*ledger,
                        &*clock,
                        &meta,
                        index as usize,
                        &gids,
                        &why,
                        lease,
                        max_attempts,
                    )
                    .await
                    .map(|settled| (index, settled))
                });
            }
            if stopped && set.is_empty() {
                break;
            }
            match set.join_next().await {
                None => break,
                Some(Ok(Ok((index, one)))) => {
                    finished.push(index);
                    settled.extend(one);
                }
                Some(Ok(Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Some(Err(join)) => {
                    first_error.get_or_insert(StoreError::backend(join));
                }
            }
        }
        let next = self
            .checkpoint(meta, batches, (&looked, &finished), None, &settled)
            .await?;
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(if next.is_complete(batches) {
            Handled::Done
        } else {
            Handled::Continue
        })
    }

    /// Saves how far a delivery came and counts and publishes the outcomes it holds (see
    /// `DeliveryLedger::checkpoint`).
    async fn checkpoint(
        &self,
        meta: &DispatchMeta,
        batches: u32,
        (looked, finished): (&[u32], &[u32]),
        abandoned: Option<&str>,
        settled: &[Settled],
    ) -> Result<Progress, StoreError> {
        let advance = Advance {
            batches,
            looked,
            finished,
            abandoned,
            settled,
        };
        self.ledger
            .checkpoint(meta, &advance, self.clock.now_ms())
            .await
    }

    /// Shares the limits of the receivers with the other senders of this process (receipt
    /// polls, test sends), so that one touchpoint's limits hold for all of them.
    pub fn with_limits(mut self, limits: Arc<ReceiverLimits>) -> Dispatcher {
        if self.notifications.is_wired() {
            limits.notify_with(Arc::clone(&self.notifications));
        }
        self.limits = limits;
        self
    }

    /// The limits of the receivers this dispatcher sends to.
    pub fn limits(&self) -> Arc<ReceiverLimits> {
        Arc::clone(&self.limits)
    }

    fn timeout(&self, tp: &Touchpoint) -> Duration {
        tp.spec
            .request_timeout(self.cfg.request_timeout, self.cfg.time_scale)
    }

    /// Why the users still waiting on `tp` should fail now, if they should: its receiver has
    /// been down for longer than the retry horizon, so its pause does not keep them waiting
    /// beyond what their retries would have. Decided only during a cool-down (a failed
    /// probe's: once it ends a probe goes, and a receiver back resumes them), on the breaker
    /// read afresh (what this process remembers costs nothing to look at; a read that fails
    /// decides nothing).
    async fn down_past_horizon(&self, tp: &Touchpoint) -> Option<String> {
        let horizon = self.cfg.retry.horizon().as_millis() as i64;
        let past = |b: &touchpoint::health::Breaker| {
            let now = self.clock.now_ms();
            now - b.since > horizon && now < b.until
        };
        let b = match self.limits.breaker_known(tp) {
            Some(b) if past(&b) => self
                .limits
                .breaker_now(tp)
                .await
                .ok()
                .flatten()
                .filter(past),
            _ => None,
        }?;
        Some(format!(
            "receiver down since {} ({}): paused past the retry horizon",
            touchpoint::clock::rfc3339(b.since),
            b.reason
        ))
    }

    /// Fails the users still waiting on a receiver down past the retry horizon, and tells
    /// `batch.retries_exhausted` for the dispatch (`orderNo` null: its waiting batches).
    async fn fail_past_horizon(
        &self,
        left: &Remaining<'_>,
        why: &str,
        deadline: Millis,
    ) -> Result<Handled, StoreError> {
        let handled = self.fail_remaining(left, why, deadline).await?;
        let meta = left.meta;
        let n = Notification::new(
            meta.project_id,
            EventType::BatchRetriesExhausted,
            &format!("{}.horizon", meta.dispatch_id),
            self.clock.now_ms(),
            serde_json::json!({
                "projectId": meta.project_id,
                "touchpointId": meta.touchpoint_id,
                "campaignId": meta.campaign_id,
                "dispatchId": meta.dispatch_id,
                "orderNo": null,
                "reason": why,
            }),
        );
        self.notifications.notify(n).await;
        Ok(handled)
    }

    async fn deliver_all(&self, plan: Plan<'_>, deadline: Millis) -> Result<Handled, StoreError> {
        let tp = plan.tp;
        if let Some(why) = self.down_past_horizon(tp).await {
            let left = plan.remaining(plan.progress.clone());
            return self.fail_past_horizon(&left, &why, deadline).await;
        }
        let limit = self.limits.concurrency(tp);
        let timeout = self.timeout(tp);
        // No batch is claimed unless it can be sent, answered and recorded before the deadline.
        let budget = timeout + self.cfg.deadline_margin;
        let started = self.clock.now_ms();
        let batches = batches_of(plan.dispatch, plan.batch_size) as u32;
        let mut set = tokio::task::JoinSet::new();
        let mut waits: Vec<Millis> = Vec::new();
        let mut looked: Vec<u32> = Vec::new();
        let mut finished: Vec<u32> = Vec::new();
        let mut first_error = None;
        let mut stopped = false;
        // The touchpoint is paused: claim nothing more, and come back then.
        let mut paused_at: Option<Millis> = None;
        let recheck = PAUSE_RECHECK.div_f64(self.cfg.time_scale.max(f64::MIN_POSITIVE));
        let mut marked = false;
        // Outcomes recorded but not yet counted and published (see `DeliveryLedger::checkpoint`).
        let mut held: Vec<Settled> = Vec::new();
        let mut held_users = 0usize;
        let mut last_checkpoint = started;
        let mut checkpoint_failed = false;
        // What the last checkpoint wrote, and how many batches it had seen looked at and
        // finished: an end checkpoint with nothing new to write is skipped (a one-user
        // dispatch checkpoints once, not twice).
        let mut checkpointed: Option<(Progress, usize, usize)> = None;
        // Batches run concurrently up to the touchpoint's gate; the JoinSet holds at most
        // `per_touchpoint_concurrency` + 1 tasks so a 10,000-user dispatch does not spawn
        // thousands of waiting tasks.
        let shared = Arc::new((tp.clone(), plan.meta.clone()));
        // Each batch is mapped and rendered when it is about to go out: memory holds the
        // batches in flight, not every user's rendered data for the whole dispatch.
        let work: Vec<u32> = plan.progress.work(batches).collect();
        let mut pending = work.into_iter();
        loop {
            // Storage failing: claim nothing more, finish what is in flight.
            while !stopped && paused_at.is_none() && first_error.is_none() && set.len() <= limit {
                let Some(index) = pending.next() else { break };
                let now = self.clock.now_ms();
                if !may_claim(now, deadline, budget) {
                    stopped = true;
                    break;
                }
                // Waiting for the gate (other dispatches of this touchpoint hold it) ends in
                // time to hand the rest back.
                let room = Duration::from_millis(
                    (deadline.saturating_sub(now))
                        .saturating_sub(budget.as_millis() as i64)
                        .max(0) as u64,
                );
                // A place among this process's requests to the touchpoint: the slot and the
                // pace come once the batch is claimed.
                let Some(reserved) = self.limits.reserve(tp, room).await else {
                    match self.limits.paused_until(tp, recheck) {
                        Some(at) => paused_at = Some(at),
                        None => stopped = true,
                    }
                    break;
                };
                if !may_claim(self.clock.now_ms(), deadline, budget) {
                    stopped = true;
                    break;
                }
                looked.push(index);
                let batch = plan_batch_sized(
                    plan.dispatch,
                    tp,
                    plan.template,
                    plan.batch_size,
                    index as usize,
                );
                let job = BatchJob {
                    opening: plan.by_claim.then_some(plan.batch_size as u32),
                    reserved: Some(reserved),
                    send_by: deadline - budget.as_millis() as i64,
                    shared: Arc::clone(&shared),
                    keys: Arc::clone(&self.keys),
                    limits: Arc::clone(&self.limits),
                    recheck,
                    batch,
                    ledger: Arc::clone(&self.ledger),
                    outbound: self.outbound.clone(),
                    clock: Arc::clone(&self.clock),
                    cfg: DispatcherConfig {
                        request_timeout: timeout,
                        ..self.cfg.clone()
                    },
                    notifications: Arc::clone(&self.notifications),
                };
                let span = tracing::debug_span!("batch", order_no = %job.batch.order_no);
                set.spawn(
                    async move {
                        let out = job.run().await;
                        out.map(|(status, recorded, settled)| (index, status, recorded, settled))
                    }
                    .instrument(span),
                );
            }
            let joined = set.join_next().await;
            let recorded = matches!(&joined, Some(Ok(Ok((_, _, true, _)))));
            match joined {
                None => break,
                Some(Ok(Ok((index, status, _, one)))) => {
                    match status {
                        BatchStatus::Finished => finished.push(index),
                        BatchStatus::Waiting(t) => waits.push(t),
                        BatchStatus::Unsent => stopped = true,
                        BatchStatus::Paused(at) => {
                            paused_at = Some(paused_at.map_or(at, |p| p.min(at)));
                        }
                    }
                    if let Some(one) = one {
                        held_users += one.results.len();
                        held.push(one);
                    }
                }
                Some(Ok(Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Some(Err(join)) => {
                    first_error.get_or_insert(StoreError::backend(join));
                }
            }
            // The first outcome recorded is checkpointed at once (this delivery made progress:
            // a crash later in it does not count as a delivery without progress); then the
            // outcomes held are counted and published every so often.
            let due = (recorded && !marked)
                || (!held.is_empty()
                    && (held.len() >= CHECKPOINT_BATCHES
                        || held_users >= CHECKPOINT_USERS
                        || self.clock.now_ms() - last_checkpoint
                            >= self.cfg.checkpoint_interval.as_millis() as i64));
            if due && !checkpoint_failed {
                // A checkpoint that fails stops the claiming; the batches in flight are still
                // recorded (not dropped with the join set) and the error ends the delivery.
                match self
                    .checkpoint(plan.meta, batches, (&looked, &finished), None, &held)
                    .await
                {
                    Ok(written) => {
                        marked = true;
                        held.clear();
                        held_users = 0;
                        last_checkpoint = self.clock.now_ms();
                        checkpointed = Some((written, looked.len(), finished.len()));
                    }
                    Err(e) => {
                        checkpoint_failed = true;
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        let now = self.clock.now_ms();
        // A delivery that ends without an error made progress (or had none to make); one that
        // failed on storage counts as progress only if it recorded an outcome.
        let next = if let Some((written, _, _)) = checkpointed
            .take()
            .filter(|(_, l, f)| held.is_empty() && (*l, *f) == (looked.len(), finished.len()))
        {
            written
        } else if first_error.is_none() || marked {
            self.checkpoint(plan.meta, batches, (&looked, &finished), None, &held)
                .await?
        } else {
            plan.progress.after(batches, &looked, &finished)
        };
        if let Some(e) = first_error {
            return Err(e);
        }
        if stopped {
            tracing::info!(dispatch = %plan.meta.dispatch_id, left = next.work(batches).count(), "time limit near: handing the rest back");
            return Ok(Handled::Continue);
        }
        if paused_at.is_some()
            && let Some(why) = self.down_past_horizon(tp).await
        {
            return self
                .fail_past_horizon(&plan.remaining(next), &why, deadline)
                .await;
        }
        waits.extend(paused_at);
        Ok(match next_round(now, &waits, now - started) {
            Some(at) => Handled::RetryAt(at),
            None => Handled::Done,
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
    /// The claim opens the dispatch, planned in batches of this size (see
    /// [`touchpoint::delivery::DeliveryLedger::claim_opening`]).
    opening: Option<u32>,
    /// A place among the touchpoint's requests; its pass (given back with the receiver's
    /// answer) is waited for once the batch is claimed.
    reserved: Option<Reservation>,
    /// The latest a request may go out at and still be recorded before the delivery's deadline.
    send_by: Millis,
    shared: Arc<(Touchpoint, DispatchMeta)>,
    keys: Arc<keys::Keys>,
    limits: Arc<ReceiverLimits>,
    /// How soon to look again at a touchpoint an admin paused.
    recheck: Duration,
    batch: PlannedBatch,
    ledger: Arc<dyn DeliveryStore>,
    outbound: Outbound,
    clock: Arc<dyn Clock>,
    cfg: DispatcherConfig,
    notifications: Arc<Notifications>,
}

impl BatchJob {
    /// Ends this claim unsent at `now` (no attempt used); a failed hand-back leaves it to the
    /// lease.
    async fn hand_back(&self, meta: &DispatchMeta, attempt: u32, now: Millis) {
        if let Err(e) = self
            .ledger
            .hand_back(meta, &self.batch.order_no, attempt, now)
            .await
        {
            tracing::warn!(order_no = %self.batch.order_no, error = %e, "cannot hand a claimed batch back");
        }
    }

    /// Sends the batch if the ledger lets us; says where it stands afterwards, whether an
    /// outcome was recorded, and the outcome the checkpoint must count, if any.
    async fn run(mut self) -> Result<(BatchStatus, bool, Option<Settled>), StoreError> {
        let (tp, meta) = &*self.shared;
        let batch = &self.batch;
        let now = self.clock.now_ms();
        let lease_until = now + (self.cfg.lease.as_millis() as i64);
        let claim = match self.opening {
            Some(batch_size) => {
                self.ledger
                    .claim_opening(meta, &batch.order_no, batch_size, now, lease_until)
                    .await?
            }
            None => {
                self.ledger
                    .claim_batch(
                        meta,
                        batch.index,
                        &batch.order_no,
                        batch.users.len() as u32,
                        now,
                        lease_until,
                    )
                    .await?
            }
        };
        let (attempt, first_sent_at, counted) = match claim {
            Claim::Done => return Ok((BatchStatus::Finished, false, None)),
            Claim::Settled(s) => return Ok((BatchStatus::Finished, false, Some(s))),
            Claim::NotBefore(t) => return Ok((BatchStatus::Waiting(t), false, None)),
            Claim::Send {
                attempt,
                sent_at,
                counted,
            } => (attempt, sent_at, counted),
        };
        // The slot and the pace, in time for the request to be answered and recorded within the
        // claim's lease (another delivery may take the batch once it runs out), and before the
        // delivery's deadline.
        let margin = (self.cfg.request_timeout + self.cfg.deadline_margin).as_millis() as i64;
        let latest = self.send_by.min(lease_until - margin);
        let within = Duration::from_millis((latest - self.clock.now_ms()).max(0) as u64);
        let pass = match self.reserved.take() {
            Some(reserved) => match reserved.pass(within).await {
                Some(pass) => Some(pass),
                None => {
                    // Sent nothing: the claim ends now, and a later delivery sends the batch
                    // without waiting for its lease (a failed hand-back leaves it to the lease).
                    let now = self.clock.now_ms();
                    self.hand_back(meta, attempt, now).await;
                    let status = match self.limits.paused_until(tp, self.recheck) {
                        Some(at) => BatchStatus::Paused(at),
                        None => BatchStatus::Unsent,
                    };
                    return Ok((status, false, None));
                }
            },
            None => None,
        };
        // The tokens as they are now: a rotation during the delivery signs this batch. An
        // admin's pause since the delivery began sends it back unsent.
        let keys = self.keys.current(tp).await;
        if keys.paused {
            let now = self.clock.now_ms();
            self.hand_back(meta, attempt, now).await;
            let recheck = now + self.recheck.as_millis() as Millis;
            return Ok((BatchStatus::Paused(recheck), false, None));
        }
        let sent_at = self.clock.now_ms();
        let signed = touch_request(
            &keys.signing(sent_at),
            &batch.order_no,
            sent_at,
            &batch.users,
        );
        let (body, headers) = (signed.body, signed.headers);
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
        // The answer paces every request to this touchpoint (an overload slows them all, its
        // `Retry-After` holds them) and counts towards its receiver's health.
        if let Some(pass) = pass {
            pass.answered(ex.answer);
        }
        let mut exhausted = None;
        let (outcome, status) = match ex.verdict {
            Verdict::Final(statuses) => (final_results(&gids, statuses), BatchStatus::Finished),
            Verdict::Accepted(statuses) => (
                self.accepted(tp, &gids, statuses, at),
                BatchStatus::Finished,
            ),
            Verdict::Retry(retry_after) => {
                match self
                    .cfg
                    .retry
                    .wait_after(counted, retry_after, unit_random())
                {
                    Some(wait) => {
                        let next = at + wait.as_millis() as i64;
                        (
                            AttemptOutcome::Retry {
                                next_attempt_at: next,
                            },
                            BatchStatus::Waiting(next),
                        )
                    }
                    None => {
                        let reason = exhausted_reason(counted, ex.error.as_deref());
                        exhausted = Some(reason.clone());
                        (
                            final_results(&gids, vec![UserStatus::failed(reason); gids.len()]),
                            BatchStatus::Finished,
                        )
                    }
                }
            }
        };
        if let (AttemptOutcome::Retry { .. }, Some(err)) = (&outcome, &ex.error) {
            tracing::info!(order_no = %batch.order_no, attempt, error = %err, "batch will be retried");
        }
        let settled = self
            .ledger
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
                // Whatever the receiver answered, the batch's record stays small.
                outcome: outcome.bounded(),
            })
            .await?;
        if let Some(reason) = exhausted {
            let n = Notification::new(
                meta.project_id,
                EventType::BatchRetriesExhausted,
                &batch.order_no,
                at,
                serde_json::json!({
                    "projectId": meta.project_id,
                    "touchpointId": meta.touchpoint_id,
                    "campaignId": meta.campaign_id,
                    "dispatchId": meta.dispatch_id,
                    "orderNo": batch.order_no,
                    "users": gids.len(),
                    "attempts": attempt,
                    "reason": reason,
                }),
            );
            self.notifications.notify(n).await;
        }
        Ok((status, true, settled))
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
        let minute = Duration::from_secs(60).div_f64(self.cfg.time_scale.max(f64::MIN_POSITIVE));
        let deadline = at + i64::from(*timeout_minutes) * minute.as_millis() as i64;
        AttemptOutcome::Accepted {
            results,
            pending,
            receipt_url: receipt_url.clone(),
            deadline,
            next_poll_at: touchpoint::ledger::next_poll_at(
                at,
                self.cfg.receipt_poll_interval,
                deadline,
                at,
            ),
        }
    }
}

/// Fails the users of one batch that has no outcome yet with `why` (a give-up).
#[allow(clippy::too_many_arguments)]
async fn fail_batch(
    ledger: &dyn DeliveryStore,
    clock: &dyn Clock,
    meta: &DispatchMeta,
    index: usize,
    gids: &[i64],
    why: &str,
    lease: Duration,
    max_attempts: u32,
) -> Result<Option<Settled>, StoreError> {
    let now = clock.now_ms();
    let order = order_no(meta.project_id, &meta.dispatch_id, index);
    let claim = ledger
        .claim_batch(
            meta,
            index,
            &order,
            gids.len() as u32,
            now,
            now + lease.as_millis() as i64,
        )
        .await?;
    let (attempt, sent_at) = match claim {
        Claim::Done => return Ok(None),
        Claim::Settled(s) => return Ok(Some(s)),
        Claim::Send {
            attempt, sent_at, ..
        } => (attempt, sent_at),
        Claim::NotBefore(_) => (max_attempts, now),
    };
    let results = gids
        .iter()
        .map(|gid| UserResult {
            gid: *gid,
            status: UserStatus::failed(why),
        })
        .collect();
    ledger
        .record_attempt(&AttemptRecord {
            meta: meta.clone(),
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
        .await
}

fn final_results(gids: &[i64], statuses: Vec<UserStatus>) -> AttemptOutcome {
    AttemptOutcome::Final(
        gids.iter()
            .zip(statuses)
            .map(|(gid, status)| UserResult { gid: *gid, status })
            .collect(),
    )
}
