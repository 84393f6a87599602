//! The delivery ledger: what the dispatcher records so that every user ends in exactly one
//! final state, no final batch is sent again, and results are published once.
//!
//! Write budget per batch on the success path: one conditional claim before sending and one
//! record after. The statistics counters and the result events follow either in the record
//! itself (the embedded store: one local transaction) or at the delivery's next checkpoint
//! ([`DeliveryLedger::checkpoint`], DynamoDB: counters moved and results published for many
//! batches at once, exactly once because the checkpoint marks the batches it counted in the
//! dispatch's progress under a condition).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::ids::{DispatchId, OrderNo, TouchpointId};
pub use crate::ledger::Progress;
use crate::model::{Kind, ProjectId};
use crate::ports::StoreError;
use crate::protocol::UserStatus;

/// What every batch and event of a dispatch carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchMeta {
    pub project_id: ProjectId,
    pub dispatch_id: DispatchId,
    pub space_id: String,
    pub campaign_id: String,
    pub strategy_id: Option<String>,
    pub touchpoint_id: TouchpointId,
    pub touchpoint_kind: Option<Kind>,
}

/// Where a batch stands.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum BatchState {
    /// Claimed by a sender; `lease_until` says until when.
    InFlight,
    /// Failed transiently; sent again from `next_attempt_at`.
    RetryWait,
    /// Accepted by an async receiver; some users wait for their receipt.
    Accepted,
    /// Every user has a final status.
    Final,
}

crate::model::wire_names!(BatchState);

/// A dispatch as [`DeliveryStore::open_dispatch`] found or made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// True when this call opened it.
    pub new: bool,
    /// Users per batch, fixed when it was opened.
    pub batch_size: u32,
    pub progress: Progress,
    /// Deliveries in a row before this one that made no progress (each crashed or failed on
    /// storage before it recorded anything).
    pub stalls: u32,
    /// Nothing was written: the store opens this one-user dispatch with its only batch's claim
    /// ([`DeliveryLedger::claim_opening`]), one write instead of two. Its redeliveries are
    /// told apart from its first delivery by that claim, not here (`new` stays true, `stalls`
    /// 0): a delivery that dies before the claim is bounded by its message's receive count.
    pub by_claim: bool,
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Send now; this is attempt number `attempt` (1-based) of a batch first sent at
    /// `sent_at`, and the `counted`-th against the retry budget (attempts whose sender died
    /// before recording an outcome do not count: see [`crate::ledger::decide_claim`]).
    Send {
        attempt: u32,
        sent_at: Millis,
        counted: u32,
    },
    /// Someone holds the batch until then (another sender, or a retry not yet due).
    NotBefore(Millis),
    /// Nothing to send: the outcome is final (or the receiver accepted it and receipts are
    /// awaited).
    Done,
    /// Nothing to send, and the outcome found may not be counted or published yet (its
    /// recorder died before its checkpoint): hand it to [`DeliveryLedger::checkpoint`], which
    /// counts it unless the dispatch's progress says it was.
    Settled(Settled),
}

/// A batch outcome recorded by [`DeliveryLedger::record_attempt`] but left to
/// [`DeliveryLedger::checkpoint`] to count and publish: the users that became final when the
/// receiver answered (for an async batch, those its first answer settled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub index: u32,
    pub order_no: OrderNo,
    /// When the batch was first sent.
    pub sent_at: Millis,
    /// When the outcome was recorded.
    pub at: Millis,
    pub results: Vec<UserResult>,
    /// Every user of the batch was final when it was recorded (not an async acceptance with
    /// users awaiting their receipts).
    pub complete: bool,
}

/// How far one delivery came, for [`DeliveryLedger::checkpoint`]. It is applied to the progress
/// the ledger holds when it writes ([`Progress::after`]), not to the one the delivery started
/// from, so deliveries of one dispatch running side by side never undo each other.
#[derive(Clone, Copy, Debug)]
pub struct Advance<'a> {
    /// Batches of the dispatch.
    pub batches: u32,
    /// Every batch the delivery looked at so far (in its work order).
    pub looked: &'a [u32],
    /// The batches among them it saw final or accepted.
    pub finished: &'a [u32],
    /// Set when the dispatch is being given up, with the reason.
    pub abandoned: Option<&'a str>,
    /// Outcomes to count and publish (any of them already counted is skipped).
    pub settled: &'a [Settled],
}

/// One user's recorded outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserResult {
    pub gid: i64,
    #[serde(flatten)]
    pub status: UserStatus,
}

/// What one attempt (or the decision to give up) produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The dispatch the batch belongs to: adapters publish results and move counters from it
    /// without reading the batch back.
    pub meta: DispatchMeta,
    pub order_no: OrderNo,
    pub batch_index: usize,
    /// When the batch was first sent, as its claim reported.
    pub sent_at: Millis,
    pub attempt: u32,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    pub at: Millis,
    pub outcome: AttemptOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Every user final.
    Final(Vec<UserResult>),
    /// Send again from this time.
    Retry { next_attempt_at: Millis },
    /// An async receiver accepted the batch: `results` are final already, `pending` gids wait
    /// for their receipt, polled at `receipt_url` from `next_poll_at` until `deadline`.
    Accepted {
        results: Vec<UserResult>,
        pending: Vec<i64>,
        receipt_url: String,
        deadline: Millis,
        next_poll_at: Millis,
    },
}

/// An accepted batch whose receipt is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingBatch {
    pub order_no: OrderNo,
    pub project_id: ProjectId,
    pub touchpoint_id: TouchpointId,
    pub receipt_url: String,
    pub pending: Vec<i64>,
    pub accepted_at: Millis,
    pub deadline: Millis,
    pub next_poll_at: Millis,
    pub polls: u32,
}

/// What one receipt poll (or the deadline) did to an accepted batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollRecord {
    pub project_id: ProjectId,
    pub order_no: OrderNo,
    pub at: Millis,
    /// Users that became final now.
    pub settled: Vec<UserResult>,
    /// When to poll again if users remain pending.
    pub next_poll_at: Millis,
    pub http_status: Option<u16>,
    /// Why the poll changed nothing, if it failed.
    pub error: Option<String>,
}

/// A batch as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchView {
    pub order_no: OrderNo,
    pub dispatch_id: DispatchId,
    pub batch_index: i64,
    pub touchpoint_id: TouchpointId,
    pub campaign_id: String,
    pub state: BatchState,
    pub users: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub attempts: u32,
    pub last_http_status: Option<u16>,
    pub last_error: Option<String>,
    pub response_excerpt: Option<String>,
    pub next_attempt_at: Option<Millis>,
    pub sent_at: Option<Millis>,
    pub resolved_at: Option<Millis>,
    /// Per-user results known so far.
    pub results: Vec<UserResult>,
    /// Async: users still waiting for their receipt.
    pub pending: Vec<i64>,
    pub polls: u32,
    pub next_poll_at: Option<Millis>,
    pub deadline: Option<Millis>,
}

/// A dispatch as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchView {
    pub meta: DispatchMeta,
    pub users: u32,
    pub batches: u32,
    /// Users per batch when it was planned, so its batches can be found again without the
    /// touchpoint.
    pub batch_size: u32,
    /// Why the whole dispatch was refused, when it was.
    pub rejected: Option<String>,
    pub received_at: Millis,
    /// Users with a final outcome, as the store counts them (constant cost to read).
    pub succeeded: u32,
    pub failed: u32,
    /// Batches whose every user is final.
    pub batches_finished: u32,
}

/// sent / succeeded / failed / pending counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub pending: u64,
}

/// The statistics scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsScope {
    Campaign,
    Touchpoint,
}

impl StatsScope {
    pub fn as_str(self) -> &'static str {
        match self {
            StatsScope::Campaign => "campaign",
            StatsScope::Touchpoint => "touchpoint",
        }
    }
}

/// One hour of a scope's activity: users sent in the hour, users that became final in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HourStats {
    /// The hour's start (UTC, milliseconds).
    pub hour: Millis,
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// A batch that moved these counters last, for drill-down.
    pub last_order_no: Option<OrderNo>,
}

/// How often one failure reason was recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
    /// A batch with users that failed for this reason, for drill-down.
    pub sample_order_no: Option<OrderNo>,
}

/// A failure reason is kept (in events, batch records and the API) cut to this many
/// characters.
pub const REASON_MAX_CHARS: usize = 256;
/// Distinct failure reasons a batch keeps cut to [`REASON_MAX_CHARS`]; any further distinct
/// reason is cut to [`OVERFLOW_REASON_CHARS`]. Whatever a receiver answers, a 500-user batch
/// then holds at most 50 × 257 + 450 × 41 characters of reasons (about 125 KB in the widest
/// UTF-8), far below DynamoDB's 400 KB item limit.
pub const DISTINCT_REASONS_PER_BATCH: usize = 50;
/// See [`DISTINCT_REASONS_PER_BATCH`].
pub const OVERFLOW_REASON_CHARS: usize = 40;

/// Bounds the failure reasons of `new`, results joining a batch that holds `existing`: each cut
/// to [`REASON_MAX_CHARS`], and past [`DISTINCT_REASONS_PER_BATCH`] distinct reasons in the
/// batch, each further one cut to [`OVERFLOW_REASON_CHARS`].
pub fn bound_reasons(existing: &[UserResult], new: &mut [UserResult]) {
    use crate::protocol::truncate;
    let mut kept: std::collections::HashSet<String> = existing
        .iter()
        .filter_map(|r| match &r.status {
            UserStatus::Failed { reason } => Some(reason.clone()),
            UserStatus::Succeeded => None,
        })
        .collect();
    for r in new {
        if let UserStatus::Failed { reason } = &mut r.status {
            let mut cut = truncate(reason, REASON_MAX_CHARS);
            if !kept.contains(&cut) {
                if kept.len() < DISTINCT_REASONS_PER_BATCH {
                    kept.insert(cut.clone());
                } else {
                    cut = truncate(&cut, OVERFLOW_REASON_CHARS);
                }
            }
            *reason = cut;
        }
    }
}

impl AttemptOutcome {
    /// The outcome with its failure reasons bounded ([`bound_reasons`]).
    pub fn bounded(mut self) -> AttemptOutcome {
        match &mut self {
            AttemptOutcome::Final(results) | AttemptOutcome::Accepted { results, .. } => {
                bound_reasons(&[], results)
            }
            AttemptOutcome::Retry { .. } => {}
        }
        self
    }
}

/// One hour in milliseconds.
pub const HOUR_MS: Millis = 3_600_000;
/// Failure reasons are tallied cut to this many characters.
pub const REASON_CHARS: usize = 120;
/// How many distinct reasons one settlement adds to the tallies (its most frequent).
pub const REASONS_PER_SETTLEMENT: usize = 5;

/// The start of the hour `at` falls in.
pub fn hour_of(at: Millis) -> Millis {
    at.div_euclid(HOUR_MS) * HOUR_MS
}

/// The failure reasons among `results` with their counts, most frequent first (ties in text
/// order), each cut to [`REASON_CHARS`] characters, at most [`REASONS_PER_SETTLEMENT`].
pub fn tally_reasons(results: &[UserResult]) -> Vec<(String, u64)> {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for r in results {
        if let UserStatus::Failed { reason } = &r.status {
            let cut: String = reason.chars().take(REASON_CHARS).collect();
            *counts.entry(cut).or_default() += 1;
        }
    }
    let mut list: Vec<(String, u64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(REASONS_PER_SETTLEMENT);
    list
}

/// Adds hour rows with equal `hour` together (shards of one hour) and sorts by hour.
pub fn merge_hours(rows: impl IntoIterator<Item = HourStats>) -> Vec<HourStats> {
    let mut by_hour: std::collections::BTreeMap<Millis, HourStats> = Default::default();
    for row in rows {
        let slot = by_hour.entry(row.hour).or_insert_with(|| HourStats {
            hour: row.hour,
            ..HourStats::default()
        });
        slot.sent += row.sent;
        slot.succeeded += row.succeeded;
        slot.failed += row.failed;
        if row.last_order_no.is_some() {
            slot.last_order_no = row.last_order_no;
        }
    }
    by_hour.into_values().collect()
}

/// Adds reason rows with equal text together and keeps the `limit` most frequent.
pub fn merge_reasons(
    rows: impl IntoIterator<Item = ReasonCount>,
    limit: usize,
) -> Vec<ReasonCount> {
    let mut by_reason: std::collections::BTreeMap<String, ReasonCount> = Default::default();
    for row in rows {
        match by_reason.get_mut(&row.reason) {
            Some(slot) => {
                slot.count += row.count;
                if slot.sample_order_no.is_none() {
                    slot.sample_order_no = row.sample_order_no;
                }
            }
            None => {
                by_reason.insert(row.reason.clone(), row);
            }
        }
    }
    let mut list: Vec<ReasonCount> = by_reason.into_values().collect();
    list.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    list.truncate(limit);
    list
}

/// What the dispatcher writes: dispatches opened, batches claimed and their outcomes.
#[async_trait]
pub trait DeliveryLedger: Send + Sync {
    /// Records a dispatch about to be delivered (idempotent: the first call wins) and counts
    /// its users as sent, and counts this delivery as one more that has not made progress yet
    /// (in the same write). Answers what the dispatch record holds: the batch size it was
    /// opened with (a redelivery plans the same batches whatever the touchpoint says now), how
    /// far its delivery has come, and how many deliveries in a row before this one made no
    /// progress.
    async fn open_dispatch(
        &self,
        meta: &DispatchMeta,
        users: u32,
        batch_size: u32,
        now: Millis,
    ) -> Result<Opened, StoreError>;

    /// Saves how far a dispatch's delivery has come, merged into the progress stored now (see
    /// [`Advance`]), and that the delivery made progress: the count of deliveries in a row
    /// without progress starts again. Counts and publishes the `settled` outcomes not counted
    /// yet, exactly once: a batch is counted in the same atomic write that marks it finished in
    /// the progress, and a batch already marked is skipped. Answers the progress written.
    async fn checkpoint(
        &self,
        meta: &DispatchMeta,
        advance: &Advance<'_>,
        now: Millis,
    ) -> Result<Progress, StoreError>;

    /// Records a refused dispatch: every user final with `reason` (idempotent).
    async fn reject_dispatch(
        &self,
        meta: &DispatchMeta,
        gids: &[i64],
        reason: &str,
        now: Millis,
    ) -> Result<(), StoreError>;

    /// Claims batch `index` of a dispatch for sending until `lease_until`.
    async fn claim_batch(
        &self,
        meta: &DispatchMeta,
        index: usize,
        order_no: &OrderNo,
        users: u32,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Claim, StoreError>;

    /// Records an attempt's outcome (fenced by the attempt: a late record of a sender whose
    /// lease was taken over changes nothing). A final or accepted one is counted and its events
    /// queued for publication either in the same atomic write (then `None`) or at the next
    /// checkpoint, to which the caller hands the answer. Also `Some` when the outcome was
    /// already recorded by this very attempt (a write that timed out but took effect), so that
    /// it is never lost between the two.
    async fn record_attempt(&self, record: &AttemptRecord) -> Result<Option<Settled>, StoreError>;

    /// Claims the only batch of a one-user dispatch that [`Self::open_dispatch`] left to be
    /// opened by it ([`Opened::by_claim`]): the dispatch is recorded (with `batch_size`) in the
    /// same write as the claim, and [`DeliveryReports::dispatch`] finds it from then on. A
    /// store that opens every dispatch at `open_dispatch` answers as [`Self::claim_batch`] of
    /// batch 0 (no default, so that a wrapper cannot forget to pass it on).
    async fn claim_opening(
        &self,
        meta: &DispatchMeta,
        order_no: &OrderNo,
        batch_size: u32,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Claim, StoreError>;

    /// Ends at once the claim of a batch that `attempt` sent nothing under (no slot or pace
    /// came in time): the next claim takes it without waiting for the lease to run out, and as a
    /// claim whose sender went away it uses none of the batch's attempts. Does nothing when the
    /// batch is no longer that attempt's.
    async fn hand_back(
        &self,
        meta: &DispatchMeta,
        order_no: &OrderNo,
        attempt: u32,
        now: Millis,
    ) -> Result<(), StoreError>;
}

/// What the API reports: dispatches, batches and statistics.
#[async_trait]
pub trait DeliveryReports: Send + Sync {
    async fn dispatch(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Option<DispatchView>, StoreError>;

    /// Every batch of a dispatch, in index order (tests and tools; the API reads pages).
    async fn dispatch_batches(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Vec<BatchView>, StoreError> {
        self.batch_page(project, dispatch_id, 0, u32::MAX).await
    }

    /// At most `limit` batches of a dispatch from batch index `from` on, in index order, with
    /// counts but not their users' results (a refused dispatch has one, index -1, on the first
    /// page).
    async fn batch_page(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        from: u32,
        limit: u32,
    ) -> Result<Vec<BatchView>, StoreError>;

    async fn batch(
        &self,
        project: ProjectId,
        order_no: &OrderNo,
    ) -> Result<Option<BatchView>, StoreError>;

    async fn stats(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key: &str,
    ) -> Result<Counters, StoreError>;

    /// The scope's activity hour by hour for hours starting in `[from, to)`, oldest first;
    /// hours without activity are left out.
    async fn stats_series(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key: &str,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<HourStats>, StoreError>;

    /// The most frequent failure reasons recorded in hours starting in `[from, to)`, at most
    /// `limit`, most frequent first.
    async fn failure_reasons(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key: &str,
        from: Millis,
        to: Millis,
        limit: usize,
    ) -> Result<Vec<ReasonCount>, StoreError>;
}

/// What the receipt poller reads and writes: accepted batches awaiting their receipts.
#[async_trait]
pub trait ReceiptLedger: Send + Sync {
    /// Accepted batches due for a receipt poll at `now`, for one touchpoint or all, found
    /// through an index of accepted batches by touchpoint and next poll time.
    async fn due_polls(
        &self,
        touchpoint: Option<(ProjectId, &TouchpointId)>,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<PendingBatch>, StoreError>;

    /// Takes the poll lease of a due batch until `until` and answers the batch as it is now
    /// (its pending users and receipt URL); `None` when another round holds it or it is no
    /// longer due.
    async fn lease_poll(
        &self,
        project: ProjectId,
        order_no: &OrderNo,
        now: Millis,
        until: Millis,
    ) -> Result<Option<PendingBatch>, StoreError>;

    /// Applies a poll: settles users (counted and queued for publication once), keeps the rest
    /// pending until `next_poll_at`, and releases the lease.
    async fn record_poll(&self, record: &PollRecord) -> Result<(), StoreError>;

    /// Users of a touchpoint still waiting for a receipt.
    async fn pending_receipts(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<u64, StoreError>;
}

/// All of a delivery store (what the adapters implement, and what a single process wires).
pub trait DeliveryStore: DeliveryLedger + ReceiptLedger + DeliveryReports {}

impl<T: DeliveryLedger + ReceiptLedger + DeliveryReports + ?Sized> DeliveryStore for T {}

/// "Make sure touchpoint X is polled every 5 minutes" / "stop polling X": an in-process ticker
/// locally, EventBridge Scheduler on AWS.
#[async_trait]
pub trait ReceiptSchedule: Send + Sync {
    async fn ensure(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<(), StoreError>;
    async fn remove(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<(), StoreError>;
}

/// What a touchpoint's receipt schedule hands the receipt poller each time it fires (the
/// schedule's input, written by the schedule adapter and read by the poller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptRoundInput {
    pub project_id: ProjectId,
    pub touchpoint_id: TouchpointId,
}

/// Where dispatches are handed in over HTTP: stored durably and queued for the dispatcher.
#[async_trait]
pub trait DispatchIntake: Send + Sync {
    /// Queues the dispatch unless the project already submitted this id; true when queued.
    async fn submit(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        body: String,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// A submitted dispatch as the intake knows it (before the dispatcher opens it).
    async fn submitted(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Option<Submission>, StoreError>;
}

/// What the intake recorded of a dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub received_at: Millis,
    /// Why the queue gave up on it without opening it, where the intake knows.
    pub dead_letter_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_states_read_and_write_their_wire_names() {
        for (state, name) in [
            (BatchState::InFlight, "in_flight"),
            (BatchState::RetryWait, "retry_wait"),
            (BatchState::Accepted, "accepted"),
            (BatchState::Final, "final"),
        ] {
            assert_eq!(state.as_str(), name);
            assert_eq!(serde_json::to_value(state).unwrap(), name);
            assert_eq!(BatchState::parse(name), Some(state));
        }
        assert_eq!(BatchState::parse("InFlight"), None);
    }

    fn failed(gid: i64, reason: &str) -> UserResult {
        UserResult {
            gid,
            status: UserStatus::failed(reason),
        }
    }

    #[test]
    fn reasons_are_counted_cut_and_limited_to_the_most_frequent() {
        let long = "x".repeat(500);
        let mut results = vec![
            UserResult {
                gid: 1,
                status: UserStatus::Succeeded,
            },
            failed(2, "b"),
            failed(3, "b"),
            failed(4, &long),
        ];
        for (i, r) in ["c", "d", "e", "f", "g"].iter().enumerate() {
            results.push(failed(10 + i as i64, r));
        }
        let tally = tally_reasons(&results);
        assert_eq!(tally.len(), REASONS_PER_SETTLEMENT);
        assert_eq!(tally[0], ("b".to_owned(), 2));
        // Ties in text order; the long reason sorts after the letters before it was cut.
        assert_eq!(tally[1].0, "c");
        assert!(tally.iter().all(|(r, _)| r.chars().count() <= REASON_CHARS));
        assert!(tally_reasons(&results[..1]).is_empty());
    }

    #[test]
    fn a_batch_keeps_its_reasons_bounded_whatever_the_receiver_answers() {
        // 500 users, each failed with its own 500-character reason (4 bytes a character).
        let mut results: Vec<UserResult> = (0..500)
            .map(|i| failed(i, &format!("{i:03}{}", "😀".repeat(497))))
            .collect();
        bound_reasons(&[], &mut results);
        let reasons: Vec<&str> = results.iter().map(|r| r.status.reason()).collect();
        assert!(
            reasons[..DISTINCT_REASONS_PER_BATCH]
                .iter()
                .all(|r| r.chars().count() == REASON_MAX_CHARS + 1 && r.ends_with('…'))
        );
        assert!(
            reasons[DISTINCT_REASONS_PER_BATCH..]
                .iter()
                .all(|r| r.chars().count() == OVERFLOW_REASON_CHARS + 1)
        );
        let bytes: usize = reasons.iter().map(|r| r.len()).sum();
        assert!(bytes < 130_000, "{bytes} bytes of reasons");
        // A reason the batch already holds is kept whole; short reasons are untouched.
        let mut more = vec![failed(900, reasons[0]), failed(901, "short")];
        bound_reasons(&results, &mut more);
        assert_eq!(more[0].status.reason(), reasons[0]);
        assert_eq!(more[1].status.reason(), "short");
        let mut few = vec![failed(1, "a"), failed(2, "b"), failed(3, "a")];
        bound_reasons(&[], &mut few);
        assert_eq!(
            few.iter().map(|r| r.status.reason()).collect::<Vec<_>>(),
            ["a", "b", "a"]
        );
    }

    #[test]
    fn shards_of_an_hour_and_of_a_reason_add_up() {
        let h = |hour, sent, order: Option<&str>| HourStats {
            hour,
            sent,
            succeeded: 0,
            failed: 0,
            last_order_no: order.map(OrderNo::from),
        };
        let merged = merge_hours([h(HOUR_MS, 2, Some("a")), h(0, 1, None), h(HOUR_MS, 3, None)]);
        assert_eq!(merged, [h(0, 1, None), h(HOUR_MS, 5, Some("a"))]);
        let r = |reason: &str, count| ReasonCount {
            reason: reason.into(),
            count,
            sample_order_no: None,
        };
        let top = merge_reasons([r("a", 1), r("b", 2), r("a", 3), r("c", 1)], 2);
        assert_eq!(top, [r("a", 4), r("b", 2)]);
        assert_eq!(hour_of(HOUR_MS + 5), HOUR_MS);
        assert_eq!(hour_of(-1), -HOUR_MS);
    }
}
