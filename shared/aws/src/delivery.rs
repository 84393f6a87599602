//! [`DeliveryStore`] and [`DispatchIntake`] on DynamoDB and SQS. Layout (see
//! `infra/dynamodb.md`), all in the delivery table, every item with a TTL (`expires_at`):
//!
//! | item | pk | sk |
//! |---|---|---|
//! | intake claim (idempotency of `POST /v1/dispatches`) | `P#{project}#D#{dispatchId}` | `INTAKE` |
//! | dispatch | `P#{project}#D#{dispatchId}` | `META` |
//! | batch (ledger) | `P#{project}#O#{orderNo}` | `B` |
//! | statistics shard | `P#{project}#ST#{scope}#{key}` | `{0..15}` |
//! | hour counters shard | `P#{project}#TR#{scope}#{key}#{day}` | `H#{hour}#{0..15}` |
//! | failure-reason tally shard | `P#{project}#TR#{scope}#{key}#{day}` | `R#{hour}#{0..15}#{reason}` |
//!
//! A one-user dispatch has no `META` item: its only batch's claim writes the dispatch's fields
//! into the batch item (`opened_by_claim`), one write instead of two, and that item is read,
//! checkpointed and counted as its record.
//!
//! Batches are their own partitions (the `orderNo` is random-looking), so no key is hot; a
//! dispatch's batches are found again by recomputing their `orderNo`s. Accepted async batches
//! carry `due_tp` and `next_poll_at`, the keys of the sparse `due` index the poller queries.
//! Statistics are sharded counters moved once per settled batch, in the same transaction as
//! the batch's record, together with the hour counters and the settlement's most frequent
//! failure reasons (one day per partition, 13-digit hour starts in milliseconds, so a day's
//! hours are one key range). Newly final results wait in the batch's `outbox` until they are on the
//! results queue (FIFO, de-duplicated by `orderNo` and settlement), then leave it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use serde_json::json;
use touchpoint::ProjectId;
use touchpoint::clock::Millis;
use touchpoint::delivery::*;
use touchpoint::dispatch::order_no;
use touchpoint::ids::{DispatchId, OrderNo, TouchpointId};
use touchpoint::ledger::{BatchRecord, ClaimDecision, decide_claim, record_condition};
use touchpoint::ports::StoreError;
use touchpoint::protocol::UserStatus;

use crate::group::{CounterMove, Grouped, Groups, ScopeMove};
use crate::item::*;

/// Shards of a statistics total (partitions, read back with one `BatchGetItem`).
pub(crate) const STAT_SHARDS: u64 = 16;
/// Partitions of a scope's day of hour counters and reason tallies.
const TREND_SHARDS: u64 = 8;
/// Partitions of a touchpoint's receipt index.
const DUE_SHARDS: u64 = 16;
/// What the receipt index projects besides its keys (`template.yaml` says the same; a test
/// holds them together).
pub const DUE_PROJECTION: [&str; 5] = [
    "order_no",
    "accepted_at",
    "deadline",
    "polls",
    "pending_count",
];
const REJECTED_INDEX: i64 = -1;
/// Marks a batch item that is also its one-user dispatch's record (see
/// [`DeliveryLedger::claim_opening`]): it has no `META` item.
const OPENED_BY_CLAIM: &str = "opened_by_claim";
/// Bytes of a results message body at most: under the queue's `MaximumMessageSize` (1 MiB),
/// with room for its attributes.
pub const RESULTS_MESSAGE_BYTES: usize = 1_000_000;
/// How much longer a dispatch record is kept than its batches: the longest receipt timeout
/// (7 days) and a day.
const META_MARGIN_SECS: i64 = 8 * 86_400;
/// Hours of outcomes one checkpoint transaction counts: 3 + 12 × 6 = 75 items, under
/// DynamoDB's 100.
const CHECKPOINT_HOURS: usize = 6;
/// Rounds of a checkpoint against other deliveries of the same dispatch writing at once.
const CHECKPOINT_ROUNDS: u32 = 20;
/// Tries of an outcome's write that a transaction on the same item refused.
const RECORD_TRIES: u32 = 8;

#[derive(Clone, Debug)]
pub struct DynamoDelivery {
    ddb: Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    dispatch_queue_url: Option<String>,
    results_queue_url: Option<String>,
    retention_secs: i64,
    bodies: crate::DispatchBodies,
    /// The version and progress of dispatch records as this instance last wrote or read
    /// them, so a checkpoint does not read the record first: a stale entry only costs the
    /// read (the write is conditional on the version, and refused, it reads again).
    known: Arc<Mutex<HashMap<String, Known>>>,
    /// The checkpoints of one-batch dispatches made at once, grouped (see [`crate::group`]).
    groups: Arc<Groups>,
}

/// A dispatch record as a checkpoint needs it.
#[derive(Clone, Debug)]
struct Known {
    /// The progress version (`pv`; 0 before the first checkpoint).
    version: u64,
    progress: Progress,
    /// Users the counters do not count as sent yet, and when the dispatch was opened: the
    /// first checkpoint counts them (in the same transaction as its outcomes, on the same
    /// counter items), so opening one is a single `PutItem`.
    unsent: Option<(i64, Millis)>,
    /// The dispatch is one batch: its checkpoint is grouped with other dispatches' (see
    /// [`crate::group`]).
    single: bool,
}

/// The answer to a batch's first claim.
fn first_send(now: Millis) -> Claim {
    Claim::Send {
        attempt: 1,
        sent_at: now,
        counted: 1,
    }
}

/// A dispatch of `users` in batches of `batch_size` is one batch.
fn one_batch(users: u32, batch_size: u32) -> bool {
    users > 0 && users <= batch_size
}

impl Known {
    fn of(item: &Item) -> Result<Known, StoreError> {
        Ok(Known {
            single: one_batch(
                get_n(item, "users").unwrap_or_default(),
                get_n(item, "batch_size").unwrap_or_default(),
            ),
            version: get_n(item, "pv").unwrap_or_default(),
            progress: json_of(item, "progress")?,
            unsent: get_n::<i64>(item, "unsent")
                .map(|u| (u, get_n(item, "received_at").unwrap_or_default())),
        })
    }
}

/// Dispatch records remembered at most (an entry is a few hundred bytes).
const KNOWN_RECORDS: usize = 4096;
/// Open batches of a remembered record's progress at most (4 bytes each).
const KNOWN_OPEN_BATCHES: usize = 64;

fn dispatch_pk(project: ProjectId, id: &str) -> String {
    format!("P#{project}#D#{id}")
}

fn batch_pk(project: ProjectId, order: &str) -> String {
    format!("P#{project}#O#{order}")
}

/// A statistics total's shard: a partition of its own, so no key takes every count.
fn stats_pk(project: ProjectId, scope: &str, key: &str, shard: u64) -> String {
    format!("P#{project}#ST#{scope}#{key}#{shard:02}")
}

/// One day of a scope's hour counters and reason tallies, one of [`TREND_SHARDS`] partitions.
fn trend_pk(project: ProjectId, scope: &str, key: &str, day: i64, shard: u64) -> String {
    format!(
        "P#{project}#TR#{scope}#{key}#{day}#{}",
        shard % TREND_SHARDS
    )
}

const DAY_MS: Millis = 86_400_000;

/// The receipt index's partition of a touchpoint's accepted batch `order`: one of
/// [`DUE_SHARDS`], so that no index key takes every acceptance and poll of a touchpoint.
fn due_key(project: ProjectId, touchpoint: &str, order: &str) -> String {
    due_shard_key(project, touchpoint, shard_of(order) % DUE_SHARDS)
}

fn due_shard_key(project: ProjectId, touchpoint: &str, shard: u64) -> String {
    format!("P#{project}#TP#{touchpoint}#{shard:02}")
}

fn shard_of(order: &str) -> u64 {
    order
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % STAT_SHARDS
}

fn counts(results: &[UserResult]) -> (i64, i64) {
    let ok = results
        .iter()
        .filter(|r| r.status == UserStatus::Succeeded)
        .count() as i64;
    (ok, results.len() as i64 - ok)
}

fn json_s<T: serde::Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    Ok(s(serde_json::to_string(v).map_err(StoreError::backend)?))
}

fn json_of<T: serde::de::DeserializeOwned + Default>(
    item: &Item,
    key: &str,
) -> Result<T, StoreError> {
    match get_s(item, key) {
        Some(text) if !text.is_empty() => serde_json::from_str(&text).map_err(StoreError::backend),
        _ => Ok(T::default()),
    }
}

/// What one write moves on the counters of a campaign and a touchpoint.
struct Moves<'a> {
    project: ProjectId,
    campaign: &'a str,
    touchpoint: &'a str,
    shard: u64,
    total: Delta,
    hours: Vec<HourMove>,
}

impl CounterMove {
    fn of(m: &Moves<'_>) -> CounterMove {
        let d = |d: Delta| (d.sent, d.ok, d.failed);
        CounterMove {
            project: m.project,
            campaign: m.campaign.to_owned(),
            touchpoint: m.touchpoint.to_owned(),
            total: d(m.total),
            hours: m
                .hours
                .iter()
                .map(|h| crate::group::HourCounts {
                    hour: h.hour,
                    counts: d(h.delta),
                    drill: h.drill.clone(),
                })
                .collect(),
        }
    }
}

/// One hour's share of [`Moves`].
struct HourMove {
    hour: Millis,
    delta: Delta,
    /// A batch of the hour, for drill-down.
    drill: Option<String>,
    /// Failure reasons with their counts and a batch that has them.
    reasons: Vec<(String, u64, String)>,
}

impl HourMove {
    /// The move of one batch's settlement at `at`.
    fn of(at: Millis, delta: Delta, order: &str, results: &[UserResult]) -> HourMove {
        HourMove {
            hour: touchpoint::delivery::hour_of(at),
            delta,
            drill: Some(order.to_owned()),
            reasons: tally_reasons(results)
                .into_iter()
                .map(|(r, c)| (r, c, order.to_owned()))
                .collect(),
        }
    }
}

/// The outcome of a transaction that was not an error.
pub(crate) enum Tx {
    Written,
    /// A condition failed (of the items at these places); nothing was written.
    Refused(Vec<usize>),
}

/// Cancellation reasons after which a transaction is tried again (nothing was applied).
const RETRIED_CANCELLATIONS: [&str; 4] = [
    "TransactionConflict",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];
const TX_TRIES: u32 = 10;
const TX_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(20);
const TX_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a transaction, retried with jittered exponential back-off while DynamoDB cancels it
/// for a conflict with another transaction or a throttle (nothing of it was applied then).
/// A failed condition is an answer, not an error: it names the item whose condition failed.
pub(crate) async fn transact_items(
    ddb: &Client,
    items: Vec<TransactWriteItem>,
) -> Result<Tx, StoreError> {
    let mut wait = TX_RETRY_FIRST;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let result = ddb
            .transact_write_items()
            .set_transact_items(Some(items.clone()))
            .send()
            .await;
        let e = match result {
            Ok(_) => return Ok(Tx::Written),
            Err(e) => e,
        };
        let retry = match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(t)) => {
                let codes: Vec<&str> = t
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None"))
                    .collect();
                if codes.contains(&"ConditionalCheckFailed") {
                    return Ok(Tx::Refused(
                        codes
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| **c == "ConditionalCheckFailed")
                            .map(|(i, _)| i)
                            .collect(),
                    ));
                }
                codes.iter().any(|c| RETRIED_CANCELLATIONS.contains(c))
            }
            Some(TransactWriteItemsError::TransactionInProgressException(_)) => true,
            _ => false,
        };
        if !retry || tries >= TX_TRIES {
            return Err(aws_err(e));
        }
        tracing::debug!(
            tries,
            "transaction cancelled by a conflict or throttle: retrying"
        );
        tokio::time::sleep(jittered(wait)).await;
        wait = (wait * 2).min(TX_RETRY_MAX);
    }
}

/// Full jitter: a random wait between half of `d` and `d`.
fn jittered(d: std::time::Duration) -> std::time::Duration {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    let unit = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
    d.mul_f64(0.5 + unit / 2.0)
}

/// How much the counters move.
#[derive(Clone, Copy, Default)]
struct Delta {
    sent: i64,
    ok: i64,
    failed: i64,
}

/// The batch a publication belongs to.
struct Published<'a> {
    meta: &'a DispatchMeta,
    order: &'a str,
    index: i64,
    sent_at: Option<Millis>,
}

/// A settlement waiting for publication: its de-duplication key, when it happened and whose
/// results it made final (`None`: every result of the batch). The results themselves are read
/// from the batch's `results`, so the item does not hold them twice.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
struct Settlement {
    id: String,
    at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gids: Option<Vec<i64>>,
}

/// Per-user results in a compact, order-keeping form: `{"g":[gids],"s":[0 = succeeded,
/// k = failed with reasons[k-1]],"r":[reasons]}`; about 9 bytes per user instead of 35, which
/// is what a batch item's write costs in capacity units.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct CompactResults {
    g: Vec<i64>,
    s: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    r: Vec<String>,
}

fn encode_results(results: &[UserResult]) -> Result<AttributeValue, StoreError> {
    let mut c = CompactResults {
        g: Vec::with_capacity(results.len()),
        s: Vec::with_capacity(results.len()),
        r: Vec::new(),
    };
    for result in results {
        c.g.push(result.gid);
        c.s.push(match &result.status {
            UserStatus::Succeeded => 0,
            UserStatus::Failed { reason } => match c.r.iter().position(|x| x == reason) {
                Some(i) => i as u32 + 1,
                None => {
                    c.r.push(reason.clone());
                    c.r.len() as u32
                }
            },
        });
    }
    json_s(&c)
}

fn decode_results(item: &Item) -> Result<Vec<UserResult>, StoreError> {
    let c: CompactResults = json_of(item, "results")?;
    c.g.iter()
        .zip(&c.s)
        .map(|(gid, code)| {
            let status = match *code {
                0 => UserStatus::Succeeded,
                k => UserStatus::failed(
                    c.r.get(k as usize - 1)
                        .ok_or_else(|| missing("results.r"))?
                        .clone(),
                ),
            };
            Ok(UserResult { gid: *gid, status })
        })
        .collect()
}

fn batch_view(item: &Item) -> Result<BatchView, StoreError> {
    let state = get_s(item, "state")
        .and_then(|s| BatchState::parse(&s))
        .ok_or_else(|| missing("state"))?;
    Ok(BatchView {
        order_no: get_s(item, "order_no")
            .ok_or_else(|| missing("order_no"))?
            .into(),
        dispatch_id: get_s(item, "dispatch_id").unwrap_or_default().into(),
        batch_index: get_n(item, "batch_index").unwrap_or_default(),
        touchpoint_id: get_s(item, "touchpoint_id").unwrap_or_default().into(),
        campaign_id: get_s(item, "campaign_id").unwrap_or_default(),
        state,
        users: get_n(item, "users").unwrap_or_default(),
        succeeded: get_n(item, "succeeded").unwrap_or_default(),
        failed: get_n(item, "failed").unwrap_or_default(),
        attempts: get_n(item, "attempts").unwrap_or_default(),
        last_http_status: get_n(item, "last_http_status"),
        last_error: get_s(item, "last_error"),
        response_excerpt: get_s(item, "response_excerpt"),
        next_attempt_at: get_n(item, "next_attempt_at"),
        sent_at: get_n(item, "sent_at"),
        resolved_at: get_n(item, "resolved_at"),
        results: decode_results(item)?,
        pending: json_of(item, "pending")?,
        polls: get_n(item, "polls").unwrap_or_default(),
        next_poll_at: get_n(item, "next_poll_at"),
        deadline: get_n(item, "deadline"),
    })
}

impl DynamoDelivery {
    pub fn new(clients: &crate::Clients, names: &crate::AwsNames) -> DynamoDelivery {
        DynamoDelivery {
            ddb: clients.dynamodb.clone(),
            sqs: clients.sqs.clone(),
            table: names.delivery_table.clone(),
            dispatch_queue_url: names.dispatch_queue_url.clone(),
            results_queue_url: names.results_queue_url.clone(),
            retention_secs: names.retention.as_secs() as i64,
            bodies: crate::DispatchBodies::new(clients, names),
            known: Default::default(),
            groups: Arc::new(Groups::new(
                clients.dynamodb.clone(),
                clients.sqs.clone(),
                crate::group::WINDOW,
            )),
        }
    }

    /// The groups of this ledger's checkpoints (the dispatcher Lambda tells them how many
    /// records it handles at once).
    pub fn groups(&self) -> Arc<Groups> {
        Arc::clone(&self.groups)
    }

    /// Checkpoints written in groups so far: the transactions that carried them, and how many
    /// they carried.
    pub fn grouped_checkpoints(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.groups.transactions.load(Relaxed),
            self.groups.grouped.load(Relaxed),
        )
    }

    /// The counter updates of a group's moves on one scope's key, on `shard`.
    fn counter_items(
        &self,
        m: &ScopeMove,
        shard: u64,
        now: Millis,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let delta = |(sent, ok, failed): (i64, i64, i64)| Delta { sent, ok, failed };
        self.scope_updates(
            &Moves {
                project: m.project,
                campaign: &m.key,
                touchpoint: &m.key,
                shard,
                total: delta(m.total),
                hours: m
                    .hours
                    .iter()
                    .map(|h| HourMove {
                        hour: h.hour,
                        delta: delta(h.counts),
                        drill: h.drill.clone(),
                        reasons: Vec::new(),
                    })
                    .collect(),
            },
            &[(m.scope, &m.key)],
            now,
        )
    }

    /// Remembers a dispatch record as this instance wrote or read it (see `known`); one whose
    /// progress lists many open batches is read again instead (memory stays small).
    fn remember(&self, pk: &str, record: Known) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if record.progress.open.len() > KNOWN_OPEN_BATCHES {
            known.remove(pk);
            return;
        }
        if known.len() >= KNOWN_RECORDS && !known.contains_key(pk) {
            known.clear();
        }
        known.insert(pk.to_owned(), record);
    }

    fn recall(&self, pk: &str) -> Option<Known> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(pk).cloned()
    }

    fn forget(&self, pk: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.remove(pk);
    }

    fn expires_at(&self, now: Millis) -> AttributeValue {
        n(now / 1000 + self.retention_secs)
    }

    /// A dispatch record outlives its batches' receipt deadlines (the polls move its
    /// counters): the retention plus the longest receipt timeout, and a day.
    fn meta_expires_at(&self, now: Millis) -> AttributeValue {
        n(now / 1000 + self.retention_secs + META_MARGIN_SECS)
    }

    fn total_update(
        &self,
        moves: &Moves<'_>,
        scope: &str,
        key_: &str,
        now: Millis,
    ) -> Result<TransactWriteItem, StoreError> {
        let delta = moves.total;
        Ok(TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(crate::item::key(
                        stats_pk(moves.project, scope, key_, moves.shard),
                        "T",
                    )))
                    .update_expression(
                        "ADD sent :sent, succeeded :ok, failed :failed SET expires_at = :exp",
                    )
                    .expression_attribute_values(":sent", n(delta.sent))
                    .expression_attribute_values(":ok", n(delta.ok))
                    .expression_attribute_values(":failed", n(delta.failed))
                    .expression_attribute_values(":exp", self.expires_at(now + 365 * 86_400_000))
                    .build()
                    .map_err(build_err)?,
            )
            .build())
    }

    /// The counter updates of `moves` for the campaign and the touchpoint, on its shard:
    /// totals, each hour's counters (naming a batch for drill-down) and failure-reason tallies.
    fn stats_updates(
        &self,
        moves: &Moves<'_>,
        now: Millis,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        self.scope_updates(
            moves,
            &[
                ("campaign", moves.campaign),
                ("touchpoint", moves.touchpoint),
            ],
            now,
        )
    }

    /// [`Self::stats_updates`] for the given scopes (`(scope, key)`) only.
    fn scope_updates(
        &self,
        moves: &Moves<'_>,
        scopes: &[(&str, &str)],
        now: Millis,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let shard = moves.shard;
        let mut items = Vec::new();
        for &(scope, key_) in scopes {
            items.push(self.total_update(moves, scope, key_, now)?);
            for hour_move in &moves.hours {
                let (hour, delta) = (hour_move.hour, hour_move.delta);
                let pk = trend_pk(moves.project, scope, key_, hour.div_euclid(DAY_MS), shard);
                let mut hourly = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(crate::item::key(
                        pk.clone(),
                        format!("H#{hour:013}#{shard:02}"),
                    )))
                    .expression_attribute_values(":sent", n(delta.sent))
                    .expression_attribute_values(":ok", n(delta.ok))
                    .expression_attribute_values(":failed", n(delta.failed))
                    .expression_attribute_values(":exp", self.expires_at(now));
                hourly = match &hour_move.drill {
                    Some(order) => hourly
                        .update_expression(
                            "ADD sent :sent, succeeded :ok, failed :failed SET expires_at = :exp, last_order = :order",
                        )
                        .expression_attribute_values(":order", s(order)),
                    None => hourly.update_expression(
                        "ADD sent :sent, succeeded :ok, failed :failed SET expires_at = :exp",
                    ),
                };
                items.push(
                    TransactWriteItem::builder()
                        .update(hourly.build().map_err(build_err)?)
                        .build(),
                );
                for (reason, count, sample) in &hour_move.reasons {
                    let tally = Update::builder()
                        .table_name(&self.table)
                        .set_key(Some(crate::item::key(
                            pk.clone(),
                            format!("R#{hour:013}#{shard:02}#{reason}"),
                        )))
                        .update_expression(
                            "ADD #count :n SET reason = :reason, expires_at = :exp, sample_order = :order",
                        )
                        .expression_attribute_names("#count", "count")
                        .expression_attribute_values(":n", n(count))
                        .expression_attribute_values(":reason", s(reason))
                        .expression_attribute_values(":exp", self.expires_at(now))
                        .expression_attribute_values(":order", s(sample))
                        .build()
                        .map_err(build_err)?;
                    items.push(TransactWriteItem::builder().update(tally).build());
                }
            }
        }
        Ok(items)
    }

    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Tx, StoreError> {
        transact_items(&self.ddb, items).await
    }

    /// Every item of one trend partition whose sort key lies between `lower` and `upper`.
    async fn trend_items(
        &self,
        pk: String,
        lower: String,
        upper: String,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":lo", s(&lower))
                .expression_attribute_values(":hi", s(&upper))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(aws_err)?;
            items.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// The items of `kind` (`H` or `R`) for hours in `[from, to)`, day partition by day partition.
    async fn trend_range(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key_: &str,
        kind: char,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        if to <= from {
            return Ok(items);
        }
        let (from, to) = (from.max(0), to.max(0));
        for day in from.div_euclid(DAY_MS)..=(to - 1).div_euclid(DAY_MS) {
            // `K#{from}#` .. `K#{to}#` holds every shard (and reason) of the hours from `from`
            // up to, not including, `to`: `K#{to}#` sorts before all of hour `to`'s keys.
            let lower = format!("{kind}#{:013}#", from.max(day * DAY_MS));
            let upper = format!("{kind}#{:013}#", to.min((day + 1) * DAY_MS));
            for shard in 0..TREND_SHARDS {
                let pk = trend_pk(project, scope.as_str(), key_, day, shard);
                items.extend(self.trend_items(pk, lower.clone(), upper.clone()).await?);
            }
        }
        Ok(items)
    }

    /// The items of up to 100 keys of the delivery table.
    async fn batch_get(&self, keys: KeysAndAttributes) -> Result<Vec<Item>, StoreError> {
        crate::item::batch_get(&self.ddb, &self.table, keys).await
    }

    /// One item, read consistently.
    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        Ok(self
            .ddb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_err)?
            .item)
    }

    async fn get_batch(&self, project: ProjectId, order: &str) -> Result<Option<Item>, StoreError> {
        self.get(batch_pk(project, order), "B").await
    }

    /// Puts a batch's waiting settlements on the results queue (read from the item) and takes
    /// them out of its outbox.
    async fn publish(&self, item: &Item) -> Result<(), StoreError> {
        let outbox = outbox_of(item);
        if outbox.is_empty() {
            return Ok(());
        }
        self.publish_from_item(item, &outbox, &decode_results(item)?)
            .await
    }

    /// Publishes `settlements` of the batch `item` with `results`, the batch's identity read
    /// from the item.
    async fn publish_from_item(
        &self,
        item: &Item,
        settlements: &[Settlement],
        results: &[UserResult],
    ) -> Result<(), StoreError> {
        let meta: DispatchMeta =
            serde_json::from_str(&get_s(item, "meta").ok_or_else(|| missing("meta"))?)
                .map_err(StoreError::backend)?;
        let batch = Published {
            meta: &meta,
            order: &get_s(item, "order_no").unwrap_or_default(),
            index: get_n(item, "batch_index").unwrap_or_default(),
            sent_at: get_n(item, "sent_at"),
        };
        self.publish_settlements(&batch, settlements, results).await
    }

    /// Sends `settlements` of one batch to the results queue, then takes exactly that many
    /// entries out of the batch's outbox (more may have arrived since). The FIFO queue drops a
    /// settlement sent twice (same de-duplication id).
    async fn publish_settlements(
        &self,
        batch: &Published<'_>,
        settlements: &[Settlement],
        results: &[UserResult],
    ) -> Result<(), StoreError> {
        if settlements.is_empty() {
            return Ok(());
        }
        let Some(queue) = &self.results_queue_url else {
            return Err(StoreError::Backend("RESULTS_QUEUE_URL is not set".into()));
        };
        let meta = batch.meta;
        let order = batch.order;
        let mut events = Vec::new();
        for settlement in settlements {
            events.extend(
                results
                    .iter()
                    .filter(|r| {
                        settlement
                            .gids
                            .as_ref()
                            .is_none_or(|gids| gids.contains(&r.gid))
                    })
                    .map(|r| {
                        result_event(
                            meta,
                            order,
                            batch.index == REJECTED_INDEX,
                            r,
                            batch.sent_at.unwrap_or(settlement.at),
                            settlement.at,
                        )
                    }),
            );
        }
        self.publish_events(queue, meta, events, false).await?;
        let published = settlements.len();
        self.ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(meta.project_id, order), "B")))
            .update_expression({
                let mut expr = UpdateExpr::default();
                for i in 0..published {
                    expr.remove(format!("outbox[{i}]"));
                }
                expr.expression()
            })
            .condition_expression("size(outbox) >= :n")
            .expression_attribute_values(":n", n(published))
            .send()
            .await
            .map_err(aws_err)?;
        Ok(())
    }

    /// Puts the events of outcomes counted at a checkpoint on the results queue.
    async fn publish_settled(
        &self,
        meta: &DispatchMeta,
        settled: &[&Settled],
        grouped: bool,
    ) -> Result<(), StoreError> {
        let events: Vec<Event> = settled
            .iter()
            .flat_map(|s| {
                s.results
                    .iter()
                    .map(|r| result_event(meta, &s.order_no, false, r, s.sent_at, s.at))
            })
            .collect();
        if events.is_empty() {
            return Ok(());
        }
        let Some(queue) = &self.results_queue_url else {
            return Err(StoreError::Backend("RESULTS_QUEUE_URL is not set".into()));
        };
        self.publish_events(queue, meta, events, grouped).await
    }

    /// Sends events to the results queue in messages of at most [`RESULTS_MESSAGE_BYTES`],
    /// grouped by dispatch. A message's de-duplication id is a digest of its events' ids, so
    /// the same events sent again within the queue's window are dropped, and different ones
    /// never are.
    async fn publish_events(
        &self,
        queue: &str,
        meta: &DispatchMeta,
        events: Vec<Event>,
        grouped: bool,
    ) -> Result<(), StoreError> {
        let group = digest([format!("{}#{}", meta.project_id, meta.dispatch_id)].iter());
        for (body, ids) in pack_events(events)? {
            let dedup = digest(ids.iter());
            if grouped && self.groups.send(queue, &body, &group, &dedup).await == Grouped::Written {
                continue;
            }
            self.sqs
                .send_message()
                .queue_url(queue)
                .message_body(body)
                .message_group_id(&group)
                .message_deduplication_id(dedup)
                .send()
                .await
                .map_err(aws_err)?;
        }
        Ok(())
    }

    /// One checkpoint write (see [`DeliveryLedger::checkpoint`]) of outcomes of at most
    /// [`CHECKPOINT_HOURS`] hours.
    async fn checkpoint_once(
        &self,
        meta: &DispatchMeta,
        advance: &Advance<'_>,
        now: Millis,
    ) -> Result<Progress, StoreError> {
        let mut published: std::collections::HashSet<u32> = Default::default();
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            // The first round trusts what this instance last saw of the record; a refused
            // write reads it.
            let Some((pk, sk, record)) = self.record_of(meta, advance, rounds == 1).await? else {
                // A one-user dispatch whose batch was never claimed: nothing to save or count.
                return Ok(Progress::default().advanced(advance));
            };
            let (version, stored) = (record.version, &record.progress);
            let next = stored.advanced(advance);
            // Outcomes this write counts: not counted before, marked finished by it, each once.
            let mut seen = std::collections::HashSet::new();
            let fresh: Vec<&Settled> = advance
                .settled
                .iter()
                .filter(|s| {
                    !stored.is_finished(s.index)
                        && next.is_finished(s.index)
                        && seen.insert(s.index)
                })
                .collect();
            // Published before they are counted: a crash in between publishes them again
            // (consumers de-duplicate on `eventId`), never loses them.
            let unpublished: Vec<&Settled> = fresh
                .iter()
                .copied()
                .filter(|s| !published.contains(&s.index))
                .collect();
            // A one-batch dispatch's results go with the others published at once.
            self.publish_settled(meta, &unpublished, record.single)
                .await?;
            published.extend(unpublished.iter().map(|s| s.index));
            let (ok, failed) = fresh.iter().fold((0, 0), |(ok, failed), s| {
                let (o, f) = counts(&s.results);
                (ok + o, failed + f)
            });
            let remove_unsent = if record.unsent.is_some() {
                " REMOVE unsent"
            } else {
                ""
            };
            let mut head = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(pk.clone(), sk)))
                .expression_attribute_values(":p", json_s(&next)?)
                .expression_attribute_values(":next_version", n(version + 1));
            head = if sk == "META" {
                head.update_expression(format!(
                    "SET progress = :p, pv = :next_version, stalls = :zero, expires_at = :exp \
                     ADD settled_ok :ok, settled_failed :failed, batches_final :final{remove_unsent}"
                ))
                .expression_attribute_values(
                    ":final",
                    n(fresh.iter().filter(|s| s.complete).count()),
                )
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":exp", self.meta_expires_at(now))
                .expression_attribute_values(":ok", n(ok))
                .expression_attribute_values(":failed", n(failed))
            } else {
                // A one-user dispatch's batch item: its counts are the batch's own, and it
                // expires as a batch does (its record and its receipt deadline set that).
                head.update_expression(format!(
                    "SET progress = :p, pv = :next_version{remove_unsent}"
                ))
            };
            head = if version == 0 {
                head.condition_expression("attribute_exists(pk) AND attribute_not_exists(pv)")
            } else {
                head.condition_expression("pv = :version")
                    .expression_attribute_values(":version", n(version))
            };
            let head = TransactWriteItem::builder()
                .update(head.build().map_err(build_err)?)
                .build();
            let moves = with_sent(settled_moves(meta, &fresh), meta, record.unsent);
            // A one-batch dispatch's first checkpoint that counts no failure goes with the
            // others made at once.
            let grouped = match &moves {
                Some(m) if record.single && m.hours.iter().all(|h| h.reasons.is_empty()) => {
                    let me = self.clone();
                    self.groups
                        .checkpoint(
                            &pk,
                            head.clone(),
                            CounterMove::of(m),
                            now,
                            Arc::new(move |m, shard, now| me.counter_items(m, shard, now)),
                        )
                        .await
                }
                _ => Grouped::Alone,
            };
            let written = match grouped {
                Grouped::Written => Ok(Tx::Written),
                // Another delivery wrote the record since (its version only grows): read it.
                Grouped::Refused => Ok(Tx::Refused(Vec::new())),
                Grouped::Alone => {
                    let mut items = vec![head];
                    if let Some(moves) = &moves {
                        items.extend(self.stats_updates(moves, now)?);
                    }
                    self.transact(items).await
                }
            };
            if !matches!(written, Ok(Tx::Written)) {
                self.forget(&pk);
            }
            match written? {
                Tx::Written => {
                    self.remember(
                        &pk,
                        Known {
                            version: version + 1,
                            progress: next.clone(),
                            unsent: None,
                            single: record.single,
                        },
                    );
                    return Ok(next);
                }
                // Another delivery of this dispatch checkpointed since the read: merge into
                // what it wrote (anything it counted is skipped).
                Tx::Refused(_) if rounds < CHECKPOINT_ROUNDS => continue,
                Tx::Refused(_) => {
                    return Err(StoreError::Backend(
                        "checkpoint: the dispatch record kept changing under it".into(),
                    ));
                }
            }
        }
    }

    /// The record a checkpoint of `meta` writes to (key and sort key) as this instance knows it
    /// (`trust_known`) or reads it: the dispatch's `META` item, or for a one-user dispatch
    /// opened by its claim its only batch's item. `None` for such a dispatch whose batch was
    /// never claimed.
    async fn record_of(
        &self,
        meta: &DispatchMeta,
        advance: &Advance<'_>,
        trust_known: bool,
    ) -> Result<Option<(String, &'static str, Known)>, StoreError> {
        let dispatch = dispatch_pk(meta.project_id, &meta.dispatch_id);
        let only = (advance.batches == 1).then(|| {
            batch_pk(
                meta.project_id,
                &order_no(meta.project_id, &meta.dispatch_id, 0),
            )
        });
        if trust_known {
            if let Some(known) = self.recall(&dispatch) {
                return Ok(Some((dispatch, "META", known)));
            }
            if let Some(known) = only.as_ref().and_then(|b| self.recall(b)) {
                return Ok(only.map(|b| (b, "B", known)));
            }
        }
        let Some(only) = only else {
            let item = self.get(dispatch.clone(), "META").await?;
            return Ok(Some((
                dispatch,
                "META",
                Known::of(&item.ok_or_else(|| missing("META"))?)?,
            )));
        };
        let (head, batch) = self.dispatch_items(&dispatch, &only).await?;
        Ok(match (head, batch) {
            (Some(item), _) => Some((dispatch, "META", Known::of(&item)?)),
            (None, Some(item)) if item.contains_key(OPENED_BY_CLAIM) => {
                Some((only, "B", Known::of(&item)?))
            }
            // A one-user dispatch whose batch was never claimed has nothing to save; anything
            // else without a record is a fault.
            (None, None) if advance.settled.is_empty() && advance.abandoned.is_none() => None,
            _ => return Err(missing("META")),
        })
    }

    /// A dispatch's `META` item and its first batch's item, in one read.
    async fn dispatch_items(
        &self,
        dispatch: &str,
        first: &str,
    ) -> Result<(Option<Item>, Option<Item>), StoreError> {
        // What a dispatch's view and its checkpoint read of either, not a batch's results.
        let keys = KeysAndAttributes::builder()
            .consistent_read(true)
            .keys(key(dispatch.to_owned(), "META"))
            .keys(key(first.to_owned(), "B"))
            .projection_expression(
                "sk, meta, #users, batch_size, rejected, received_at, settled_ok, settled_failed, \
                 batches_final, opened_by_claim, succeeded, failed, #state, pv, progress, unsent",
            )
            .expression_attribute_names("#users", "users")
            .expression_attribute_names("#state", "state")
            .build()
            .map_err(build_err)?;
        let (mut head, mut batch) = (None, None);
        for item in self.batch_get(keys).await? {
            match get_s(&item, "sk").as_deref() {
                Some("META") => head = Some(item),
                Some("B") => batch = Some(item),
                _ => {}
            }
        }
        Ok((head, batch))
    }

    /// A transaction's put of an item that must not exist yet.
    fn put_new(&self, item: Item) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build_err)?,
            )
            .build())
    }

    /// A batch's item as its first claim writes it.
    fn claim_item(
        &self,
        meta: &DispatchMeta,
        index: usize,
        order: &OrderNo,
        users: u32,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Item, StoreError> {
        let mut item = key(batch_pk(meta.project_id, order), "B");
        for (k, v) in [
            ("order_no", s(order)),
            ("project", n(meta.project_id)),
            ("dispatch_id", s(&meta.dispatch_id)),
            ("batch_index", n(index)),
            ("touchpoint_id", s(&meta.touchpoint_id)),
            ("campaign_id", s(&meta.campaign_id)),
            ("meta", json_s(meta)?),
            ("users", n(users)),
            ("state", s("in_flight")),
            ("attempts", n(1)),
            ("lease_until", n(lease_until)),
            ("sent_at", n(now)),
            ("succeeded", n(0)),
            ("failed", n(0)),
            ("polls", n(0)),
            ("expires_at", self.expires_at(now)),
        ] {
            item.insert(k.into(), v);
        }
        Ok(item)
    }

    /// Puts an item that must not exist yet (a dispatch's open, a batch's first claim); false
    /// when it was there.
    async fn put_if_new(&self, item: Item) -> Result<bool, StoreError> {
        let put = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if conditional(&e) => Ok(false),
            Err(e) => Err(aws_err(e)),
        }
    }

    /// Claims a batch claimed before, as [`decide_claim`] says from what the ledger holds.
    async fn claim_existing(
        &self,
        meta: &DispatchMeta,
        order: &OrderNo,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Claim, StoreError> {
        let Some(current) = self.get_batch(meta.project_id, order).await? else {
            return Ok(Claim::NotBefore(now + 1_000));
        };
        let record = BatchRecord {
            state: get_s(&current, "state")
                .and_then(|s| BatchState::parse(&s))
                .ok_or_else(|| missing("state"))?,
            attempts: get_n(&current, "attempts").unwrap_or_default(),
            lease_until: get_n(&current, "lease_until"),
            next_attempt_at: get_n(&current, "next_attempt_at"),
            sent_at: get_n(&current, "sent_at"),
            lost: get_n(&current, "lost").unwrap_or_default(),
        };
        let decision = decide_claim(Some(&record), now);
        let ClaimDecision::Take { attempt, lost, .. } = decision else {
            if decision == ClaimDecision::Done {
                // Receipt results of an earlier poll that never reached the queue go out now;
                // the batch's own outcome goes to the checkpoint, which counts and publishes
                // it unless that was done.
                self.publish(&current).await?;
                if let Some(settled) = settled_of_item(&current)? {
                    return Ok(Claim::Settled(settled));
                }
            }
            return Ok(decision.claim(now));
        };
        let taken = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(meta.project_id, order), "B")))
            .update_expression(
                "SET #state = :in_flight, attempts = :next, lease_until = :lease, lost = :lost",
            )
            .condition_expression("attempts = :seen AND #state IN (:in_flight, :retry)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":in_flight", s("in_flight"))
            .expression_attribute_values(":retry", s("retry_wait"))
            .expression_attribute_values(":next", n(attempt))
            .expression_attribute_values(":seen", n(record.attempts))
            .expression_attribute_values(":lease", n(lease_until))
            .expression_attribute_values(":lost", n(lost))
            .send()
            .await;
        match taken {
            Ok(_) => Ok(decision.claim(now)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(Claim::NotBefore(now + 1_000))
            }
            Err(e) => Err(aws_err(e)),
        }
    }

    async fn publish_order(&self, project: ProjectId, order: &str) -> Result<(), StoreError> {
        if let Some(item) = self.get_batch(project, order).await? {
            self.publish(&item).await?;
        }
        Ok(())
    }
}

/// A results event with its id, serialized.
struct Event {
    id: String,
    json: String,
}

/// The `$ma_channel_touch` event of one user's outcome. `eventId` (`{orderNo}-{gid}`) is the
/// same however often it is published: a user has one final outcome per batch.
fn result_event(
    meta: &DispatchMeta,
    order: &str,
    rejected: bool,
    r: &UserResult,
    sent_at: Millis,
    at: Millis,
) -> Event {
    let id = format!("{order}-{}", r.gid);
    let json = json!({
        "event": "$ma_channel_touch", "eventId": id, "projectId": meta.project_id, "gid": r.gid,
        "campaignId": meta.campaign_id, "strategyId": meta.strategy_id, "spaceId": meta.space_id,
        "touchpointId": meta.touchpoint_id, "touchpointKind": meta.touchpoint_kind,
        "orderNo": if rejected { "" } else { order },
        "dispatchId": meta.dispatch_id, "status": r.status.code(), "errorMsg": r.status.reason(),
        "sentAt": sent_at, "resolvedAt": at,
    })
    .to_string();
    Event { id, json }
}

/// Bodies of at most [`RESULTS_MESSAGE_BYTES`] (`{"events":[…]}`), each with its events' ids.
fn pack_events(events: Vec<Event>) -> Result<Vec<(String, Vec<String>)>, StoreError> {
    const OPEN: &str = "{\"events\":[";
    const CLOSE: &str = "]}";
    let mut out = Vec::new();
    let mut body = String::from(OPEN);
    let mut ids = Vec::new();
    for e in events {
        if OPEN.len() + e.json.len() + CLOSE.len() > RESULTS_MESSAGE_BYTES {
            return Err(StoreError::Backend(
                format!(
                    "a results event of {} bytes cannot be published",
                    e.json.len()
                )
                .into(),
            ));
        }
        if !ids.is_empty() && body.len() + 1 + e.json.len() + CLOSE.len() > RESULTS_MESSAGE_BYTES {
            body.push_str(CLOSE);
            out.push((
                std::mem::replace(&mut body, String::from(OPEN)),
                std::mem::take(&mut ids),
            ));
        }
        if !ids.is_empty() {
            body.push(',');
        }
        body.push_str(&e.json);
        ids.push(e.id);
    }
    if !ids.is_empty() {
        body.push_str(CLOSE);
        out.push((body, ids));
    }
    Ok(out)
}

/// A 128-bit FNV-1a digest of `parts` in hex (32 characters): a FIFO de-duplication or group
/// id made of characters the queue accepts, whatever the parts contain.
fn digest<'a>(parts: impl Iterator<Item = &'a String>) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u128::from(b);
            h = h.wrapping_mul(0x0000000001000000000000000000013B);
        }
    }
    format!("{h:032x}")
}

/// The counter moves of outcomes counted at one checkpoint, grouped by the hour each was
/// recorded in, on the shard the first batch picks; `None` when nobody became final.
fn settled_moves<'a>(meta: &'a DispatchMeta, settled: &[&Settled]) -> Option<Moves<'a>> {
    let first = settled.first()?;
    let mut by_hour: std::collections::BTreeMap<Millis, Vec<&Settled>> = Default::default();
    for s in settled {
        by_hour
            .entry(touchpoint::delivery::hour_of(s.at))
            .or_default()
            .push(s);
    }
    let mut total = Delta {
        sent: 0,
        ok: 0,
        failed: 0,
    };
    let mut hours = Vec::new();
    for (hour, group) in by_hour {
        let mut delta = Delta {
            sent: 0,
            ok: 0,
            failed: 0,
        };
        for s in &group {
            let (ok, failed) = counts(&s.results);
            delta.ok += ok;
            delta.failed += failed;
        }
        total.ok += delta.ok;
        total.failed += delta.failed;
        let all: Vec<UserResult> = group
            .iter()
            .flat_map(|s| s.results.iter().cloned())
            .collect();
        let reasons = tally_reasons(&all)
            .into_iter()
            .map(|(reason, count)| {
                let sample = group
                    .iter()
                    .find(|s| {
                        s.results.iter().any(|u| {
                            u.status != UserStatus::Succeeded
                                && u.status
                                    .reason()
                                    .chars()
                                    .take(REASON_CHARS)
                                    .eq(reason.chars())
                        })
                    })
                    .map_or_else(String::new, |s| s.order_no.to_string());
                (reason, count, sample)
            })
            .collect();
        hours.push(HourMove {
            hour,
            delta,
            drill: group.last().map(|s| s.order_no.to_string()),
            reasons,
        });
    }
    (total.ok + total.failed > 0).then(|| Moves {
        project: meta.project_id,
        campaign: &meta.campaign_id,
        touchpoint: &meta.touchpoint_id,
        shard: shard_of(&first.order_no),
        total,
        hours,
    })
}

/// `moves` with a dispatch's users counted as sent (at the hour it was opened), when the
/// checkpoint is the first to count them (see `Known::unsent`).
fn with_sent<'a>(
    moves: Option<Moves<'a>>,
    meta: &'a DispatchMeta,
    unsent: Option<(i64, Millis)>,
) -> Option<Moves<'a>> {
    let Some((users, opened_at)) = unsent else {
        return moves;
    };
    let hour = touchpoint::delivery::hour_of(opened_at);
    let mut moves = moves.unwrap_or_else(|| Moves {
        project: meta.project_id,
        campaign: &meta.campaign_id,
        touchpoint: &meta.touchpoint_id,
        shard: shard_of(&meta.dispatch_id),
        total: Delta::default(),
        hours: Vec::new(),
    });
    moves.total.sent += users;
    match moves.hours.iter_mut().find(|h| h.hour == hour) {
        Some(h) => h.delta.sent += users,
        None => moves.hours.push(HourMove {
            hour,
            delta: Delta {
                sent: users,
                ..Delta::default()
            },
            drill: None,
            reasons: Vec::new(),
        }),
    }
    Some(moves)
}

/// The first outcome of a final or accepted batch item, as its record wrote it (users that
/// became final later through receipt polls were counted and published by the poller).
fn settled_of_item(item: &Item) -> Result<Option<Settled>, StoreError> {
    let state = get_s(item, "state").and_then(|s| BatchState::parse(&s));
    let index: i64 = get_n(item, "batch_index").unwrap_or(REJECTED_INDEX);
    if !matches!(state, Some(BatchState::Final | BatchState::Accepted)) || index < 0 {
        return Ok(None);
    }
    // Written with every outcome a record makes: an item without it was counted when it was
    // recorded (before checkpoints counted outcomes), and must not be counted again.
    let Some(first) = get_n::<usize>(item, "first_results") else {
        return Ok(None);
    };
    let mut results = decode_results(item)?;
    let complete = first >= get_n::<usize>(item, "users").unwrap_or_default();
    results.truncate(first);
    Ok(Some(Settled {
        complete,
        index: index as u32,
        order_no: get_s(item, "order_no")
            .ok_or_else(|| missing("order_no"))?
            .into(),
        sent_at: get_n(item, "sent_at").unwrap_or_default(),
        at: get_n(item, "accepted_at")
            .or_else(|| get_n(item, "resolved_at"))
            .unwrap_or_default(),
        results,
    }))
}

fn settlement_attr(
    id: String,
    at: Millis,
    gids: Option<Vec<i64>>,
) -> Result<AttributeValue, StoreError> {
    Ok(AttributeValue::L(vec![json_s(&Settlement {
        id,
        at,
        gids,
    })?]))
}

/// The settlements waiting in a batch's outbox.
fn outbox_of(item: &Item) -> Vec<Settlement> {
    item.get("outbox")
        .and_then(|v| v.as_l().ok())
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_s().ok())
                .filter_map(|s| serde_json::from_str(s).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[async_trait]
impl DeliveryLedger for DynamoDelivery {
    async fn open_dispatch(
        &self,
        meta: &DispatchMeta,
        users: u32,
        batch_size: u32,
        now: Millis,
    ) -> Result<Opened, StoreError> {
        if users == 1 {
            // Opened by its only batch's claim (`claim_opening`): one write, not two.
            return Ok(Opened {
                new: true,
                batch_size,
                progress: Progress::default(),
                stalls: 0,
                by_claim: true,
            });
        }
        let pk = dispatch_pk(meta.project_id, &meta.dispatch_id);
        let mut item = key(pk.clone(), "META");
        item.insert("meta".into(), json_s(meta)?);
        item.insert("users".into(), n(users));
        item.insert("batch_size".into(), n(batch_size));
        item.insert("received_at".into(), n(now));
        item.insert("stalls".into(), n(1));
        item.insert("expires_at".into(), self.meta_expires_at(now));
        // Counted as sent by the first checkpoint, with its outcomes (see `Known::unsent`).
        item.insert("unsent".into(), n(users));
        if self.put_if_new(item).await? {
            self.remember(
                &pk,
                Known {
                    version: 0,
                    progress: Progress::default(),
                    unsent: Some((i64::from(users), now)),
                    single: one_batch(users, batch_size),
                },
            );
            return Ok(Opened {
                new: true,
                batch_size,
                progress: Progress::default(),
                stalls: 0,
                by_claim: false,
            });
        }
        // Opened before: one more delivery, and its batch size and progress as
        // recorded (the item as it was before this update).
        let item = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), "META")))
            .update_expression("ADD stalls :one")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":one", n(1))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(aws_err)?
            .attributes
            .ok_or_else(|| missing("META"))?;
        let record = Known::of(&item)?;
        let progress = record.progress.clone();
        self.remember(&pk, record);
        Ok(Opened {
            new: false,
            batch_size: get_n(&item, "batch_size").unwrap_or(batch_size),
            progress,
            stalls: get_n(&item, "stalls").unwrap_or_default(),
            by_claim: false,
        })
    }

    async fn checkpoint(
        &self,
        meta: &DispatchMeta,
        advance: &Advance<'_>,
        now: Millis,
    ) -> Result<Progress, StoreError> {
        // Outcomes of more hours than one transaction can hold (each hour moves up to 12
        // items) are counted in several writes, the earliest hours first; a batch whose
        // outcome waits for a later write stays unfinished until then.
        let hours: Vec<Millis> = advance
            .settled
            .iter()
            .map(|s| touchpoint::delivery::hour_of(s.at))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if hours.len() <= CHECKPOINT_HOURS {
            return self.checkpoint_once(meta, advance, now).await;
        }
        let mut written = Progress::default();
        for chunk in hours.chunks(CHECKPOINT_HOURS) {
            let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
            let hour = |s: &Settled| touchpoint::delivery::hour_of(s.at);
            let later: std::collections::HashSet<u32> = advance
                .settled
                .iter()
                .filter(|s| hour(s) > last)
                .map(|s| s.index)
                .collect();
            let finished: Vec<u32> = advance
                .finished
                .iter()
                .copied()
                .filter(|i| !later.contains(i))
                .collect();
            let settled: Vec<Settled> = advance
                .settled
                .iter()
                .filter(|s| (first..=last).contains(&hour(s)))
                .cloned()
                .collect();
            let part = Advance {
                finished: &finished,
                settled: &settled,
                ..*advance
            };
            written = self.checkpoint_once(meta, &part, now).await?;
        }
        Ok(written)
    }

    async fn reject_dispatch(
        &self,
        meta: &DispatchMeta,
        gids: &[i64],
        reason: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut item = key(dispatch_pk(meta.project_id, &meta.dispatch_id), "META");
        item.insert("meta".into(), json_s(meta)?);
        item.insert("users".into(), n(gids.len()));
        item.insert("batch_size".into(), n(0));
        item.insert("rejected".into(), s(reason));
        item.insert("received_at".into(), n(now));
        item.insert("settled_failed".into(), n(gids.len()));
        item.insert("expires_at".into(), self.expires_at(now));
        let order = order_no(meta.project_id, &meta.dispatch_id, usize::MAX);
        let results: Vec<UserResult> = gids
            .iter()
            .map(|g| UserResult {
                gid: *g,
                status: UserStatus::failed(reason),
            })
            .collect();
        let mut batch = key(batch_pk(meta.project_id, &order), "B");
        for (k, v) in [
            ("order_no", s(&order)),
            ("project", n(meta.project_id)),
            ("dispatch_id", s(&meta.dispatch_id)),
            ("batch_index", n(REJECTED_INDEX)),
            ("touchpoint_id", s(&meta.touchpoint_id)),
            ("campaign_id", s(&meta.campaign_id)),
            ("meta", json_s(meta)?),
            ("users", n(gids.len())),
            ("state", s("final")),
            ("attempts", n(0)),
            ("succeeded", n(0)),
            ("failed", n(gids.len())),
            ("last_error", s(reason)),
            ("resolved_at", n(now)),
            ("results", encode_results(&results)?),
            ("outbox", settlement_attr(format!("{order}-r"), now, None)?),
            ("expires_at", self.expires_at(now)),
        ] {
            batch.insert(k.into(), v);
        }
        let n_users = gids.len() as i64;
        let delta = Delta {
            sent: n_users,
            ok: 0,
            failed: n_users,
        };
        let counters = self.stats_updates(
            &Moves {
                project: meta.project_id,
                campaign: &meta.campaign_id,
                touchpoint: &meta.touchpoint_id,
                shard: shard_of(&order),
                total: delta,
                hours: vec![HourMove::of(now, delta, &order, &results)],
            },
            now,
        )?;
        let head = [
            self.put_new(item)?,
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(batch))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        ];
        // A one-user dispatch is opened by its only batch's claim, which does not look for a
        // refusal's record: that batch's place is taken by a final, uncounted mark, so a later
        // delivery's claim finds it done. Refused because the batch is there, the dispatch was
        // claimed first and its delivery gives the user an outcome.
        let tombstone = match gids {
            [_] => {
                let first = order_no(meta.project_id, &meta.dispatch_id, 0);
                let mut mark = key(batch_pk(meta.project_id, &first), "B");
                for (k, v) in [
                    ("order_no", s(&first)),
                    ("project", n(meta.project_id)),
                    ("dispatch_id", s(&meta.dispatch_id)),
                    ("batch_index", n(REJECTED_INDEX)),
                    ("touchpoint_id", s(&meta.touchpoint_id)),
                    ("campaign_id", s(&meta.campaign_id)),
                    ("meta", json_s(meta)?),
                    ("users", n(1)),
                    ("state", s("final")),
                    ("attempts", n(0)),
                    ("succeeded", n(0)),
                    ("failed", n(0)),
                    ("last_error", s(reason)),
                    ("resolved_at", n(now)),
                    ("expires_at", self.expires_at(now)),
                ] {
                    mark.insert(k.into(), v);
                }
                Some(self.put_new(mark)?)
            }
            _ => None,
        };
        // Refused by a condition: refused before (the users' outcomes are there), or a
        // one-user dispatch claimed first.
        self.transact(head.into_iter().chain(tombstone).chain(counters).collect())
            .await?;
        self.publish_order(meta.project_id, &order).await
    }

    async fn claim_batch(
        &self,
        meta: &DispatchMeta,
        index: usize,
        order: &OrderNo,
        users: u32,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Claim, StoreError> {
        let item = self.claim_item(meta, index, order, users, now, lease_until)?;
        if self.put_if_new(item).await? {
            return Ok(first_send(now));
        }
        self.claim_existing(meta, order, now, lease_until).await
    }

    async fn claim_opening(
        &self,
        meta: &DispatchMeta,
        order: &OrderNo,
        batch_size: u32,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Claim, StoreError> {
        // The batch item is the dispatch's record too (see `dispatch_items`): what `META`
        // would hold, in the claim's one write.
        let mut item = self.claim_item(meta, 0, order, 1, now, lease_until)?;
        for (k, v) in [
            (OPENED_BY_CLAIM, n(1)),
            ("batch_size", n(batch_size)),
            ("received_at", n(now)),
            ("unsent", n(1)),
        ] {
            item.insert(k.into(), v);
        }
        if self.put_if_new(item).await? {
            self.remember(
                &batch_pk(meta.project_id, order),
                Known {
                    version: 0,
                    progress: Progress::default(),
                    unsent: Some((1, now)),
                    single: true,
                },
            );
            return Ok(first_send(now));
        }
        self.claim_existing(meta, order, now, lease_until).await
    }

    async fn hand_back(
        &self,
        meta: &DispatchMeta,
        order: &OrderNo,
        attempt: u32,
        now: Millis,
    ) -> Result<(), StoreError> {
        let ended = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(meta.project_id, order), "B")))
            .update_expression("SET lease_until = :now")
            .condition_expression("#state = :in_flight AND attempts = :attempt")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":in_flight", s("in_flight"))
            .expression_attribute_values(":attempt", n(attempt))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match ended {
            // Not that attempt's any more: nothing to hand back.
            Ok(_) => Ok(()),
            Err(e) if conditional(&e) => Ok(()),
            Err(e) => Err(aws_err(e)),
        }
    }

    async fn record_attempt(&self, record: &AttemptRecord) -> Result<Option<Settled>, StoreError> {
        let order = &record.order_no;
        let meta = &record.meta;
        // One write, conditional on the batch being this attempt's to record: the outcome is
        // durable before anything that can conflict (the counters follow at the checkpoint).
        let mut update = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(meta.project_id, order), "B")))
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":attempt", n(record.attempt));
        // The domain's condition for this outcome, as a condition expression.
        let condition = record_condition(&record.outcome);
        let mut states = Vec::new();
        for (i, st) in condition.states.iter().enumerate() {
            let name = format!(":st{i}");
            update = update.expression_attribute_values(&name, s(st.as_str()));
            states.push(name);
        }
        let mut expression = format!("attribute_exists(pk) AND #state IN ({})", states.join(", "));
        if condition.same_attempt {
            expression.push_str(" AND attempts = :attempt");
        }
        update = update.condition_expression(expression);
        let mut expr = UpdateExpr::setting(["attempts = :attempt", "#state = :state"]);
        expr.remove("lease_until");
        match &record.http_status {
            Some(code) => {
                expr.set("last_http_status = :http");
                update = update.expression_attribute_values(":http", n(code));
            }
            None => {
                expr.remove("last_http_status");
            }
        }
        match &record.error {
            Some(e) => {
                expr.set("last_error = :error");
                update = update.expression_attribute_values(":error", s(e));
            }
            None => {
                expr.remove("last_error");
            }
        }
        if let Some(x) = &record.response_excerpt {
            expr.set("response_excerpt = :excerpt");
            update = update.expression_attribute_values(":excerpt", s(x));
        }
        let settled: Option<&Vec<UserResult>> = match &record.outcome {
            AttemptOutcome::Retry { next_attempt_at } => {
                expr.set("next_attempt_at = :next");
                update = update
                    .expression_attribute_values(":state", s("retry_wait"))
                    .expression_attribute_values(":next", n(next_attempt_at));
                None
            }
            AttemptOutcome::Final(results) => {
                let (ok, failed) = counts(results);
                for clause in [
                    "results = :results",
                    "succeeded = :ok",
                    "failed = :failed",
                    "resolved_at = :at",
                    "first_results = :first",
                ] {
                    expr.set(clause);
                }
                expr.remove("next_attempt_at");
                update = update
                    .expression_attribute_values(":state", s("final"))
                    .expression_attribute_values(":results", encode_results(results)?)
                    .expression_attribute_values(":ok", n(ok))
                    .expression_attribute_values(":failed", n(failed))
                    .expression_attribute_values(":at", n(record.at))
                    .expression_attribute_values(":first", n(results.len()));
                Some(results)
            }
            AttemptOutcome::Accepted {
                results,
                pending,
                receipt_url,
                deadline,
                next_poll_at,
            } => {
                let (ok, failed) = counts(results);
                for clause in [
                    "results = :results",
                    "succeeded = :ok",
                    "failed = :failed",
                    "pending = :pending",
                    "receipt_url = :url",
                    "accepted_at = :at",
                    "deadline = :deadline",
                    "next_poll_at = :next_poll",
                    "due_tp = :due",
                    "pending_count = :pending_count",
                    "polls = :zero",
                    "first_results = :first",
                    // Kept until its receipt deadline plus the retention, whatever the
                    // retention: TTL never removes a batch whose receipts are awaited.
                    "expires_at = :accepted_expiry",
                ] {
                    expr.set(clause);
                }
                update = update
                    .expression_attribute_values(":accepted_expiry", self.expires_at(*deadline));
                expr.remove("next_attempt_at");
                update = update
                    .expression_attribute_values(":first", n(results.len()))
                    .expression_attribute_values(":state", s("accepted"))
                    .expression_attribute_values(":results", encode_results(results)?)
                    .expression_attribute_values(":ok", n(ok))
                    .expression_attribute_values(":failed", n(failed))
                    .expression_attribute_values(":pending", json_s(pending)?)
                    .expression_attribute_values(":url", s(receipt_url))
                    .expression_attribute_values(":at", n(record.at))
                    .expression_attribute_values(":deadline", n(deadline))
                    .expression_attribute_values(":next_poll", n(next_poll_at))
                    .expression_attribute_values(
                        ":due",
                        s(due_key(meta.project_id, &meta.touchpoint_id, order)),
                    )
                    .expression_attribute_values(":pending_count", n(pending.len()))
                    .expression_attribute_values(":zero", n(0));
                Some(results)
            }
        };
        let update = update.update_expression(expr.expression());
        // A checkpoint transaction naming this batch (a one-user dispatch's item is its
        // record too) refuses plain writes to it while it runs: the outcome is written once
        // it is over, never dropped for it (the receiver has answered).
        let mut wait = std::time::Duration::from_millis(20);
        let mut tries = 0;
        let written = loop {
            tries += 1;
            let sent = update.clone().send().await;
            match &sent {
                Err(e)
                    if tries < RECORD_TRIES
                        && e.as_service_error()
                            .is_some_and(|se| se.is_transaction_conflict_exception()) =>
                {
                    tokio::time::sleep(jittered(wait)).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(1));
                }
                _ => break sent,
            }
        };
        match written {
            Ok(_) => Ok(settled.map(|results| Settled {
                complete: matches!(record.outcome, AttemptOutcome::Final(_)),
                index: record.batch_index as u32,
                order_no: order.clone(),
                sent_at: record.sent_at,
                at: record.at,
                results: results.clone(),
            })),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                // Recorded already: by another sender, or by this very write when an earlier
                // try of it timed out after taking effect. Whatever is there is handed to the
                // checkpoint (which skips it if it was counted), so it is never lost.
                match self.get_batch(meta.project_id, order).await? {
                    Some(item) => settled_of_item(&item),
                    None => Err(StoreError::Backend(
                        format!("batch {order} vanished while its outcome was recorded").into(),
                    )),
                }
            }
            Err(e) => Err(aws_err(e)),
        }
    }
}

#[async_trait]
impl DeliveryReports for DynamoDelivery {
    async fn dispatch(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Option<DispatchView>, StoreError> {
        let first = batch_pk(project, &order_no(project, dispatch_id, 0));
        let item = match self
            .dispatch_items(&dispatch_pk(project, dispatch_id), &first)
            .await?
        {
            (Some(item), _) => item,
            (None, Some(batch)) if batch.contains_key(OPENED_BY_CLAIM) => {
                // A one-user dispatch opened by its claim: its batch is its record.
                let finished = get_s(&batch, "state").as_deref() == Some("final");
                return Ok(Some(DispatchView {
                    meta: serde_json::from_str(
                        &get_s(&batch, "meta").ok_or_else(|| missing("meta"))?,
                    )
                    .map_err(StoreError::backend)?,
                    users: 1,
                    batches: 1,
                    batch_size: get_n(&batch, "batch_size").unwrap_or(1),
                    rejected: None,
                    received_at: get_n(&batch, "received_at").unwrap_or_default(),
                    succeeded: get_n(&batch, "succeeded").unwrap_or_default(),
                    failed: get_n(&batch, "failed").unwrap_or_default(),
                    batches_finished: u32::from(finished),
                }));
            }
            _ => return Ok(None),
        };
        let users: u32 = get_n(&item, "users").unwrap_or_default();
        let batch_size: u32 = get_n(&item, "batch_size").unwrap_or_default();
        let rejected = get_s(&item, "rejected");
        Ok(Some(DispatchView {
            meta: serde_json::from_str(&get_s(&item, "meta").ok_or_else(|| missing("meta"))?)
                .map_err(StoreError::backend)?,
            users,
            batches: if rejected.is_some() || batch_size == 0 {
                0
            } else {
                users.div_ceil(batch_size)
            },
            batch_size,
            rejected,
            received_at: get_n(&item, "received_at").unwrap_or_default(),
            // Moved by the checkpoints, the receipt polls and a refusal: one item read.
            succeeded: get_n(&item, "settled_ok").unwrap_or_default(),
            failed: get_n(&item, "settled_failed").unwrap_or_default(),
            batches_finished: get_n(&item, "batches_final").unwrap_or_default(),
        }))
    }

    async fn batch_page(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        from: u32,
        limit: u32,
    ) -> Result<Vec<BatchView>, StoreError> {
        let Some(view) = self.dispatch(project, dispatch_id).await? else {
            return Ok(Vec::new());
        };
        let orders: Vec<OrderNo> = if view.rejected.is_some() {
            if from > 0 {
                return Ok(Vec::new());
            }
            vec![order_no(project, dispatch_id, usize::MAX)]
        } else {
            (from..view.batches.min(from.saturating_add(limit)))
                .map(|i| order_no(project, dispatch_id, i as usize))
                .collect()
        };
        let mut out = Vec::new();
        for chunk in orders.chunks(100) {
            let mut keys = KeysAndAttributes::builder().consistent_read(true);
            for o in chunk {
                keys = keys.keys(key(batch_pk(project, o), "B"));
            }
            for item in self.batch_get(keys.build().map_err(build_err)?).await? {
                let mut view = batch_view(&item)?;
                view.results.clear();
                out.push(view);
            }
        }
        out.sort_by_key(|b| b.batch_index);
        Ok(out)
    }

    async fn batch(
        &self,
        project: ProjectId,
        order: &OrderNo,
    ) -> Result<Option<BatchView>, StoreError> {
        match self.get_batch(project, order).await? {
            Some(item) if get_n::<ProjectId>(&item, "project") == Some(project) => {
                Ok(Some(batch_view(&item)?))
            }
            _ => Ok(None),
        }
    }

    async fn stats(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key_: &str,
    ) -> Result<Counters, StoreError> {
        let scope = scope.as_str();
        // Every shard in one read.
        let mut keys = KeysAndAttributes::builder().consistent_read(true);
        for shard in 0..STAT_SHARDS {
            keys = keys.keys(key(stats_pk(project, scope, key_, shard), "T"));
        }
        let items = self.batch_get(keys.build().map_err(build_err)?).await?;
        let mut c = Counters::default();
        for item in &items {
            c.sent += get_n::<u64>(item, "sent").unwrap_or_default();
            c.succeeded += get_n::<u64>(item, "succeeded").unwrap_or_default();
            c.failed += get_n::<u64>(item, "failed").unwrap_or_default();
        }
        c.pending = c.sent.saturating_sub(c.succeeded + c.failed);
        Ok(c)
    }

    async fn stats_series(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key_: &str,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<HourStats>, StoreError> {
        let items = self
            .trend_range(project, scope, key_, 'H', from, to)
            .await?;
        Ok(merge_hours(items.iter().filter_map(|item| {
            let sk = get_s(item, "sk")?;
            Some(HourStats {
                hour: sk.get(2..15)?.parse().ok()?,
                sent: get_n(item, "sent").unwrap_or_default(),
                succeeded: get_n(item, "succeeded").unwrap_or_default(),
                failed: get_n(item, "failed").unwrap_or_default(),
                last_order_no: get_s(item, "last_order").map(OrderNo::from),
            })
        })))
    }

    async fn failure_reasons(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key_: &str,
        from: Millis,
        to: Millis,
        limit: usize,
    ) -> Result<Vec<ReasonCount>, StoreError> {
        let items = self
            .trend_range(project, scope, key_, 'R', from, to)
            .await?;
        Ok(merge_reasons(
            items.iter().filter_map(|item| {
                Some(ReasonCount {
                    reason: get_s(item, "reason")?,
                    count: get_n(item, "count").unwrap_or_default(),
                    sample_order_no: get_s(item, "sample_order").map(OrderNo::from),
                })
            }),
            limit,
        ))
    }
}

#[async_trait]
impl ReceiptLedger for DynamoDelivery {
    async fn due_polls(
        &self,
        touchpoint: Option<(ProjectId, &TouchpointId)>,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<PendingBatch>, StoreError> {
        let Some((project, id)) = touchpoint else {
            return Err(StoreError::Backend(
                "on AWS, receipt rounds run per touchpoint (one schedule each)".into(),
            ));
        };
        // Every shard of the touchpoint's index, the most overdue first. The index projects
        // a few small attributes; the lease hands out the batch itself.
        let mut out = Vec::new();
        for shard in 0..DUE_SHARDS {
            let mut start = None;
            loop {
                let page = self
                    .ddb
                    .query()
                    .table_name(&self.table)
                    .index_name("due")
                    .key_condition_expression("due_tp = :tp AND next_poll_at <= :now")
                    .expression_attribute_values(":tp", s(due_shard_key(project, id, shard)))
                    .expression_attribute_values(":now", n(now))
                    .set_exclusive_start_key(start.take())
                    .limit(i32::try_from(limit).unwrap_or(i32::MAX).max(1))
                    .send()
                    .await
                    .map_err(aws_err)?;
                for item in page.items() {
                    out.push(PendingBatch {
                        order_no: get_s(item, "order_no")
                            .ok_or_else(|| missing("order_no"))?
                            .into(),
                        project_id: project,
                        touchpoint_id: id.clone(),
                        receipt_url: String::new(),
                        pending: Vec::new(),
                        accepted_at: get_n(item, "accepted_at").unwrap_or_default(),
                        deadline: get_n(item, "deadline").unwrap_or_default(),
                        next_poll_at: get_n(item, "next_poll_at").unwrap_or_default(),
                        polls: get_n(item, "polls").unwrap_or_default(),
                    });
                }
                let shard_items = out.len();
                match page.last_evaluated_key {
                    Some(k) if !k.is_empty() && shard_items < limit * (shard as usize + 1) => {
                        start = Some(k)
                    }
                    _ => break,
                }
            }
        }
        out.sort_by_key(|b| b.next_poll_at);
        out.truncate(limit);
        Ok(out)
    }

    async fn lease_poll(
        &self,
        project: ProjectId,
        order: &OrderNo,
        now: Millis,
        until: Millis,
    ) -> Result<Option<PendingBatch>, StoreError> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(project, order), "B")))
            .update_expression("SET poll_lease_until = :until")
            .condition_expression("#state = :accepted AND next_poll_at <= :now AND (attribute_not_exists(poll_lease_until) OR poll_lease_until <= :now)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":accepted", s("accepted"))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":until", n(until))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                Ok(Some(PendingBatch {
                    order_no: order.clone(),
                    project_id: project,
                    touchpoint_id: get_s(&item, "touchpoint_id").unwrap_or_default().into(),
                    receipt_url: get_s(&item, "receipt_url").unwrap_or_default(),
                    pending: json_of(&item, "pending")?,
                    accepted_at: get_n(&item, "accepted_at").unwrap_or_default(),
                    deadline: get_n(&item, "deadline").unwrap_or_default(),
                    next_poll_at: get_n(&item, "next_poll_at").unwrap_or_default(),
                    polls: get_n(&item, "polls").unwrap_or_default(),
                }))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(aws_err(e)),
        }
    }

    async fn record_poll(&self, record: &PollRecord) -> Result<(), StoreError> {
        let order = &record.order_no;
        let Some(item) = self.get_batch(record.project_id, order).await? else {
            return Ok(());
        };
        if get_s(&item, "state").as_deref() != Some("accepted") {
            return Ok(());
        }
        let mut pending: Vec<i64> = json_of(&item, "pending")?;
        let mut results: Vec<UserResult> = decode_results(&item)?;
        let mut settled: Vec<UserResult> = record
            .settled
            .iter()
            .filter(|r| pending.contains(&r.gid))
            .cloned()
            .collect();
        bound_reasons(&results, &mut settled);
        pending.retain(|g| !settled.iter().any(|r| r.gid == *g));
        results.extend(settled.iter().cloned());
        let (ok, failed) = counts(&results);
        let polls: u32 = get_n(&item, "polls").unwrap_or_default();
        let made_request = record.http_status.is_some() || record.error.is_some();
        let done = pending.is_empty();
        let mut expr = UpdateExpr::setting([
            "pending = :pending",
            "pending_count = :pending_count",
            "results = :results",
            "succeeded = :ok",
            "failed = :failed",
            "polls = :polls",
        ]);
        expr.remove("poll_lease_until");
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(batch_pk(record.project_id, order), "B")))
            .condition_expression("#state = :accepted AND polls = :seen_polls")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":accepted", s("accepted"))
            .expression_attribute_values(":seen_polls", n(polls))
            .expression_attribute_values(":pending", json_s(&pending)?)
            .expression_attribute_values(":pending_count", n(pending.len()))
            .expression_attribute_values(":results", encode_results(&results)?)
            .expression_attribute_values(":ok", n(ok))
            .expression_attribute_values(":failed", n(failed))
            .expression_attribute_values(":polls", n(polls + u32::from(made_request)));
        if done {
            expr.set("#state = :final").set("resolved_at = :at");
            expr.remove("due_tp").remove("next_poll_at");
            update = update
                .expression_attribute_values(":final", s("final"))
                .expression_attribute_values(":at", n(record.at));
        } else {
            expr.set("next_poll_at = :next");
            update = update.expression_attribute_values(":next", n(record.next_poll_at));
        }
        if let Some(code) = record.http_status {
            expr.set("last_http_status = :http");
            update = update.expression_attribute_values(":http", n(code));
        }
        match &record.error {
            Some(e) => {
                expr.set("last_error = :error");
                update = update.expression_attribute_values(":error", s(e));
            }
            None => {
                expr.remove("last_error");
            }
        }
        let settlement = Settlement {
            id: format!("{order}-p{polls}"),
            at: record.at,
            gids: Some(settled.iter().map(|r| r.gid).collect()),
        };
        if !settled.is_empty() {
            expr.set("outbox = list_append(if_not_exists(outbox, :empty), :outbox)");
            update = update
                .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
                .expression_attribute_values(
                    ":outbox",
                    AttributeValue::L(vec![json_s(&settlement)?]),
                );
        }
        let update = update
            .update_expression(expr.expression())
            .build()
            .map_err(build_err)?;
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        let (s_ok, s_failed) = counts(&settled);
        if s_ok + s_failed > 0 && !item.contains_key(OPENED_BY_CLAIM) {
            // The dispatch's own counters (its record outlives the receipt deadline); a
            // one-user dispatch opened by its claim counts from this very item.
            let dispatch: String = get_s(&item, "dispatch_id").unwrap_or_default();
            items.push(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(key(dispatch_pk(record.project_id, &dispatch), "META")))
                            .update_expression(
                                "ADD settled_ok :ok, settled_failed :failed, batches_final :final",
                            )
                            .expression_attribute_values(":ok", n(s_ok))
                            .expression_attribute_values(":failed", n(s_failed))
                            .expression_attribute_values(":final", n(u32::from(done)))
                            .build()
                            .map_err(build_err)?,
                    )
                    .build(),
            );
        }
        if s_ok + s_failed > 0 {
            let project: ProjectId = get_n(&item, "project").unwrap_or_default();
            let campaign = get_s(&item, "campaign_id").unwrap_or_default();
            let touchpoint = get_s(&item, "touchpoint_id").unwrap_or_default();
            let delta = Delta {
                sent: 0,
                ok: s_ok,
                failed: s_failed,
            };
            items.extend(self.stats_updates(
                &Moves {
                    project,
                    campaign: &campaign,
                    touchpoint: &touchpoint,
                    shard: shard_of(order),
                    total: delta,
                    hours: vec![HourMove::of(record.at, delta, order, &settled)],
                },
                record.at,
            )?);
        }
        // Refused: another round applied this poll already; nothing is counted twice.
        if let Tx::Refused(_) = self.transact(items).await? {
            return Ok(());
        }
        // Published from what was read and just written: the outbox as it was (anything an
        // earlier crash left there) plus this settlement, over the results as they are now.
        if !settled.is_empty() {
            let mut outbox = outbox_of(&item);
            outbox.push(settlement);
            self.publish_from_item(&item, &outbox, &results).await?;
        }
        Ok(())
    }

    async fn pending_receipts(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for shard in 0..DUE_SHARDS {
            let accepted = query_all(
                self.ddb
                    .query()
                    .table_name(&self.table)
                    .index_name("due")
                    .key_condition_expression("due_tp = :tp")
                    .expression_attribute_values(
                        ":tp",
                        s(due_shard_key(project, touchpoint_id, shard)),
                    ),
            )
            .await?;
            total += accepted
                .iter()
                .map(|item| get_n::<u64>(item, "pending_count").unwrap_or_default())
                .sum::<u64>();
        }
        Ok(total)
    }
}

#[async_trait]
impl DispatchIntake for DynamoDelivery {
    /// Claims the dispatch id (conditional put), then sends the body to the dispatch queue;
    /// the claim is released if the send fails, so the producer can retry.
    async fn submit(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        body: String,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let Some(queue) = &self.dispatch_queue_url else {
            return Err(StoreError::Backend("DISPATCH_QUEUE_URL is not set".into()));
        };
        let mut item = key(dispatch_pk(project, dispatch_id), "INTAKE");
        item.insert("received_at".into(), n(now));
        item.insert("expires_at".into(), self.expires_at(now));
        let put = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(aws_err(e)),
        }
        // A body larger than a message is stored in parts; the message refers to them.
        let sent = match self
            .bodies
            .message_for(project, dispatch_id, body, now / 1000 + self.retention_secs)
            .await
        {
            Ok(message) => self
                .sqs
                .send_message()
                .queue_url(queue)
                .message_body(message)
                .send()
                .await
                .map(|_| ())
                .map_err(aws_err),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            let _ = self
                .ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(dispatch_pk(project, dispatch_id), "INTAKE")))
                .send()
                .await;
            return Err(e);
        }
        Ok(true)
    }

    async fn submitted(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Option<Submission>, StoreError> {
        let item = self
            .get(dispatch_pk(project, dispatch_id), "INTAKE")
            .await?;
        Ok(item.map(|item| Submission {
            received_at: get_n(&item, "received_at").unwrap_or_default(),
            dead_letter_reason: None,
        }))
    }
}
