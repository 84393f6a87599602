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
//! Batches are their own partitions (the `orderNo` is random-looking), so no key is hot; a
//! dispatch's batches are found again by recomputing their `orderNo`s. Accepted async batches
//! carry `due_tp` and `next_poll_at`, the keys of the sparse `due` index the poller queries.
//! Statistics are sharded counters moved once per settled batch, in the same transaction as
//! the batch's record, together with the hour counters and the settlement's most frequent
//! failure reasons (one day per partition, 13-digit hour starts in milliseconds, so a day's
//! hours are one key range). Newly final results wait in the batch's `outbox` until they are on the
//! results queue (FIFO, de-duplicated by `orderNo` and settlement), then leave it.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use serde_json::{Value, json};
use touchpoint::ProjectId;
use touchpoint::clock::Millis;
use touchpoint::delivery::*;
use touchpoint::dispatch::order_no;
use touchpoint::ids::{DispatchId, OrderNo, TouchpointId};
use touchpoint::ledger::{BatchRecord, ClaimDecision, decide_claim, record_condition};
use touchpoint::ports::StoreError;
use touchpoint::protocol::UserStatus;

use crate::item::*;

const STAT_SHARDS: u64 = 16;
const REJECTED_INDEX: i64 = -1;
/// Events per results message at most (keeps each message well under the queue's limit).
const EVENTS_PER_MESSAGE: usize = 500;

#[derive(Clone, Debug)]
pub struct DynamoDelivery {
    ddb: Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    dispatch_queue_url: Option<String>,
    results_queue_url: Option<String>,
    retention_secs: i64,
}

fn dispatch_pk(project: ProjectId, id: &str) -> String {
    format!("P#{project}#D#{id}")
}

fn batch_pk(project: ProjectId, order: &str) -> String {
    format!("P#{project}#O#{order}")
}

fn stats_pk(project: ProjectId, scope: &str, key: &str) -> String {
    format!("P#{project}#ST#{scope}#{key}")
}

fn trend_pk(project: ProjectId, scope: &str, key: &str, day: i64) -> String {
    format!("P#{project}#TR#{scope}#{key}#{day}")
}

const DAY_MS: Millis = 86_400_000;

fn due_key(project: ProjectId, touchpoint: &str) -> String {
    format!("P#{project}#TP#{touchpoint}")
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

fn is_cancelled_by_condition<R>(
    e: &aws_sdk_dynamodb::error::SdkError<TransactWriteItemsError, R>,
    index: usize,
) -> bool {
    matches!(
        e.as_service_error(),
        Some(TransactWriteItemsError::TransactionCanceledException(t))
            if t.cancellation_reasons().get(index).and_then(|r| r.code()) == Some("ConditionalCheckFailed")
    )
}

/// Whose counters a settlement moves.
struct Owner<'a> {
    project: ProjectId,
    campaign: &'a str,
    touchpoint: &'a str,
    /// Picks the shard.
    order: &'a str,
}

/// How much the counters move.
#[derive(Clone, Copy)]
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
        }
    }

    fn expires_at(&self, now: Millis) -> AttributeValue {
        n(now / 1000 + self.retention_secs)
    }

    fn stats_update(
        &self,
        scope: &str,
        key: &str,
        owner: &Owner<'_>,
        delta: Delta,
        now: Millis,
    ) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(crate::item::key(
                        stats_pk(owner.project, scope, key),
                        shard_of(owner.order).to_string(),
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

    /// The counter updates of one settlement for the campaign and the touchpoint, on the
    /// shard its `orderNo` picks: totals, the hour's counters (naming `drill`, the batch, for
    /// drill-down) and the failure-reason tallies.
    fn stats_updates(
        &self,
        owner: &Owner<'_>,
        delta: Delta,
        drill: Option<&str>,
        reasons: &[(String, u64)],
        now: Millis,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let hour = touchpoint::delivery::hour_of(now);
        let day = hour.div_euclid(DAY_MS);
        let shard = shard_of(owner.order);
        let mut items = Vec::with_capacity(4 + 2 * reasons.len());
        for (scope, key_) in [
            ("campaign", owner.campaign),
            ("touchpoint", owner.touchpoint),
        ] {
            items.push(self.stats_update(scope, key_, owner, delta, now)?);
            let pk = trend_pk(owner.project, scope, key_, day);
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
            hourly = match drill {
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
            for (reason, count) in reasons {
                let mut tally = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(crate::item::key(
                        pk.clone(),
                        format!("R#{hour:013}#{shard:02}#{reason}"),
                    )))
                    .expression_attribute_values(":n", n(count))
                    .expression_attribute_values(":reason", s(reason))
                    .expression_attribute_values(":exp", self.expires_at(now));
                tally = match drill {
                    Some(order) => tally
                        .update_expression(
                            "ADD #count :n SET reason = :reason, expires_at = :exp, sample_order = :order",
                        )
                        .expression_attribute_values(":order", s(order)),
                    None => tally.update_expression(
                        "ADD #count :n SET reason = :reason, expires_at = :exp",
                    ),
                };
                items.push(
                    TransactWriteItem::builder()
                        .update(
                            tally
                                .expression_attribute_names("#count", "count")
                                .build()
                                .map_err(build_err)?,
                        )
                        .build(),
                );
            }
        }
        Ok(items)
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
            let pk = trend_pk(project, scope.as_str(), key_, day);
            // `K#{from}#` .. `K#{to}#` holds every shard (and reason) of the hours from `from`
            // up to, not including, `to`: `K#{to}#` sorts before all of hour `to`'s keys.
            let lower = format!("{kind}#{:013}#", from.max(day * DAY_MS));
            let upper = format!("{kind}#{:013}#", to.min((day + 1) * DAY_MS));
            items.extend(self.trend_items(pk, lower, upper).await?);
        }
        Ok(items)
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
        for settlement in settlements {
            let events: Vec<Value> = results
                .iter()
                .filter(|r| {
                    settlement
                        .gids
                        .as_ref()
                        .is_none_or(|gids| gids.contains(&r.gid))
                })
                .map(|r| {
                    json!({
                        "event": "$ma_channel_touch", "projectId": meta.project_id, "gid": r.gid,
                        "campaignId": meta.campaign_id, "strategyId": meta.strategy_id, "spaceId": meta.space_id,
                        "touchpointId": meta.touchpoint_id, "touchpointKind": meta.touchpoint_kind,
                        "orderNo": if batch.index == REJECTED_INDEX { "" } else { order },
                        "dispatchId": meta.dispatch_id, "status": r.status.code(), "errorMsg": r.status.reason(),
                        "sentAt": batch.sent_at.unwrap_or(settlement.at), "resolvedAt": settlement.at,
                    })
                })
                .collect();
            for (part, chunk) in events.chunks(EVENTS_PER_MESSAGE).enumerate() {
                self.sqs
                    .send_message()
                    .queue_url(queue)
                    .message_body(json!({ "events": chunk }).to_string())
                    .message_group_id(order)
                    .message_deduplication_id(format!("{}-{part}", settlement.id))
                    .send()
                    .await
                    .map_err(aws_err)?;
            }
        }
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

    async fn publish_order(&self, project: ProjectId, order: &str) -> Result<(), StoreError> {
        if let Some(item) = self.get_batch(project, order).await? {
            self.publish(&item).await?;
        }
        Ok(())
    }
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
        let mut item = key(dispatch_pk(meta.project_id, &meta.dispatch_id), "META");
        item.insert("meta".into(), json_s(meta)?);
        item.insert("users".into(), n(users));
        item.insert("batch_size".into(), n(batch_size));
        item.insert("received_at".into(), n(now));
        item.insert("stalls".into(), n(1));
        item.insert("expires_at".into(), self.expires_at(now));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_err)?;
        // The users count as sent on the shard the dispatch id picks; batches spread over all.
        let counters = self.stats_updates(
            &Owner {
                project: meta.project_id,
                campaign: &meta.campaign_id,
                touchpoint: &meta.touchpoint_id,
                order: &meta.dispatch_id,
            },
            Delta {
                sent: i64::from(users),
                ok: 0,
                failed: 0,
            },
            None,
            &[],
            now,
        )?;
        let result = self
            .ddb
            .transact_write_items()
            .set_transact_items(Some(
                std::iter::once(TransactWriteItem::builder().put(put).build())
                    .chain(counters)
                    .collect(),
            ))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Opened {
                new: true,
                batch_size,
                progress: Progress::default(),
                stalls: 0,
            }),
            Err(e) if is_cancelled_by_condition(&e, 0) => {
                // Opened before: one more delivery, and its batch size and progress as
                // recorded (the item as it was before this update).
                let item = self
                    .ddb
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key(
                        dispatch_pk(meta.project_id, &meta.dispatch_id),
                        "META",
                    )))
                    .update_expression("ADD stalls :one")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_values(":one", n(1))
                    .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
                    .send()
                    .await
                    .map_err(aws_err)?
                    .attributes
                    .ok_or_else(|| missing("META"))?;
                Ok(Opened {
                    new: false,
                    batch_size: get_n(&item, "batch_size").unwrap_or(batch_size),
                    progress: json_of(&item, "progress")?,
                    stalls: get_n(&item, "stalls").unwrap_or_default(),
                })
            }
            Err(e) => Err(aws_err(e)),
        }
    }

    async fn save_progress(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        progress: &Progress,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dispatch_pk(project, dispatch_id), "META")))
            .update_expression("SET progress = :p, stalls = :zero, expires_at = :exp")
            .expression_attribute_values(":zero", n(0))
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":p", json_s(progress)?)
            .expression_attribute_values(":exp", self.expires_at(now))
            .send()
            .await
            .map_err(aws_err)?;
        Ok(())
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
        let counters = self.stats_updates(
            &Owner {
                project: meta.project_id,
                campaign: &meta.campaign_id,
                touchpoint: &meta.touchpoint_id,
                order: &order,
            },
            Delta {
                sent: n_users,
                ok: 0,
                failed: n_users,
            },
            Some(&order),
            &tally_reasons(&results),
            now,
        )?;
        let head = [
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
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
        let result = self
            .ddb
            .transact_write_items()
            .set_transact_items(Some(head.into_iter().chain(counters).collect()))
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if is_cancelled_by_condition(&e, 0) => {}
            Err(e) => return Err(aws_err(e)),
        }
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
        let put = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => {
                return Ok(Claim::Send {
                    attempt: 1,
                    sent_at: now,
                    counted: 1,
                });
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) => {}
            Err(e) => return Err(aws_err(e)),
        }
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
                // Results of an earlier run that never reached the queue go out now.
                self.publish(&current).await?;
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

    async fn record_attempt(&self, record: &AttemptRecord) -> Result<(), StoreError> {
        let order = &record.order_no;
        let meta = &record.meta;
        let mut update = Update::builder()
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
        let (settled, stats): (&[UserResult], _) = match &record.outcome {
            AttemptOutcome::Retry { next_attempt_at } => {
                expr.set("next_attempt_at = :next");
                update = update
                    .expression_attribute_values(":state", s("retry_wait"))
                    .expression_attribute_values(":next", n(next_attempt_at));
                (&[], None)
            }
            AttemptOutcome::Final(results) => {
                let (ok, failed) = counts(results);
                for clause in [
                    "results = :results",
                    "succeeded = :ok",
                    "failed = :failed",
                    "resolved_at = :at",
                    "outbox = :outbox",
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
                    .expression_attribute_values(
                        ":outbox",
                        settlement_attr(format!("{order}-t"), record.at, None)?,
                    );
                (results.as_slice(), Some((ok, failed)))
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
                    "polls = :zero",
                    // Kept until its receipt deadline plus the retention, whatever the
                    // retention: TTL never removes a batch whose receipts are awaited.
                    "expires_at = :accepted_expiry",
                ] {
                    expr.set(clause);
                }
                update = update
                    .expression_attribute_values(":accepted_expiry", self.expires_at(*deadline));
                expr.remove("next_attempt_at");
                if !results.is_empty() {
                    expr.set("outbox = :outbox");
                    update = update.expression_attribute_values(
                        ":outbox",
                        settlement_attr(format!("{order}-t"), record.at, None)?,
                    );
                }
                update = update
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
                        s(due_key(meta.project_id, &meta.touchpoint_id)),
                    )
                    .expression_attribute_values(":zero", n(0));
                (results.as_slice(), Some((ok, failed)))
            }
        };
        let update = update
            .update_expression(expr.expression())
            .build()
            .map_err(build_err)?;
        let mut tx = self
            .ddb
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build());
        if let Some((ok, failed)) = stats.filter(|(ok, failed)| ok + failed > 0) {
            for t in self.stats_updates(
                &Owner {
                    project: meta.project_id,
                    campaign: &meta.campaign_id,
                    touchpoint: &meta.touchpoint_id,
                    order,
                },
                Delta {
                    sent: 0,
                    ok,
                    failed,
                },
                Some(order),
                &tally_reasons(settled),
                record.at,
            )? {
                tx = tx.transact_items(t);
            }
        }
        match tx.send().await {
            Ok(_) => {}
            // Already settled by someone else: nothing is counted twice.
            Err(e) if is_cancelled_by_condition(&e, 0) => return Ok(()),
            Err(e) => return Err(aws_err(e)),
        }
        // Published from what was just written; a crash before this leaves the settlement in
        // the outbox, published by the next claim of the batch.
        if !settled.is_empty() {
            let batch = Published {
                meta,
                order,
                index: record.batch_index as i64,
                sent_at: Some(record.sent_at),
            };
            let settlement = Settlement {
                id: format!("{order}-t"),
                at: record.at,
                gids: None,
            };
            self.publish_settlements(&batch, &[settlement], settled)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryReports for DynamoDelivery {
    async fn dispatch(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Option<DispatchView>, StoreError> {
        let Some(item) = self.get(dispatch_pk(project, dispatch_id), "META").await? else {
            return Ok(None);
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
        }))
    }

    async fn dispatch_batches(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
    ) -> Result<Vec<BatchView>, StoreError> {
        let Some(view) = self.dispatch(project, dispatch_id).await? else {
            return Ok(Vec::new());
        };
        let orders: Vec<OrderNo> = if view.rejected.is_some() {
            vec![order_no(project, dispatch_id, usize::MAX)]
        } else {
            (0..view.batches as usize)
                .map(|i| order_no(project, dispatch_id, i))
                .collect()
        };
        let mut out = Vec::new();
        for chunk in orders.chunks(100) {
            let mut keys = KeysAndAttributes::builder().consistent_read(true);
            for o in chunk {
                keys = keys.keys(key(batch_pk(project, o), "B"));
            }
            let mut request =
                HashMap::from([(self.table.clone(), keys.build().map_err(build_err)?)]);
            while !request.is_empty() {
                let got = self
                    .ddb
                    .batch_get_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(aws_err)?;
                for item in got
                    .responses
                    .as_ref()
                    .and_then(|r| r.get(&self.table))
                    .into_iter()
                    .flatten()
                {
                    let mut view = batch_view(item)?;
                    view.results.clear();
                    out.push(view);
                }
                request = got.unprocessed_keys.unwrap_or_default();
                request.retain(|_, k| !k.keys().is_empty());
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
        let page = self
            .ddb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(stats_pk(project, scope, key_)))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_err)?;
        let mut c = Counters::default();
        for item in page.items() {
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
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .ddb
                .query()
                .table_name(&self.table)
                .index_name("due")
                .key_condition_expression("due_tp = :tp AND next_poll_at <= :now")
                .expression_attribute_values(":tp", s(due_key(project, id)))
                .expression_attribute_values(":now", n(now))
                .set_exclusive_start_key(start.take())
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
                    receipt_url: get_s(item, "receipt_url").unwrap_or_default(),
                    pending: json_of(item, "pending")?,
                    accepted_at: get_n(item, "accepted_at").unwrap_or_default(),
                    deadline: get_n(item, "deadline").unwrap_or_default(),
                    next_poll_at: get_n(item, "next_poll_at").unwrap_or_default(),
                    polls: get_n(item, "polls").unwrap_or_default(),
                });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn lease_poll(
        &self,
        project: ProjectId,
        order: &OrderNo,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
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
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
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
        let settled: Vec<UserResult> = record
            .settled
            .iter()
            .filter(|r| pending.contains(&r.gid))
            .cloned()
            .collect();
        pending.retain(|g| !settled.iter().any(|r| r.gid == *g));
        results.extend(settled.iter().cloned());
        let (ok, failed) = counts(&results);
        let polls: u32 = get_n(&item, "polls").unwrap_or_default();
        let made_request = record.http_status.is_some() || record.error.is_some();
        let done = pending.is_empty();
        let mut expr = UpdateExpr::setting([
            "pending = :pending",
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
        let mut tx = self
            .ddb
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build());
        let (s_ok, s_failed) = counts(&settled);
        if s_ok + s_failed > 0 {
            let project: ProjectId = get_n(&item, "project").unwrap_or_default();
            let campaign = get_s(&item, "campaign_id").unwrap_or_default();
            let touchpoint = get_s(&item, "touchpoint_id").unwrap_or_default();
            for t in self.stats_updates(
                &Owner {
                    project,
                    campaign: &campaign,
                    touchpoint: &touchpoint,
                    order,
                },
                Delta {
                    sent: 0,
                    ok: s_ok,
                    failed: s_failed,
                },
                Some(order),
                &tally_reasons(&settled),
                record.at,
            )? {
                tx = tx.transact_items(t);
            }
        }
        match tx.send().await {
            Ok(_) => {}
            Err(e) if is_cancelled_by_condition(&e, 0) => return Ok(()),
            Err(e) => return Err(aws_err(e)),
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
        let accepted = query_all(
            self.ddb
                .query()
                .table_name(&self.table)
                .index_name("due")
                .key_condition_expression("due_tp = :tp")
                .expression_attribute_values(":tp", s(due_key(project, touchpoint_id))),
        )
        .await?;
        let mut total = 0u64;
        for item in &accepted {
            total += json_of::<Vec<i64>>(item, "pending")?.len() as u64;
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
        if let Err(e) = self
            .sqs
            .send_message()
            .queue_url(queue)
            .message_body(body)
            .send()
            .await
        {
            let _ = self
                .ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(dispatch_pk(project, dispatch_id), "INTAKE")))
                .send()
                .await;
            return Err(aws_err(e));
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
