//! The receipt poller (protocol §2.2). One [`ReceiptPoller::round`] polls every accepted batch
//! that is due — for one touchpoint, or all — at most once each: statuses it brings become
//! final and are published once, the rest stay pending for the next round, and whatever is
//! still pending at the touchpoint's receipt timeout fails with "receipt timeout".
//!
//! Rounds may overlap (a slow round and the next tick, two processes): each batch is leased
//! before it is polled, so no two rounds poll it at once. A round that dies leaves its leases
//! to expire; the next round takes those batches again.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use touchpoint::ProjectId;
use touchpoint::clock::{Clock, Millis};
use touchpoint::delivery::{
    DeliveryReports, PendingBatch, PollRecord, ReceiptLedger, ReceiptSchedule, UserResult,
};
use touchpoint::ids::TouchpointId;
use touchpoint::ledger::{PollDecision, decide_poll, may_claim, next_poll_at};
use touchpoint::model::{Receipt, Touchpoint};
use touchpoint::notify::{EventType, Notification, Notifications};
use touchpoint::ports::{StoreError, TouchpointStore};
use touchpoint::protocol::{ReceiptReading, UserStatus, read_receipt, receipt_poll};
use touchpoint_outbound::Outbound;
use tracing::Instrument;

/// The reason given to users whose receipt never came.
pub const RECEIPT_TIMEOUT: &str = "receipt timeout";

#[derive(Clone, Debug)]
pub struct PollerConfig {
    /// Receipt requests in flight at once in one round.
    pub concurrency: usize,
    /// How long a round holds a batch it polls.
    pub lease: Duration,
    /// Time between polls of a batch.
    pub interval: Duration,
    pub request_timeout: Duration,
    /// Most batches one round takes on.
    pub max_batches: usize,
    /// Kept free before a round's deadline: no poll starts later than the request timeout
    /// plus this before it.
    pub deadline_margin: Duration,
    /// Divides the request timeout a touchpoint states: 1 in production; compressed time in
    /// simulations.
    pub time_scale: f64,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            concurrency: 8,
            lease: Duration::from_secs(60),
            interval: Duration::from_secs(300),
            request_timeout: touchpoint_outbound::DEFAULT_REQUEST_TIMEOUT,
            max_batches: 10_000,
            deadline_margin: Duration::from_secs(5),
            time_scale: 1.0,
        }
    }
}

/// What a round did (the receipt-poller Lambda's answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundReport {
    /// Receipt requests sent.
    pub polled: usize,
    /// Users that became final.
    pub settled: usize,
    /// Users failed at the receipt timeout.
    pub timed_out: usize,
    /// Polls that failed and change nothing until the next round.
    pub failed_polls: usize,
    /// Due batches another round was polling.
    pub skipped: usize,
    /// Due batches left for the next round (the deadline was near).
    pub left: usize,
}

pub struct ReceiptPoller {
    touchpoints: Arc<dyn TouchpointStore>,
    ledger: Arc<dyn ReceiptLedger>,
    schedule: Arc<dyn ReceiptSchedule>,
    outbound: Outbound,
    clock: Arc<dyn Clock>,
    cfg: PollerConfig,
    /// The limits of the receivers, shared with the process's other senders.
    limits: Option<Arc<touchpoint_receiver::limits::ReceiverLimits>>,
    /// Where receipt timeouts and completed dispatches are told, and where a completed
    /// dispatch is read from.
    notifications: Arc<Notifications>,
    reports: Option<Arc<dyn DeliveryReports>>,
}

enum Polled {
    Skipped,
    /// The last poll at the deadline: some users settled by it, the rest timed out.
    TimedOut {
        settled: usize,
        timed_out: usize,
    },
    Settled(usize),
    Failed,
}

impl ReceiptPoller {
    pub fn new(
        touchpoints: Arc<dyn TouchpointStore>,
        ledger: Arc<dyn ReceiptLedger>,
        schedule: Arc<dyn ReceiptSchedule>,
        outbound: Outbound,
        clock: Arc<dyn Clock>,
        cfg: PollerConfig,
    ) -> ReceiptPoller {
        ReceiptPoller {
            touchpoints,
            ledger,
            schedule,
            outbound,
            clock,
            cfg,
            limits: None,
            notifications: Arc::new(Notifications::none()),
            reports: None,
        }
    }

    /// Tells receipt timeouts, and the completion of the dispatches whose last receipts came
    /// in (read from `reports`), to `notifications`.
    pub fn with_notifications(
        mut self,
        notifications: Arc<Notifications>,
        reports: Arc<dyn DeliveryReports>,
    ) -> ReceiptPoller {
        self.notifications = notifications;
        self.reports = Some(reports);
        self
    }

    /// After a poll: the users that timed out, and the dispatch if its last users settled.
    async fn tell(&self, b: &PendingBatch, settled: usize, timed_out: usize) {
        let now = self.clock.now_ms();
        if timed_out > 0 {
            let n = Notification::new(
                b.project_id,
                EventType::ReceiptTimeout,
                &b.order_no,
                now,
                serde_json::json!({
                    "projectId": b.project_id,
                    "touchpointId": b.touchpoint_id,
                    "orderNo": b.order_no,
                    "users": timed_out,
                    "acceptedAt": touchpoint::clock::rfc3339(b.accepted_at),
                    "deadline": touchpoint::clock::rfc3339(b.deadline),
                }),
            );
            self.notifications.notify(n).await;
        }
        let Some(reports) = &self.reports else {
            return;
        };
        if settled < b.pending.len()
            || !self
                .notifications
                .wants(b.project_id, EventType::DispatchCompleted)
                .await
        {
            return;
        }
        let view = match reports.batch(b.project_id, &b.order_no).await {
            Ok(Some(batch)) => reports.dispatch(b.project_id, &batch.dispatch_id).await,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match view {
            Ok(Some(view)) => {
                if let Some(n) = touchpoint::notify::dispatch_completed(&view, now) {
                    self.notifications.notify(n).await;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(order_no = %b.order_no, error = %e, "cannot read the dispatch to tell its completion");
            }
        }
    }

    /// The limits of the receivers this poller sends to.
    pub fn limits(&self) -> Option<Arc<touchpoint_receiver::limits::ReceiverLimits>> {
        self.limits.clone()
    }

    /// Polls within the limits of each receiver (`maxConcurrency`, `maxRequestsPerSecond`,
    /// back-pressure) shared with the other senders of this process.
    pub fn with_limits(
        mut self,
        limits: Arc<touchpoint_receiver::limits::ReceiverLimits>,
    ) -> ReceiptPoller {
        self.limits = Some(limits);
        self
    }

    /// One round for a touchpoint (`Some`) or every touchpoint (`None`), with no time limit.
    pub async fn round(
        self: &Arc<Self>,
        scope: Option<(ProjectId, &TouchpointId)>,
    ) -> Result<RoundReport, StoreError> {
        self.round_until(scope, Millis::MAX).await
    }

    /// One round that ends before `deadline` (epoch ms, the invocation's deadline): no batch is
    /// leased unless its poll can be answered and recorded in time. Batches left are still due
    /// and come first in the next round (the oldest are polled first).
    pub async fn round_until(
        self: &Arc<Self>,
        scope: Option<(ProjectId, &TouchpointId)>,
        deadline: Millis,
    ) -> Result<RoundReport, StoreError> {
        let now = self.clock.now_ms();
        let due = self
            .ledger
            .due_polls(scope, now, self.cfg.max_batches)
            .await?;
        let mut report = RoundReport::default();
        let mut touchpoints: HashMap<(ProjectId, TouchpointId), Option<Arc<Touchpoint>>> =
            HashMap::new();
        for b in &due {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                touchpoints.entry((b.project_id, b.touchpoint_id.clone()))
            {
                let tp = self.touchpoints.get(b.project_id, &b.touchpoint_id).await?;
                slot.insert(tp.map(Arc::new));
            }
        }
        let gate = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for batch in due {
            let tp = touchpoints
                .get(&(batch.project_id, batch.touchpoint_id.clone()))
                .cloned()
                .flatten();
            let budget = self.timeout(tp.as_deref()) + self.cfg.deadline_margin;
            let room = Duration::from_millis(
                (deadline.saturating_sub(self.clock.now_ms()))
                    .saturating_sub(budget.as_millis() as i64)
                    .max(0) as u64,
            );
            let permit = match tokio::time::timeout(room, Arc::clone(&gate).acquire_owned()).await {
                Ok(p) => p.map_err(StoreError::backend)?,
                Err(_) => {
                    report.left += 1;
                    continue;
                }
            };
            if !may_claim(self.clock.now_ms(), deadline, budget) {
                report.left += 1;
                continue;
            }
            let me = Arc::clone(self);
            let span = tracing::info_span!("receipt_poll", order_no = %batch.order_no);
            set.spawn(
                async move {
                    let out = me.poll_one(batch, tp.as_deref(), now, room).await;
                    drop(permit);
                    out
                }
                .instrument(span),
            );
        }
        let mut first_error = None;
        while let Some(joined) = set.join_next().await {
            match joined.map_err(StoreError::backend).and_then(|r| r) {
                Ok(Polled::Skipped) => report.skipped += 1,
                Ok(Polled::TimedOut { settled, timed_out }) => {
                    report.polled += 1;
                    report.settled += settled;
                    report.timed_out += timed_out;
                }
                Ok(Polled::Settled(n)) => {
                    report.polled += 1;
                    report.settled += n;
                }
                Ok(Polled::Failed) => {
                    report.polled += 1;
                    report.failed_polls += 1;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if let Some((project, id)) = scope {
            self.retire_schedule_if_done(project, id).await?;
        }
        Ok(report)
    }

    /// A deleted touchpoint, or one switched to sync, keeps its schedule only while receipts
    /// are pending.
    async fn retire_schedule_if_done(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<(), StoreError> {
        let tp = self.touchpoints.get(project, id).await?;
        let still_async = tp.is_some_and(|t| matches!(t.spec.receipt, Receipt::Async { .. }));
        if !still_async && self.ledger.pending_receipts(project, id).await? == 0 {
            tracing::info!(
                project,
                touchpoint = %id,
                "no receipts pending; schedule removed"
            );
            self.schedule.remove(project, id).await?;
        }
        Ok(())
    }

    fn timeout(&self, tp: Option<&Touchpoint>) -> Duration {
        tp.map_or(self.cfg.request_timeout, |t| {
            t.spec
                .request_timeout(self.cfg.request_timeout, self.cfg.time_scale)
        })
    }

    /// `room`: how long the round may still wait before this poll must start.
    async fn poll_one(
        &self,
        b: PendingBatch,
        tp: Option<&Touchpoint>,
        now: Millis,
        room: Duration,
    ) -> Result<Polled, StoreError> {
        let lease_until = now + self.cfg.lease.as_millis() as i64;
        // A slot among the touchpoint's requests, at its pace, while the round has time (at
        // least a request timeout, at most an interval); busy longer, the batch waits for the
        // next round.
        let wait = room.min(self.cfg.interval).max(self.timeout(tp));
        let pass = match (&self.limits, tp) {
            (Some(limits), Some(tp)) => match limits.acquire(tp, wait).await {
                Some(pass) => Some(pass),
                None => return Ok(Polled::Skipped),
            },
            _ => None,
        };
        // The batch as it is now that the lease is ours (the round's listing may be stale, and
        // on AWS it carries no users).
        let Some(b) = self
            .ledger
            .lease_poll(b.project_id, &b.order_no, now, lease_until)
            .await?
        else {
            return Ok(Polled::Skipped);
        };
        // On the grid from acceptance, and at the deadline at the latest.
        let next_poll_at = next_poll_at(b.accepted_at, self.cfg.interval, b.deadline, now);
        // At (or after) the deadline the batch is polled once more, then what is still
        // pending times out.
        let last = decide_poll(now, b.deadline) == PollDecision::FinalPoll;
        let sent_at = self.clock.now_ms();
        let signing = tp.map(|t| t.signing(sent_at)).unwrap_or_default();
        let request = receipt_poll(&signing, &b.order_no, sent_at);
        let timeout = self.timeout(tp);
        let reply = self
            .outbound
            .post_json(&b.receipt_url, request.body, &request.headers, timeout)
            .await;
        if let Some(pass) = pass {
            pass.answered(match &reply {
                Ok(r) => touchpoint_receiver::limits::Answer::of(Some(r.status), r.retry_after),
                Err(e) => touchpoint_receiver::limits::Answer::of_error(e),
            });
        }
        // Users settled by this answer were resolved when it arrived, not when the round began.
        let answered = self.clock.now_ms().max(now);
        let (settled, http_status, error) = match reply {
            // The SSRF guard or the URL refused the receipt URL: that will not change by
            // waiting, so the pending users fail now with the reason instead of at the timeout.
            Err(e) if !e.retryable() => {
                let reason = format!("receipt URL refused: {e}");
                let settled = b
                    .pending
                    .iter()
                    .map(|gid| UserResult {
                        gid: *gid,
                        status: UserStatus::failed(reason.clone()),
                    })
                    .collect();
                (settled, None, Some(reason))
            }
            Err(e) => (Vec::new(), None, Some(e.to_string())),
            Ok(r) if !(200..300).contains(&r.status) => (
                Vec::new(),
                Some(r.status),
                Some(format!("HTTP {}", r.status)),
            ),
            Ok(r) => match read_receipt(&r.body, false) {
                ReceiptReading::Statuses(mut statuses) => {
                    let settled = b
                        .pending
                        .iter()
                        .filter_map(|gid| {
                            statuses
                                .remove(gid)
                                .map(|status| UserResult { gid: *gid, status })
                        })
                        .collect();
                    (settled, Some(r.status), None)
                }
                ReceiptReading::Rejected(m) => (
                    Vec::new(),
                    Some(r.status),
                    Some(format!("receipt poll refused: {m}")),
                ),
                ReceiptReading::Invalid(m) => (Vec::new(), Some(r.status), Some(m)),
            },
        };
        let mut settled: Vec<UserResult> = settled;
        let mut timed_out = 0;
        if last {
            for gid in &b.pending {
                if !settled.iter().any(|r| r.gid == *gid) {
                    settled.push(UserResult {
                        gid: *gid,
                        status: UserStatus::failed(RECEIPT_TIMEOUT),
                    });
                    timed_out += 1;
                }
            }
        }
        let failed = error.is_some() && settled.len() == timed_out;
        if let Some(e) = &error {
            if failed {
                tracing::info!(order_no = %b.order_no, error = %e, "receipt poll failed; trying again next round");
            } else {
                tracing::warn!(order_no = %b.order_no, error = %e, "receipt poll refused; its pending users failed");
            }
        }
        let n = settled.len();
        self.ledger
            .record_poll(&PollRecord {
                project_id: b.project_id,
                order_no: b.order_no.clone(),
                at: answered,
                settled,
                next_poll_at,
                http_status,
                error,
            })
            .await?;
        self.tell(&b, n, timed_out).await;
        Ok(match (failed, timed_out) {
            (_, t) if t > 0 => Polled::TimedOut {
                settled: n - t,
                timed_out: t,
            },
            (true, _) => Polled::Failed,
            (false, _) => Polled::Settled(n),
        })
    }
}
