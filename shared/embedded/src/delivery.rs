//! [`DeliveryStore`] on SQLite, the local dispatch queue, and the results file publisher.

use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};
use serde_json::{Value, json};
use touchpoint::ProjectId;
use touchpoint::clock::Millis;
use touchpoint::delivery::*;
use touchpoint::dispatch::order_no;
use touchpoint::ids::{DispatchId, OrderNo, TouchpointId};
use touchpoint::ledger::{BatchRecord, ClaimDecision, decide_claim, record_condition};
use touchpoint::ports::StoreError;
use touchpoint::protocol::UserStatus;

use crate::store::{Cached, SqliteStore, backend};

/// Index of the pseudo-batch that holds a refused dispatch's users.
const REJECTED_INDEX: i64 = -1;

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::backend(e)
}

/// What one write adds to a dispatch's statistics.
struct Tally<'a> {
    sent: i64,
    succeeded: i64,
    failed: i64,
    /// The batch, for drill-down from the hour and reason tallies.
    order_no: Option<&'a str>,
    /// Failure reasons with counts ([`touchpoint::delivery::tally_reasons`]).
    reasons: Vec<(String, u64)>,
}

impl<'a> Tally<'a> {
    fn sent(n: i64) -> Tally<'a> {
        Tally {
            sent: n,
            succeeded: 0,
            failed: 0,
            order_no: None,
            reasons: Vec::new(),
        }
    }

    fn settled(order_no: &'a str, results: &[UserResult]) -> Tally<'a> {
        let (succeeded, failed) = counts(results);
        Tally {
            sent: 0,
            succeeded,
            failed,
            order_no: Some(order_no),
            reasons: touchpoint::delivery::tally_reasons(results),
        }
    }
}

/// Moves the campaign's and the touchpoint's totals, their counters for the hour `at` falls
/// in, and their failure-reason tallies, all in the caller's transaction.
fn bump_stats(
    tx: &Transaction<'_>,
    project: ProjectId,
    campaign: &str,
    touchpoint: &str,
    tally: &Tally<'_>,
    at: Millis,
) -> Result<(), StoreError> {
    if tally.sent == 0 && tally.succeeded == 0 && tally.failed == 0 {
        return Ok(());
    }
    let hour = touchpoint::delivery::hour_of(at);
    let mut total = tx
        .prepare_cached(
            "INSERT INTO stats (project_id, scope, key, sent, succeeded, failed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (project_id, scope, key) DO UPDATE SET
               sent = sent + excluded.sent, succeeded = succeeded + excluded.succeeded, failed = failed + excluded.failed",
        )
        .map_err(backend)?;
    let mut hourly = tx
        .prepare_cached(
            "INSERT INTO stats_hourly (project_id, scope, key, hour, sent, succeeded, failed, last_order)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (project_id, scope, key, hour) DO UPDATE SET
               sent = sent + excluded.sent, succeeded = succeeded + excluded.succeeded, failed = failed + excluded.failed,
               last_order = coalesce(excluded.last_order, last_order)",
        )
        .map_err(backend)?;
    let mut reasons = tx
        .prepare_cached(
            "INSERT INTO stats_reasons (project_id, scope, key, hour, reason, count, sample_order)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (project_id, scope, key, hour, reason) DO UPDATE SET
               count = count + excluded.count, sample_order = excluded.sample_order",
        )
        .map_err(backend)?;
    for (scope, key) in [("campaign", campaign), ("touchpoint", touchpoint)] {
        total
            .execute(params![
                project,
                scope,
                key,
                tally.sent,
                tally.succeeded,
                tally.failed
            ])
            .map_err(backend)?;
        hourly
            .execute(params![
                project,
                scope,
                key,
                hour,
                tally.sent,
                tally.succeeded,
                tally.failed,
                tally.order_no
            ])
            .map_err(backend)?;
        for (reason, count) in &tally.reasons {
            reasons
                .execute(params![
                    project,
                    scope,
                    key,
                    hour,
                    reason,
                    *count as i64,
                    tally.order_no
                ])
                .map_err(backend)?;
        }
    }
    Ok(())
}

fn counts(results: &[UserResult]) -> (i64, i64) {
    let ok = results
        .iter()
        .filter(|r| r.status == UserStatus::Succeeded)
        .count() as i64;
    (ok, results.len() as i64 - ok)
}

/// Queues newly final results of a batch for publication (the results outbox).
fn enqueue_results(
    tx: &Transaction<'_>,
    order_no: &OrderNo,
    results: &[UserResult],
    at: Millis,
) -> Result<(), StoreError> {
    if results.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(results).map_err(json_err)?;
    tx.prepare_cached("INSERT INTO outbox (order_no, results, resolved_at) VALUES (?1, ?2, ?3)")
        .map_err(backend)?
        .execute(params![order_no.as_str(), json, at])
        .map_err(backend)?;
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(
    s: Option<String>,
) -> Result<T, StoreError> {
    match s {
        Some(s) if !s.is_empty() => serde_json::from_str(&s).map_err(json_err),
        _ => Ok(T::default()),
    }
}

fn insert_dispatch(
    tx: &Transaction<'_>,
    meta: &DispatchMeta,
    users: u32,
    batch_size: u32,
    rejected: Option<&str>,
    now: Millis,
) -> Result<bool, StoreError> {
    let meta_json = serde_json::to_string(meta).map_err(json_err)?;
    let n = tx
        .execute_cached(
            "INSERT OR IGNORE INTO dispatches (project_id, dispatch_id, meta, users, batch_size, rejected, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![meta.project_id, meta.dispatch_id.as_str(), meta_json, users, batch_size, rejected, now],
        )
        .map_err(backend)?;
    Ok(n == 1)
}

const BATCH_COLUMNS: &str = "order_no, dispatch_id, batch_index, touchpoint_id, campaign_id, state, users, succeeded, failed,
     attempts, last_http_status, last_error, response_excerpt, next_attempt_at, sent_at, resolved_at, results,
     pending, polls, next_poll_at, deadline";

fn row_to_batch(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawBatch> {
    let state: String = r.get(5)?;
    Ok((
        BatchView {
            order_no: r.get::<_, String>(0)?.into(),
            dispatch_id: r.get::<_, String>(1)?.into(),
            batch_index: r.get(2)?,
            touchpoint_id: r.get::<_, String>(3)?.into(),
            campaign_id: r.get(4)?,
            state: BatchState::parse(&state).unwrap_or(BatchState::InFlight),
            users: r.get(6)?,
            succeeded: r.get(7)?,
            failed: r.get(8)?,
            attempts: r.get(9)?,
            last_http_status: r.get(10)?,
            last_error: r.get(11)?,
            response_excerpt: r.get(12)?,
            next_attempt_at: r.get(13)?,
            sent_at: r.get(14)?,
            resolved_at: r.get(15)?,
            results: Vec::new(),
            pending: Vec::new(),
            polls: r.get(18)?,
            next_poll_at: r.get(19)?,
            deadline: r.get(20)?,
        },
        (
            r.get::<_, Option<String>>(16)?,
            r.get::<_, Option<String>>(17)?,
        ),
    ))
}

type RawBatch = (BatchView, (Option<String>, Option<String>));

fn with_results((mut view, (results, pending)): RawBatch) -> Result<BatchView, StoreError> {
    view.results = parse_json(results)?;
    view.pending = parse_json(pending)?;
    Ok(view)
}

#[async_trait]
impl DeliveryLedger for SqliteStore {
    async fn open_dispatch(
        &self,
        meta: &DispatchMeta,
        users: u32,
        batch_size: u32,
        now: Millis,
    ) -> Result<Opened, StoreError> {
        let meta = meta.clone();
        let writes = self.writes();
        self.tx(move |tx| {
            let new = insert_dispatch(tx, &meta, users, batch_size, None, now)?;
            if new {
                bump_stats(
                    tx,
                    meta.project_id,
                    &meta.campaign_id,
                    &meta.touchpoint_id,
                    &Tally::sent(i64::from(users)),
                    now,
                )?;
                writes.fetch_add(1, Ordering::Relaxed);
            }
            let (batch_size, progress, stalls): (u32, Option<String>, u32) = tx
                .query_row_cached(
                    "UPDATE dispatches SET stalls = stalls + 1 WHERE project_id = ?1 AND dispatch_id = ?2
                     RETURNING batch_size, progress, stalls - 1",
                    params![meta.project_id, meta.dispatch_id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(backend)?;
            Ok(Opened { new, batch_size, progress: parse_json(progress)?, stalls, by_claim: false })
        })
        .await
    }

    async fn checkpoint(
        &self,
        meta: &DispatchMeta,
        advance: &Advance<'_>,
        _now: Millis,
    ) -> Result<Progress, StoreError> {
        // Outcomes were counted and their events written by `record_attempt`, in its own
        // transaction: only the progress moves here, merged into the stored one.
        let project = meta.project_id;
        let dispatch_id = meta.dispatch_id.clone();
        let (batches, abandoned) = (advance.batches, advance.abandoned.map(str::to_owned));
        let (looked, finished) = (advance.looked.to_vec(), advance.finished.to_vec());
        self.tx(move |tx| {
            let stored: Option<String> = tx
                .query_row_cached(
                    "SELECT progress FROM dispatches WHERE project_id = ?1 AND dispatch_id = ?2",
                    params![project, dispatch_id.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?
                .flatten();
            let stored: Progress = parse_json(stored)?;
            let next = stored.advanced(&Advance {
                batches,
                looked: &looked,
                finished: &finished,
                abandoned: abandoned.as_deref(),
                settled: &[],
            });
            let text = serde_json::to_string(&next).map_err(json_err)?;
            tx.execute_cached(
                "UPDATE dispatches SET progress = ?3, stalls = 0 WHERE project_id = ?1 AND dispatch_id = ?2",
                params![project, dispatch_id.as_str(), text],
            )
            .map_err(backend)?;
            Ok(next)
        })
        .await
    }

    async fn reject_dispatch(
        &self,
        meta: &DispatchMeta,
        gids: &[i64],
        reason: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let meta = meta.clone();
        let gids = gids.to_vec();
        let reason = reason.to_owned();
        self.tx(move |tx| {
            if !insert_dispatch(tx, &meta, gids.len() as u32, 0, Some(&reason), now)? {
                return Ok(());
            }
            let results: Vec<UserResult> = gids
                .iter()
                .map(|gid| UserResult { gid: *gid, status: UserStatus::failed(reason.clone()) })
                .collect();
            let results_json = serde_json::to_string(&results).map_err(json_err)?;
            tx.execute_cached(
                "INSERT INTO batches (order_no, project_id, dispatch_id, batch_index, touchpoint_id, campaign_id, users,
                                      state, attempts, last_error, resolved_at, succeeded, failed, results)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'final', 0, ?8, ?9, 0, ?7, ?10)",
                params![
                    order_no(meta.project_id, &meta.dispatch_id, usize::MAX).as_str(),
                    meta.project_id,
                    meta.dispatch_id.as_str(),
                    REJECTED_INDEX,
                    meta.touchpoint_id.as_str(),
                    meta.campaign_id,
                    gids.len() as i64,
                    reason,
                    now,
                    results_json
                ],
            )
            .map_err(backend)?;
            enqueue_results(tx, &order_no(meta.project_id, &meta.dispatch_id, usize::MAX), &results, now)?;
            let order = order_no(meta.project_id, &meta.dispatch_id, usize::MAX);
            let mut tally = Tally::settled(&order, &results);
            tally.sent = gids.len() as i64;
            bump_stats(tx, meta.project_id, &meta.campaign_id, &meta.touchpoint_id, &tally, now)
        })
        .await?;
        self.notify_results();
        Ok(())
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
        let meta = meta.clone();
        let order_no = order_no.to_owned();
        let writes = self.writes();
        self.tx(move |tx| {
            let current: Option<BatchRecord> = tx
                .query_row_cached(
                    "SELECT state, attempts, lease_until, next_attempt_at, sent_at, lost FROM batches WHERE order_no = ?1",
                    params![order_no.as_str()],
                    |r| {
                        let state: String = r.get(0)?;
                        Ok(BatchRecord {
                            state: BatchState::parse(&state).unwrap_or(BatchState::InFlight),
                            attempts: r.get(1)?,
                            lease_until: r.get(2)?,
                            next_attempt_at: r.get(3)?,
                            sent_at: r.get(4)?,
                            lost: r.get(5)?,
                        })
                    },
                )
                .optional()
                .map_err(backend)?;
            let decision = decide_claim(current.as_ref(), now);
            match &decision {
                ClaimDecision::Create => {
                    tx.execute_cached(
                        "INSERT INTO batches (order_no, project_id, dispatch_id, batch_index, touchpoint_id, campaign_id,
                                              users, state, attempts, lease_until, sent_at, succeeded, failed)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'in_flight', 1, ?8, ?9, 0, 0)",
                        params![
                            order_no.as_str(),
                            meta.project_id,
                            meta.dispatch_id.as_str(),
                            index as i64,
                            meta.touchpoint_id.as_str(),
                            meta.campaign_id,
                            users,
                            lease_until,
                            now
                        ],
                    )
                    .map_err(backend)?;
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                ClaimDecision::Take { attempt, lost, .. } => {
                    tx.execute_cached(
                        "UPDATE batches SET state = 'in_flight', attempts = ?2, lease_until = ?3, lost = ?4 WHERE order_no = ?1",
                        params![order_no.as_str(), attempt, lease_until, lost],
                    )
                    .map_err(backend)?;
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                ClaimDecision::Wait(_) | ClaimDecision::Done => {}
            }
            Ok(decision.claim(now))
        })
        .await
    }

    async fn claim_opening(
        &self,
        meta: &DispatchMeta,
        order: &OrderNo,
        _batch_size: u32,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Claim, StoreError> {
        // Every dispatch was opened at `open_dispatch` (one local transaction each).
        self.claim_batch(meta, 0, order, 1, now, lease_until).await
    }

    async fn hand_back(
        &self,
        _meta: &DispatchMeta,
        order_no: &OrderNo,
        attempt: u32,
        now: Millis,
    ) -> Result<(), StoreError> {
        let order_no = order_no.to_owned();
        let writes = self.writes();
        self.tx(move |tx| {
            let ended = tx
                .execute_cached(
                    "UPDATE batches SET lease_until = ?3 WHERE order_no = ?1 AND state = 'in_flight' AND attempts = ?2",
                    params![order_no.as_str(), attempt, now],
                )
                .map_err(backend)?;
            writes.fetch_add(ended as u64, Ordering::Relaxed);
            Ok(())
        })
        .await
    }

    async fn record_attempt(&self, record: &AttemptRecord) -> Result<Option<Settled>, StoreError> {
        let record = record.clone();
        let writes = self.writes();
        let settles = !matches!(record.outcome, AttemptOutcome::Retry { .. });
        self.tx(move |tx| {
            let current: Option<(String, u32)> = tx
                .query_row_cached(
                    "SELECT state, attempts FROM batches WHERE order_no = ?1",
                    params![record.order_no.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            let condition = record_condition(&record.outcome);
            let allowed = current.is_some_and(|(state, attempts)| {
                BatchState::parse(&state).is_some_and(|st| condition.holds(st, attempts, record.attempt))
            });
            // Already settled, or taken by another sender since: nothing is written twice.
            if !allowed {
                return Ok(());
            }
            writes.fetch_add(1, Ordering::Relaxed);
            match &record.outcome {
                AttemptOutcome::Retry { next_attempt_at } => {
                    tx.execute_cached(
                        "UPDATE batches SET state = 'retry_wait', attempts = ?2, next_attempt_at = ?3, last_http_status = ?4,
                                last_error = ?5, response_excerpt = ?6, lease_until = NULL
                         WHERE order_no = ?1 AND state = 'in_flight'",
                        params![
                            record.order_no.as_str(),
                            record.attempt,
                            next_attempt_at,
                            record.http_status,
                            record.error,
                            record.response_excerpt
                        ],
                    )
                    .map_err(backend)?;
                    Ok(())
                }
                AttemptOutcome::Final(results) => {
                    let (ok, failed) = counts(results);
                    let results_json = serde_json::to_string(results).map_err(json_err)?;
                    let owner: Option<(ProjectId, String, String)> = tx
                        .query_row_cached(
                            "UPDATE batches SET state = 'final', attempts = ?2, last_http_status = ?3, last_error = ?4,
                                    response_excerpt = ?5, resolved_at = ?6, succeeded = ?7, failed = ?8, results = ?9,
                                    lease_until = NULL, next_attempt_at = NULL
                             WHERE order_no = ?1 AND state NOT IN ('final', 'accepted')
                             RETURNING project_id, campaign_id, touchpoint_id",
                            params![
                                record.order_no.as_str(),
                                record.attempt,
                                record.http_status,
                                record.error,
                                record.response_excerpt,
                                record.at,
                                ok,
                                failed,
                                results_json
                            ],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )
                        .optional()
                        .map_err(backend)?;
                    // Already settled (a duplicate record): count and publish nothing twice.
                    if let Some((project, campaign, touchpoint)) = owner {
                        bump_stats(tx, project, &campaign, &touchpoint, &Tally::settled(&record.order_no, results), record.at)?;
                        enqueue_results(tx, &record.order_no, results, record.at)?;
                    }
                    Ok(())
                }
                AttemptOutcome::Accepted { results, pending, receipt_url, deadline, next_poll_at } => {
                    let (ok, failed) = counts(results);
                    let owner: Option<(ProjectId, String, String)> = tx
                        .query_row_cached(
                            "UPDATE batches SET state = 'accepted', attempts = ?2, last_http_status = ?3, last_error = ?4,
                                    response_excerpt = ?5, succeeded = ?6, failed = ?7, results = ?8, pending = ?9,
                                    receipt_url = ?10, accepted_at = ?11, deadline = ?12, next_poll_at = ?13, polls = 0,
                                    lease_until = NULL, next_attempt_at = NULL, poll_lease_until = NULL
                             WHERE order_no = ?1 AND state NOT IN ('final', 'accepted')
                             RETURNING project_id, campaign_id, touchpoint_id",
                            params![
                                record.order_no.as_str(),
                                record.attempt,
                                record.http_status,
                                record.error,
                                record.response_excerpt,
                                ok,
                                failed,
                                serde_json::to_string(results).map_err(json_err)?,
                                serde_json::to_string(pending).map_err(json_err)?,
                                receipt_url,
                                record.at,
                                deadline,
                                next_poll_at
                            ],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )
                        .optional()
                        .map_err(backend)?;
                    if let Some((project, campaign, touchpoint)) = owner {
                        bump_stats(tx, project, &campaign, &touchpoint, &Tally::settled(&record.order_no, results), record.at)?;
                        enqueue_results(tx, &record.order_no, results, record.at)?;
                    }
                    Ok(())
                }
            }
        })
        .await?;
        if settles {
            self.notify_results();
        }
        // Counted and its events written in the same transaction: nothing for the checkpoint.
        Ok(None)
    }
}

#[async_trait]
impl ReceiptLedger for SqliteStore {
    async fn due_polls(
        &self,
        touchpoint: Option<(ProjectId, &TouchpointId)>,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<PendingBatch>, StoreError> {
        let touchpoint = touchpoint.map(|(p, t)| (p, t.to_owned()));
        self.tx(move |tx| {
            const COLUMNS: &str =
                "order_no, project_id, touchpoint_id, receipt_url, pending, accepted_at, deadline, next_poll_at, polls";
            let limit = limit as i64;
            let map = |r: &rusqlite::Row<'_>| {
                Ok((
                    PendingBatch {
                        order_no: r.get::<_, String>(0)?.into(),
                        project_id: r.get(1)?,
                        touchpoint_id: r.get::<_, String>(2)?.into(),
                        receipt_url: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                        pending: Vec::new(),
                        accepted_at: r.get::<_, Option<i64>>(5)?.unwrap_or_default(),
                        deadline: r.get::<_, Option<i64>>(6)?.unwrap_or_default(),
                        next_poll_at: r.get::<_, Option<i64>>(7)?.unwrap_or_default(),
                        polls: r.get(8)?,
                    },
                    r.get::<_, Option<String>>(4)?,
                ))
            };
            let rows = match &touchpoint {
                Some((project, id)) => tx
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM batches INDEXED BY batches_due_by_touchpoint
                         WHERE state = 'accepted' AND touchpoint_id = ?1 AND next_poll_at <= ?2 AND project_id = ?3
                         ORDER BY next_poll_at LIMIT ?4"
                    ))
                    .map_err(backend)?
                    .query_map(params![id.as_str(), now, project, limit], map)
                    .map_err(backend)?
                    .collect::<rusqlite::Result<Vec<_>>>(),
                None => tx
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM batches INDEXED BY batches_due
                         WHERE state = 'accepted' AND next_poll_at <= ?1 ORDER BY next_poll_at LIMIT ?2"
                    ))
                    .map_err(backend)?
                    .query_map(params![now, limit], map)
                    .map_err(backend)?
                    .collect::<rusqlite::Result<Vec<_>>>(),
            }
            .map_err(backend)?;
            rows.into_iter()
                .map(|(mut b, pending)| {
                    b.pending = parse_json(pending)?;
                    Ok(b)
                })
                .collect()
        })
        .await
    }

    async fn lease_poll(
        &self,
        project: ProjectId,
        order_no: &OrderNo,
        now: Millis,
        until: Millis,
    ) -> Result<Option<PendingBatch>, StoreError> {
        let order_no = order_no.to_owned();
        self.tx(move |tx| {
            let leased: Option<(String, Option<String>, Option<String>, Option<i64>, Option<i64>, Option<i64>, u32)> = tx
                .query_row_cached(
                    "UPDATE batches SET poll_lease_until = ?3
                     WHERE order_no = ?1 AND state = 'accepted' AND next_poll_at <= ?2
                       AND (poll_lease_until IS NULL OR poll_lease_until <= ?2)
                     RETURNING touchpoint_id, receipt_url, pending, accepted_at, deadline, next_poll_at, polls",
                    params![order_no.as_str(), now, until],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
                )
                .optional()
                .map_err(backend)?;
            leased
                .map(|(touchpoint, url, pending, accepted_at, deadline, next_poll_at, polls)| {
                    Ok(PendingBatch {
                        order_no: order_no.clone(),
                        project_id: project,
                        touchpoint_id: touchpoint.into(),
                        receipt_url: url.unwrap_or_default(),
                        pending: parse_json(pending)?,
                        accepted_at: accepted_at.unwrap_or_default(),
                        deadline: deadline.unwrap_or_default(),
                        next_poll_at: next_poll_at.unwrap_or_default(),
                        polls,
                    })
                })
                .transpose()
        })
        .await
    }

    async fn record_poll(&self, record: &PollRecord) -> Result<(), StoreError> {
        let record = record.clone();
        let settled_any = !record.settled.is_empty();
        self.tx(move |tx| {
            let row: Option<(ProjectId, String, String, Option<String>, Option<String>)> = tx
                .query_row_cached(
                    "SELECT project_id, campaign_id, touchpoint_id, pending, results FROM batches
                     WHERE order_no = ?1 AND state = 'accepted'",
                    params![record.order_no.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(backend)?;
            let Some((project, campaign, touchpoint, pending, results)) = row else {
                return Ok(());
            };
            let mut pending: Vec<i64> = parse_json(pending)?;
            let mut results: Vec<UserResult> = parse_json(results)?;
            // Only users still pending settle, each once.
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
            let done = pending.is_empty();
            tx.execute_cached(
                "UPDATE batches SET state = ?2, pending = ?3, results = ?4, succeeded = ?5, failed = ?6,
                        polls = polls + ?7, next_poll_at = ?8, poll_lease_until = NULL,
                        last_http_status = coalesce(?9, last_http_status), last_error = ?10,
                        resolved_at = CASE WHEN ?11 THEN ?12 ELSE resolved_at END
                 WHERE order_no = ?1",
                params![
                    record.order_no.as_str(),
                    if done { "final" } else { "accepted" },
                    serde_json::to_string(&pending).map_err(json_err)?,
                    serde_json::to_string(&results).map_err(json_err)?,
                    ok,
                    failed,
                    i64::from(record.http_status.is_some() || record.error.is_some()),
                    if done { None } else { Some(record.next_poll_at) },
                    record.http_status,
                    record.error,
                    done,
                    record.at
                ],
            )
            .map_err(backend)?;
            bump_stats(tx, project, &campaign, &touchpoint, &Tally::settled(&record.order_no, &settled), record.at)?;
            enqueue_results(tx, &record.order_no, &settled, record.at)
        })
        .await?;
        if settled_any {
            self.notify_results();
        }
        Ok(())
    }

    async fn pending_receipts(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<u64, StoreError> {
        let touchpoint_id = touchpoint_id.to_owned();
        self.tx(move |tx| {
            tx.query_row_cached(
                "SELECT coalesce(sum(users - succeeded - failed), 0) FROM batches INDEXED BY batches_due_by_touchpoint
                 WHERE state = 'accepted' AND touchpoint_id = ?1 AND project_id = ?2",
                params![touchpoint_id.as_str(), project],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(backend)
        })
        .await
    }
}

#[async_trait]
impl DeliveryReports for SqliteStore {
    async fn dispatch(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Option<DispatchView>, StoreError> {
        let dispatch_id = dispatch_id.to_owned();
        self.tx(move |tx| {
            let row: Option<(String, u32, u32, Option<String>, Millis)> = tx
                .query_row_cached(
                    "SELECT meta, users, batch_size, rejected, received_at FROM dispatches
                     WHERE project_id = ?1 AND dispatch_id = ?2",
                    params![project, dispatch_id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(backend)?;
            let Some((meta, users, batch_size, rejected, received_at)) = row else {
                return Ok(None);
            };
            // One aggregate over the dispatch's batches (indexed by dispatch).
            let (succeeded, failed, batches_finished): (u32, u32, u32) = tx
                .query_row_cached(
                    "SELECT coalesce(sum(succeeded), 0), coalesce(sum(failed), 0),
                            coalesce(sum(state = 'final'), 0)
                     FROM batches WHERE project_id = ?1 AND dispatch_id = ?2",
                    params![project, dispatch_id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(backend)?;
            let batches = if rejected.is_some() || batch_size == 0 {
                0
            } else {
                users.div_ceil(batch_size)
            };
            Ok(Some(DispatchView {
                meta: serde_json::from_str(&meta).map_err(json_err)?,
                users,
                batches,
                batch_size,
                rejected,
                received_at,
                succeeded,
                failed,
                batches_finished,
            }))
        })
        .await
    }

    async fn batch_page(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        from: u32,
        limit: u32,
    ) -> Result<Vec<BatchView>, StoreError> {
        let dispatch_id = dispatch_id.to_owned();
        self.tx(move |tx| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {BATCH_COLUMNS} FROM batches WHERE project_id = ?1 AND dispatch_id = ?2
                       AND (batch_index >= ?3 OR (?3 = 0 AND batch_index < 0))
                     ORDER BY batch_index LIMIT ?4"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![project, dispatch_id.as_str(), from, limit],
                    row_to_batch,
                )
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?;
            // The listing shows counts, not every user's result.
            Ok(rows.into_iter().map(|(view, _)| view).collect())
        })
        .await
    }

    async fn batch(
        &self,
        project: ProjectId,
        order_no: &OrderNo,
    ) -> Result<Option<BatchView>, StoreError> {
        let order_no = order_no.to_owned();
        self.tx(move |tx| {
            tx.query_row_cached(
                &format!(
                    "SELECT {BATCH_COLUMNS} FROM batches WHERE order_no = ?1 AND project_id = ?2"
                ),
                params![order_no.as_str(), project],
                row_to_batch,
            )
            .optional()
            .map_err(backend)?
            .map(with_results)
            .transpose()
        })
        .await
    }

    async fn stats(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key: &str,
    ) -> Result<Counters, StoreError> {
        let key = key.to_owned();
        let scope = scope.as_str();
        self.tx(move |tx| {
            let row: Option<(u64, u64, u64)> = tx
                .query_row_cached(
                    "SELECT sent, succeeded, failed FROM stats WHERE project_id = ?1 AND scope = ?2 AND key = ?3",
                    params![project, scope, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(backend)?;
            let (sent, succeeded, failed) = row.unwrap_or_default();
            Ok(Counters { sent, succeeded, failed, pending: sent.saturating_sub(succeeded + failed) })
        })
        .await
    }

    async fn stats_series(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key: &str,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<HourStats>, StoreError> {
        let key = key.to_owned();
        self.tx(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT hour, sent, succeeded, failed, last_order FROM stats_hourly
                     WHERE project_id = ?1 AND scope = ?2 AND key = ?3 AND hour >= ?4 AND hour < ?5
                     ORDER BY hour",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![project, scope.as_str(), key, from, to], |r| {
                    Ok(HourStats {
                        hour: r.get(0)?,
                        sent: r.get(1)?,
                        succeeded: r.get(2)?,
                        failed: r.get(3)?,
                        last_order_no: r.get::<_, Option<String>>(4)?.map(OrderNo::from),
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
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
        let key = key.to_owned();
        self.tx(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT reason, sum(count) AS n, max(sample_order) FROM stats_reasons
                     WHERE project_id = ?1 AND scope = ?2 AND key = ?3 AND hour >= ?4 AND hour < ?5
                     GROUP BY reason ORDER BY n DESC, reason LIMIT ?6",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![project, scope.as_str(), key, from, to, limit as i64],
                    |r| {
                        Ok(ReasonCount {
                            reason: r.get(0)?,
                            count: r.get(1)?,
                            sample_order_no: r.get::<_, Option<String>>(2)?.map(OrderNo::from),
                        })
                    },
                )
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }
}

/// A message taken from the local queue.
#[derive(Debug)]
pub struct QueuedDispatch {
    pub id: i64,
    pub body: String,
    pub receives: u32,
}

impl SqliteStore {
    /// Stores a dispatch and queues it, in one transaction. False when the project already
    /// submitted this dispatch id (nothing is queued).
    pub async fn submit_dispatch(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        body: String,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let dispatch_id = dispatch_id.to_owned();
        let new = self
            .tx(move |tx| {
                let n = tx
                    .execute_cached(
                        "INSERT OR IGNORE INTO dispatch_intake (project_id, dispatch_id, body, received_at) VALUES (?1, ?2, ?3, ?4)",
                        params![project, dispatch_id.as_str(), body, now],
                    )
                    .map_err(backend)?;
                if n == 1 {
                    tx.execute_cached(
                        "INSERT INTO queue (project_id, dispatch_id, visible_at, receives) VALUES (?1, ?2, ?3, 0)",
                        params![project, dispatch_id.as_str(), now],
                    )
                    .map_err(backend)?;
                }
                Ok(n == 1)
            })
            .await?;
        if new {
            self.notify_queue();
        }
        Ok(new)
    }

    /// Takes the next visible message and hides it until `now + visibility`.
    pub async fn receive(
        &self,
        now: Millis,
        visibility_ms: i64,
    ) -> Result<Option<QueuedDispatch>, StoreError> {
        Ok(self
            .receive_many(now, visibility_ms, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Up to `max` visible messages, earliest first, each hidden for `visibility_ms` and its
    /// receive counted: one write for many (a worker that handles many one-user dispatches
    /// does not take them one round trip at a time).
    pub async fn receive_many(
        &self,
        now: Millis,
        visibility_ms: i64,
        max: usize,
    ) -> Result<Vec<QueuedDispatch>, StoreError> {
        let max = max.max(1) as i64;
        self.tx(move |tx| {
            let rows: Vec<(i64, String, u32)> = tx
                .prepare_cached(
                    "SELECT q.id, i.body, q.receives FROM queue q
                       JOIN dispatch_intake i ON i.project_id = q.project_id AND i.dispatch_id = q.dispatch_id
                     WHERE q.dead = 0 AND q.visible_at <= ?1 ORDER BY q.visible_at, q.id LIMIT ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![now, max], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect()
                })
                .map_err(backend)?;
            let mut messages = Vec::with_capacity(rows.len());
            for (id, body, receives) in rows {
                tx.execute_cached(
                    "UPDATE queue SET visible_at = ?2, receives = receives + 1 WHERE id = ?1",
                    params![id, now + visibility_ms],
                )
                .map_err(backend)?;
                messages.push(QueuedDispatch { id, body, receives: receives + 1 });
            }
            Ok(messages)
        })
        .await
    }

    /// The earliest time a queued message becomes visible, if any is queued.
    pub async fn next_visible(&self) -> Result<Option<Millis>, StoreError> {
        self.tx(|tx| {
            tx.query_row_cached(
                "SELECT min(visible_at) FROM queue WHERE dead = 0",
                [],
                |r| r.get(0),
            )
            .map_err(backend)
        })
        .await
    }

    pub async fn ack(&self, id: i64) -> Result<(), StoreError> {
        self.tx(move |tx| {
            tx.execute_cached("DELETE FROM queue WHERE id = ?1", params![id])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    pub async fn redeliver_at(&self, id: i64, at: Millis) -> Result<(), StoreError> {
        self.tx(move |tx| {
            tx.execute_cached(
                "UPDATE queue SET visible_at = ?2 WHERE id = ?1",
                params![id, at],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    /// Hands a message on after a delivery that made progress: visible again at `at`, its
    /// receive count started again (like a fresh message on SQS), so the count only ever
    /// holds deliveries in a row that made no progress.
    pub async fn continue_at(&self, id: i64, at: Millis) -> Result<(), StoreError> {
        self.tx(move |tx| {
            tx.execute_cached(
                "UPDATE queue SET visible_at = ?2, receives = 0 WHERE id = ?1",
                params![id, at],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await?;
        self.notify_queue();
        Ok(())
    }

    pub async fn dead_letter(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        let reason = reason.to_owned();
        self.tx(move |tx| {
            tx.execute_cached(
                "UPDATE queue SET dead = 1, dead_reason = ?2 WHERE id = ?1",
                params![id, reason],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    /// After a restart nothing of this database is in flight any more (one process owns it):
    /// hidden messages become visible and batch and receipt-poll leases end, so in-flight
    /// batches are sent again at once with their `orderNo` and polls cut short run next round.
    pub async fn recover_after_restart(&self, now: Millis) -> Result<(u64, u64), StoreError> {
        self.tx(move |tx| {
            let messages = tx
                .execute_cached("UPDATE queue SET visible_at = ?1 WHERE dead = 0 AND visible_at > ?1", params![now])
                .map_err(backend)?;
            let batches = tx
                .execute_cached(
                    "UPDATE batches SET lease_until = ?1 WHERE state = 'in_flight' AND lease_until > ?1",
                    params![now],
                )
                .map_err(backend)?;
            tx.execute_cached(
                "UPDATE batches SET poll_lease_until = NULL WHERE poll_lease_until > ?1",
                params![now],
            )
            .map_err(backend)?;
            Ok((messages as u64, batches as u64))
        })
        .await
    }
}

/// Appends every final outcome to `results.jsonl` exactly once, packed per settlement of a
/// batch (all of a sync batch at once; an async batch's users as their receipts arrive).
///
/// The file and the database cannot change in one atomic step, so each batch records the file
/// length after its events were written and synced. On start the file is cut back to the last
/// recorded length: events written by a process that died before recording them are removed,
/// then written again.
pub struct ResultsFile {
    store: SqliteStore,
    path: PathBuf,
}

/// Batches published per round at most.
pub const PUBLISH_ROUND: usize = 256;

impl ResultsFile {
    pub fn new(store: SqliteStore, path: PathBuf) -> ResultsFile {
        ResultsFile { store, path }
    }

    /// Publishes what is waiting; returns the number of events written.
    pub async fn publish_pending(&self) -> Result<usize, StoreError> {
        let path = self.path.clone();
        self.store
            .tx(move |tx| {
                // Older databases recorded publication on the batch itself.
                let committed: i64 = tx
                    .query_row_cached(
                        "SELECT max(coalesce((SELECT max(published_offset) FROM outbox WHERE published_offset IS NOT NULL), 0),
                                    coalesce((SELECT max(published_offset) FROM batches WHERE published_offset IS NOT NULL), 0))",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT o.id, o.order_no, b.batch_index, b.sent_at, o.resolved_at, o.results, d.meta
                         FROM outbox o
                         JOIN batches b ON b.order_no = o.order_no
                         JOIN dispatches d ON d.project_id = b.project_id AND d.dispatch_id = b.dispatch_id
                         WHERE o.published_offset IS NULL
                         ORDER BY o.id LIMIT ?1",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![PUBLISH_ROUND as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, String>(6)?,
                        ))
                    })
                    .map_err(backend)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(backend)?;
                if rows.is_empty() {
                    return Ok(0);
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(StoreError::backend)?;
                // Cut anything written after the last recorded publication.
                file.set_len(committed as u64).map_err(StoreError::backend)?;
                file.seek(std::io::SeekFrom::Start(committed as u64)).map_err(StoreError::backend)?;
                let mut events = 0;
                let mut offset = committed;
                let mut marks = Vec::with_capacity(rows.len());
                let mut out = Vec::new();
                for (outbox_id, order, index, sent_at, resolved_at, results, meta) in rows {
                    let meta: DispatchMeta = serde_json::from_str(&meta).map_err(json_err)?;
                    let results: Vec<UserResult> =
                        serde_json::from_str(results.as_deref().unwrap_or("[]")).map_err(json_err)?;
                    let shown_order = if index == REJECTED_INDEX { "" } else { order.as_str() };
                    let packed: Vec<Value> = results
                        .iter()
                        .map(|r| {
                            json!({
                                "event": "$ma_channel_touch",
                                "eventId": format!("{order}-{}", r.gid),
                                "projectId": meta.project_id,
                                "gid": r.gid,
                                "campaignId": meta.campaign_id,
                                "strategyId": meta.strategy_id,
                                "spaceId": meta.space_id,
                                "touchpointId": meta.touchpoint_id,
                                "touchpointKind": meta.touchpoint_kind,
                                "orderNo": shown_order,
                                "dispatchId": meta.dispatch_id,
                                "status": r.status.code(),
                                "errorMsg": r.status.reason(),
                                "sentAt": sent_at.or(resolved_at),
                                "resolvedAt": resolved_at,
                            })
                        })
                        .collect();
                    events += packed.len();
                    serde_json::to_writer(&mut out, &json!({ "events": packed })).map_err(json_err)?;
                    out.push(b'\n');
                    offset = committed + out.len() as i64;
                    marks.push((outbox_id, offset));
                }
                file.write_all(&out).and_then(|()| file.sync_data()).map_err(StoreError::backend)?;
                let mut mark = tx
                    .prepare_cached("UPDATE outbox SET published_offset = ?2 WHERE id = ?1")
                    .map_err(backend)?;
                for (id, end) in marks {
                    mark.execute(params![id, end]).map_err(backend)?;
                }
                let _ = offset;
                Ok(events)
            })
            .await
    }
}

#[async_trait]
impl DispatchIntake for SqliteStore {
    async fn submit(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        body: String,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.submit_dispatch(project, dispatch_id, body, now).await
    }

    async fn submitted(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Option<Submission>, StoreError> {
        let dispatch_id = dispatch_id.to_owned();
        self.tx(move |tx| {
            tx.query_row_cached(
                "SELECT i.received_at, q.dead_reason FROM dispatch_intake i
                 LEFT JOIN queue q ON q.project_id = i.project_id AND q.dispatch_id = i.dispatch_id AND q.dead = 1
                 WHERE i.project_id = ?1 AND i.dispatch_id = ?2",
                params![project, dispatch_id.as_str()],
                |r| {
                    Ok(Submission {
                        received_at: r.get(0)?,
                        dead_letter_reason: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }
}

#[async_trait]
impl ReceiptSchedule for SqliteStore {
    async fn ensure(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<(), StoreError> {
        let id = touchpoint_id.to_owned();
        self.tx(move |tx| {
            tx.execute_cached(
                "INSERT OR IGNORE INTO receipt_schedules (project_id, touchpoint_id) VALUES (?1, ?2)",
                params![project, id.as_str()],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn remove(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<(), StoreError> {
        let id = touchpoint_id.to_owned();
        self.tx(move |tx| {
            tx.execute_cached(
                "DELETE FROM receipt_schedules WHERE project_id = ?1 AND touchpoint_id = ?2",
                params![project, id.as_str()],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }
}

impl SqliteStore {
    /// Touchpoints whose receipts the local ticker polls.
    pub async fn receipt_schedules(&self) -> Result<Vec<(ProjectId, TouchpointId)>, StoreError> {
        self.tx(|tx| {
            tx.prepare_cached("SELECT project_id, touchpoint_id FROM receipt_schedules ORDER BY project_id, touchpoint_id")
                .map_err(backend)?
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?.into())))
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)
        })
        .await
    }
}

impl SqliteStore {
    /// Drops a schedule behind the use cases' back, so tests can watch it being ensured.
    #[doc(hidden)]
    pub async fn remove_schedule_for_test(&self, project: ProjectId, touchpoint_id: &TouchpointId) {
        let _ = ReceiptSchedule::remove(self, project, touchpoint_id).await;
    }
}
