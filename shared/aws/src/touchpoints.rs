//! [`TouchpointStore`] on DynamoDB. Layout (see `infra/dynamodb.md`):
//!
//! | item | pk | sk |
//! |---|---|---|
//! | touchpoint | `P#{project}` | `TP#{id}` |
//! | name claim (uniqueness) | `P#{project}` | `NAME#{name}` |
//! | space grant | `P#{project}#SPACE#{space}` | `TP#{id}` |
//! | campaign reference | `P#{project}` | `CR#{id}#{campaign}` |
//! | audit entry (delivery table, with its TTL) | `AUDIT#{project}` | entry id (time first) |
//! | notification settings | `P#{project}` | `NOTIFY` |
//!
//! Every change is a conditional write on the touchpoint's `version`; the touchpoint keeps a
//! `blocking` count of campaign references in a blocking state, so "disable unless a live
//! campaign uses it" is one condition (`blocking = 0`) checked by the same write. Each change's
//! audit entry is a put in the same transaction (in the delivery table, so it expires with the
//! delivery records).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, KeysAndAttributes, Put, PutRequest, TransactWriteItem, Update,
    WriteRequest,
};
use touchpoint::ProjectId;
use touchpoint::audit::{AuditAction, AuditEntry, AuditFilter};
use touchpoint::ids::TouchpointId;
use touchpoint::model::{CampaignRef, CampaignState, Token, TokenRotation, Touchpoint};
use touchpoint::notify::NotificationConfig;
use touchpoint::ports::{ListFilter, StoreError, TouchpointStore, UpdateGuard};

use crate::item::*;

#[derive(Clone, Debug)]
pub struct DynamoTouchpoints {
    client: Client,
    table: String,
    /// The delivery table, where audit entries are kept for the delivery records' retention.
    audit_table: String,
    retention_secs: i64,
}

/// The sort key of a project's notification settings (beside its touchpoints).
const NOTIFY_SK: &str = "NOTIFY";

fn audit_pk(project: ProjectId) -> String {
    format!("AUDIT#{project}")
}

fn project_pk(project: ProjectId) -> String {
    format!("P#{project}")
}

fn tp_sk(id: &str) -> String {
    format!("TP#{id}")
}

fn name_sk(name: &str) -> String {
    format!("NAME#{name}")
}

fn space_pk(project: ProjectId, space: &str) -> String {
    format!("P#{project}#SPACE#{space}")
}

fn ref_prefix(id: &str) -> String {
    format!("CR#{id}#")
}

fn to_item(tp: &Touchpoint, blocking: i64) -> Result<Item, StoreError> {
    let mut item = key(project_pk(tp.project_id), tp_sk(&tp.id));
    item.insert("id".into(), s(&tp.id));
    item.insert("project".into(), n(tp.project_id));
    item.insert("name".into(), s(&tp.spec.name));
    item.insert("name_lower".into(), s(tp.spec.name.to_lowercase()));
    item.insert("kind".into(), s(tp.spec.kind.as_str()));
    item.insert("enabled".into(), b(tp.enabled));
    item.insert("version".into(), n(tp.version));
    item.insert(
        "spec".into(),
        s(serde_json::to_string(&tp.spec).map_err(StoreError::backend)?),
    );
    item.insert(
        "spaces".into(),
        AttributeValue::L(tp.space_ids.iter().map(s).collect()),
    );
    item.insert("blocking".into(), n(blocking));
    item.insert("created_at".into(), n(tp.created_at));
    item.insert("updated_at".into(), n(tp.updated_at));
    if let Some(token) = &tp.token {
        item.insert("token".into(), s(token.expose()));
    }
    if let Some(p) = &tp.paused {
        item.insert("paused_since".into(), n(p.since));
        if let Some(reason) = &p.reason {
            item.insert("paused_reason".into(), s(reason));
        }
    }
    if let Some(r) = &tp.rotation {
        item.insert("overlap_until".into(), n(r.until));
        if let Some(previous) = &r.previous {
            item.insert("previous_token".into(), s(previous.expose()));
        }
    }
    Ok(item)
}

fn from_item(item: &Item) -> Result<Touchpoint, StoreError> {
    let spec = get_s(item, "spec").ok_or_else(|| missing("spec"))?;
    Ok(Touchpoint {
        id: get_s(item, "id").ok_or_else(|| missing("id"))?.into(),
        project_id: get_n(item, "project").ok_or_else(|| missing("project"))?,
        spec: serde_json::from_str(&spec).map_err(StoreError::backend)?,
        token: get_s(item, "token").map(Token::new),
        rotation: get_n(item, "overlap_until").map(|until| TokenRotation {
            previous: get_s(item, "previous_token").map(Token::new),
            until,
        }),
        paused: get_n(item, "paused_since").map(|since| touchpoint::model::ManualPause {
            since,
            reason: get_s(item, "paused_reason"),
        }),
        enabled: get_b(item, "enabled").unwrap_or(false),
        space_ids: item
            .get("spaces")
            .and_then(|v| v.as_l().ok())
            .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
            .unwrap_or_default(),
        version: get_n(item, "version").ok_or_else(|| missing("version"))?,
        created_at: get_n(item, "created_at").unwrap_or_default(),
        updated_at: get_n(item, "updated_at").unwrap_or_default(),
    })
}

fn ref_from_item(item: &Item) -> Result<CampaignRef, StoreError> {
    let state = get_s(item, "state").ok_or_else(|| missing("state"))?;
    Ok(CampaignRef {
        campaign_id: get_s(item, "campaign").ok_or_else(|| missing("campaign"))?,
        name: get_s(item, "name").unwrap_or_default(),
        state: CampaignState::parse(&state).ok_or_else(|| missing("a known state"))?,
        updated_at: get_n(item, "updated_at").unwrap_or_default(),
    })
}

fn cancelled(e: &SdkError<TransactWriteItemsError, impl std::fmt::Debug>) -> Option<Vec<String>> {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(t)) => Some(
            t.cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None").to_owned())
                .collect(),
        ),
        _ => None,
    }
}

fn audit_from_item(project: ProjectId, item: &Item) -> Result<AuditEntry, StoreError> {
    let id = get_s(item, "sk").ok_or_else(|| missing("sk"))?;
    let action = get_s(item, "action").ok_or_else(|| missing("action"))?;
    Ok(AuditEntry {
        project_id: project,
        at: get_n(item, "at").ok_or_else(|| missing("at"))?,
        seq: id
            .split_once('-')
            .and_then(|(_, seq)| u64::from_str_radix(seq, 16).ok())
            .unwrap_or_default(),
        actor: get_s(item, "actor").unwrap_or_default(),
        action: AuditAction::parse(&action).ok_or_else(|| missing("a known action"))?,
        touchpoint_id: get_s(item, "touchpoint").map(Into::into),
        target: get_s(item, "target"),
        changes: serde_json::from_str(&get_s(item, "changes").unwrap_or_else(|| "[]".into()))
            .map_err(StoreError::backend)?,
    })
}

impl DynamoTouchpoints {
    /// The store on the touchpoints table, with audit entries in the delivery table.
    pub fn new(client: Client, names: &crate::AwsNames) -> DynamoTouchpoints {
        DynamoTouchpoints {
            client,
            table: names.touchpoints_table.clone(),
            audit_table: names.delivery_table.clone(),
            retention_secs: names.retention.as_secs() as i64,
        }
    }

    /// The audit entry's put, for the transaction of the change it describes.
    fn audit(&self, e: &AuditEntry) -> Result<TransactWriteItem, StoreError> {
        let mut item = key(audit_pk(e.project_id), e.id());
        item.insert("at".into(), n(e.at));
        item.insert("actor".into(), s(&e.actor));
        item.insert("action".into(), s(e.action.as_str()));
        if let Some(tp) = &e.touchpoint_id {
            item.insert("touchpoint".into(), s(tp));
        }
        if let Some(t) = &e.target {
            item.insert("target".into(), s(t));
        }
        item.insert(
            "changes".into(),
            s(serde_json::to_string(&e.changes).map_err(StoreError::backend)?),
        );
        item.insert("expires_at".into(), n(e.at / 1000 + self.retention_secs));
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.audit_table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build_err)?,
            )
            .build())
    }

    fn put(&self, item: Item, condition: &str) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression(condition)
                    .build()
                    .map_err(build_err)?,
            )
            .build())
    }

    fn delete(&self, pk: String, sk: String) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .delete(
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(pk, sk)))
                    .build()
                    .map_err(build_err)?,
            )
            .build())
    }

    async fn raw(&self, project: ProjectId, id: &TouchpointId) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(project_pk(project), tp_sk(id))))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_err)?;
        Ok(out.item)
    }

    /// Why a conditional write on a touchpoint failed, read back from the item.
    async fn explain(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        expected: u64,
        guard: UpdateGuard,
    ) -> StoreError {
        let item = match self.raw(project, id).await {
            Ok(Some(item)) => item,
            Ok(None) => return StoreError::NotFound,
            Err(e) => return e,
        };
        let version: u64 = get_n(&item, "version").unwrap_or_default();
        if version != expected {
            return StoreError::VersionConflict { current: version };
        }
        let enabled = get_b(&item, "enabled").unwrap_or(false);
        match guard {
            UpdateGuard::MustBeDisabled if enabled => StoreError::Enabled,
            UpdateGuard::NoBlockingCampaigns => match self.campaigns(project, id).await {
                Ok(refs) => StoreError::InUse(
                    refs.into_iter()
                        .filter(|c| c.state.blocks_disable())
                        .collect(),
                ),
                Err(e) => e,
            },
            _ => StoreError::Backend("the conditional write was refused".into()),
        }
    }

    /// Writes grant items in batches of 25 (DynamoDB's limit), retrying unprocessed ones.
    async fn batch_write(&self, mut requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        while !requests.is_empty() {
            let chunk: Vec<WriteRequest> = requests.drain(..requests.len().min(25)).collect();
            let mut pending = HashMap::from([(self.table.clone(), chunk)]);
            for attempt in 0..8 {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(aws_err)?;
                pending = out.unprocessed_items.unwrap_or_default();
                pending.retain(|_, v| !v.is_empty());
                if pending.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            if !pending.is_empty() {
                return Err(StoreError::Backend(
                    "DynamoDB kept items unprocessed".into(),
                ));
            }
        }
        Ok(())
    }

    fn grant(
        &self,
        project: ProjectId,
        space: &str,
        id: &TouchpointId,
    ) -> Result<WriteRequest, StoreError> {
        let mut item = key(space_pk(project, space), tp_sk(id));
        item.insert("id".into(), s(id));
        Ok(WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map_err(build_err)?,
            )
            .build())
    }

    fn revoke(
        &self,
        project: ProjectId,
        space: &str,
        id: &TouchpointId,
    ) -> Result<WriteRequest, StoreError> {
        Ok(WriteRequest::builder()
            .delete_request(
                aws_sdk_dynamodb::types::DeleteRequest::builder()
                    .set_key(Some(key(space_pk(project, space), tp_sk(id))))
                    .build()
                    .map_err(build_err)?,
            )
            .build())
    }

    async fn get_ref(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign: &str,
    ) -> Result<Option<CampaignRef>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(
                project_pk(project),
                format!("{}{campaign}", ref_prefix(id)),
            )))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_err)?;
        out.item.as_ref().map(ref_from_item).transpose()
    }

    /// Writes (or removes, `next == None`) a campaign reference and moves the touchpoint's
    /// `blocking` count in one transaction, conditional on the reference being as read.
    async fn change_ref(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign: &str,
        next: Option<&CampaignRef>,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        for _ in 0..5 {
            let old = self.get_ref(project, id, campaign).await?;
            if old.is_none() && next.is_none() {
                return Ok(false);
            }
            let was = old.as_ref().is_some_and(|c| c.state.blocks_disable());
            let will = next.is_some_and(|c| c.state.blocks_disable());
            let ref_key = key(project_pk(project), format!("{}{campaign}", ref_prefix(id)));
            let guard_old = match &old {
                None => "attribute_not_exists(pk)".to_owned(),
                Some(_) => "#state = :old".to_owned(),
            };
            let ref_write = match next {
                Some(c) => {
                    let mut item = ref_key.clone();
                    item.insert("campaign".into(), s(&c.campaign_id));
                    item.insert("name".into(), s(&c.name));
                    item.insert("state".into(), s(c.state.as_str()));
                    item.insert("updated_at".into(), n(c.updated_at));
                    let mut put = Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression(&guard_old);
                    if let Some(o) = &old {
                        put = put
                            .expression_attribute_names("#state", "state")
                            .expression_attribute_values(":old", s(o.state.as_str()));
                    }
                    TransactWriteItem::builder()
                        .put(put.build().map_err(build_err)?)
                        .build()
                }
                None => {
                    let mut del = Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(ref_key))
                        .condition_expression(&guard_old);
                    if let Some(o) = &old {
                        del = del
                            .expression_attribute_names("#state", "state")
                            .expression_attribute_values(":old", s(o.state.as_str()));
                    }
                    TransactWriteItem::builder()
                        .delete(del.build().map_err(build_err)?)
                        .build()
                }
            };
            let delta = i64::from(will) - i64::from(was);
            let condition = if will && !was {
                "attribute_exists(pk) AND enabled = :true"
            } else {
                "attribute_exists(pk)"
            };
            let mut update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(project_pk(project), tp_sk(id))))
                .update_expression("ADD blocking :delta")
                .condition_expression(condition)
                .expression_attribute_values(":delta", n(delta));
            if will && !was {
                update = update.expression_attribute_values(":true", b(true));
            }
            let result = self
                .client
                .transact_write_items()
                .transact_items(ref_write)
                .transact_items(
                    TransactWriteItem::builder()
                        .update(update.build().map_err(build_err)?)
                        .build(),
                )
                .transact_items(self.audit(audit)?)
                .send()
                .await;
            match result {
                Ok(_) => return Ok(true),
                Err(e) => match cancelled(&e) {
                    // The reference changed under us: read it again.
                    Some(reasons) if reasons[0] == "ConditionalCheckFailed" => continue,
                    Some(reasons) if reasons[1] == "ConditionalCheckFailed" => {
                        return match self.raw(project, id).await? {
                            None => Err(StoreError::NotFound),
                            Some(_) => Err(StoreError::Disabled),
                        };
                    }
                    _ => return Err(aws_err(e)),
                },
            }
        }
        Err(StoreError::Backend(
            "the campaign reference kept changing; try again".into(),
        ))
    }
}

#[async_trait]
impl TouchpointStore for DynamoTouchpoints {
    async fn insert(&self, tp: &Touchpoint, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut claim = key(project_pk(tp.project_id), name_sk(&tp.spec.name));
        claim.insert("id".into(), s(&tp.id));
        let result = self
            .client
            .transact_write_items()
            .transact_items(self.put(to_item(tp, 0)?, "attribute_not_exists(pk)")?)
            .transact_items(self.put(claim, "attribute_not_exists(pk)")?)
            .transact_items(self.audit(audit)?)
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) => {
                return Err(match cancelled(&e) {
                    Some(r) if r.get(1).is_some_and(|c| c == "ConditionalCheckFailed") => {
                        StoreError::NameTaken(tp.spec.name.clone())
                    }
                    _ => aws_err(e),
                });
            }
        }
        let grants = tp
            .space_ids
            .iter()
            .map(|space| self.grant(tp.project_id, space, &tp.id))
            .collect::<Result<Vec<_>, _>>()?;
        self.batch_write(grants).await
    }

    async fn get(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<Option<Touchpoint>, StoreError> {
        self.raw(project, id)
            .await?
            .as_ref()
            .map(from_item)
            .transpose()
    }

    async fn list(
        &self,
        project: ProjectId,
        filter: &ListFilter,
    ) -> Result<Vec<Touchpoint>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = filter
            .after_id
            .as_ref()
            .map(|after| key(project_pk(project), tp_sk(after)));
        let mut filters = Vec::new();
        let mut values: HashMap<String, AttributeValue> = HashMap::from([
            (":pk".to_owned(), s(project_pk(project))),
            (":prefix".to_owned(), s("TP#")),
        ]);
        if let Some(k) = filter.kind {
            filters.push("kind = :kind");
            values.insert(":kind".into(), s(k.as_str()));
        }
        if let Some(e) = filter.enabled {
            filters.push("enabled = :enabled");
            values.insert(":enabled".into(), b(e));
        }
        if let Some(q) = &filter.name_contains {
            filters.push("contains(name_lower, :q)");
            values.insert(":q".into(), s(q.to_lowercase()));
        }
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .set_expression_attribute_values(Some(values.clone()))
                .set_exclusive_start_key(start.take())
                .limit(filter.limit.max(1) as i32);
            if !filters.is_empty() {
                query = query.filter_expression(filters.join(" AND "));
            }
            let page = query.send().await.map_err(aws_err)?;
            for item in page.items() {
                out.push(from_item(item)?);
                if out.len() >= filter.limit {
                    return Ok(out);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn list_for_space(
        &self,
        project: ProjectId,
        space: &str,
    ) -> Result<Vec<Touchpoint>, StoreError> {
        let grants = query_all(
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(space_pk(project, space))),
        )
        .await?;
        let ids: Vec<String> = grants.iter().filter_map(|i| get_s(i, "id")).collect();
        let mut out = Vec::new();
        for chunk in ids.chunks(100) {
            let mut keys = KeysAndAttributes::builder().consistent_read(true);
            for id in chunk {
                keys = keys.keys(key(project_pk(project), tp_sk(id)));
            }
            for item in
                batch_get(&self.client, &self.table, keys.build().map_err(build_err)?).await?
            {
                let tp = from_item(&item)?;
                if tp.enabled && tp.space_ids.iter().any(|s| s == space) {
                    out.push(tp);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn update(
        &self,
        next: &Touchpoint,
        expected_version: u64,
        guard: UpdateGuard,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let Some(current_item) = self.raw(next.project_id, &next.id).await? else {
            return Err(StoreError::NotFound);
        };
        let current = from_item(&current_item)?;
        let blocking: i64 = get_n(&current_item, "blocking").unwrap_or_default();
        let mut condition = String::from("version = :expected");
        let mut values = HashMap::from([(":expected".to_owned(), n(expected_version))]);
        match guard {
            UpdateGuard::None => {}
            UpdateGuard::MustBeDisabled => {
                condition.push_str(" AND enabled = :false");
                values.insert(":false".into(), b(false));
            }
            UpdateGuard::NoBlockingCampaigns => {
                condition.push_str(" AND (attribute_not_exists(blocking) OR blocking = :zero)");
                values.insert(":zero".into(), n(0));
            }
        }
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(to_item(next, blocking)?))
            .condition_expression(condition)
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(build_err)?;
        let mut tx = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build());
        let renamed = current.spec.name != next.spec.name;
        if renamed {
            let mut claim = key(project_pk(next.project_id), name_sk(&next.spec.name));
            claim.insert("id".into(), s(&next.id));
            tx = tx
                .transact_items(self.put(claim, "attribute_not_exists(pk)")?)
                .transact_items(
                    self.delete(project_pk(next.project_id), name_sk(&current.spec.name))?,
                );
        }
        tx = tx.transact_items(self.audit(audit)?);
        if let Err(e) = tx.send().await {
            return Err(match cancelled(&e) {
                Some(r) if r[0] == "ConditionalCheckFailed" => {
                    self.explain(next.project_id, &next.id, expected_version, guard)
                        .await
                }
                Some(r) if renamed && r.get(1).is_some_and(|c| c == "ConditionalCheckFailed") => {
                    StoreError::NameTaken(next.spec.name.clone())
                }
                _ => aws_err(e),
            });
        }
        if current.space_ids != next.space_ids {
            let mut requests = Vec::new();
            for space in next
                .space_ids
                .iter()
                .filter(|s| !current.space_ids.contains(s))
            {
                requests.push(self.grant(next.project_id, space, &next.id)?);
            }
            for space in current
                .space_ids
                .iter()
                .filter(|s| !next.space_ids.contains(s))
            {
                requests.push(self.revoke(next.project_id, space, &next.id)?);
            }
            self.batch_write(requests).await?;
        }
        Ok(())
    }

    async fn delete(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        expected_version: u64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let Some(item) = self.raw(project, id).await? else {
            return Err(StoreError::NotFound);
        };
        let current = from_item(&item)?;
        let del = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(project_pk(project), tp_sk(id))))
            .condition_expression("version = :expected AND enabled = :false")
            .expression_attribute_values(":expected", n(expected_version))
            .expression_attribute_values(":false", b(false))
            .build()
            .map_err(build_err)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().delete(del).build())
            .transact_items(self.delete(project_pk(project), name_sk(&current.spec.name))?)
            .transact_items(self.audit(audit)?)
            .send()
            .await;
        if let Err(e) = result {
            return Err(match cancelled(&e) {
                Some(r) if r[0] == "ConditionalCheckFailed" => {
                    match self
                        .explain(project, id, expected_version, UpdateGuard::MustBeDisabled)
                        .await
                    {
                        StoreError::Backend(_) => StoreError::Enabled,
                        other => other,
                    }
                }
                _ => aws_err(e),
            });
        }
        let mut requests = Vec::new();
        for space in &current.space_ids {
            requests.push(self.revoke(project, space, id)?);
        }
        for c in self.campaigns(project, id).await? {
            requests.push(
                WriteRequest::builder()
                    .delete_request(
                        aws_sdk_dynamodb::types::DeleteRequest::builder()
                            .set_key(Some(key(
                                project_pk(project),
                                format!("{}{}", ref_prefix(id), c.campaign_id),
                            )))
                            .build()
                            .map_err(build_err)?,
                    )
                    .build(),
            );
        }
        self.batch_write(requests).await
    }

    async fn campaigns(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<Vec<CampaignRef>, StoreError> {
        query_all(
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(project_pk(project)))
                .expression_attribute_values(":prefix", s(ref_prefix(id)))
                .consistent_read(true),
        )
        .await?
        .iter()
        .map(ref_from_item)
        .collect()
    }

    async fn put_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign: &CampaignRef,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.change_ref(project, id, &campaign.campaign_id, Some(campaign), audit)
            .await
            .map(|_| ())
    }

    async fn delete_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign_id: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        self.change_ref(project, id, campaign_id, None, audit).await
    }

    async fn notification_config(
        &self,
        project: ProjectId,
    ) -> Result<Option<NotificationConfig>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(project_pk(project), NOTIFY_SK)))
            .send()
            .await
            .map_err(aws_err)?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let events = get_s(&item, "events").ok_or_else(|| missing("events"))?;
        Ok(Some(NotificationConfig {
            url: get_s(&item, "url").ok_or_else(|| missing("url"))?,
            token: Token::new(get_s(&item, "token").ok_or_else(|| missing("token"))?),
            events: serde_json::from_str(&events).map_err(StoreError::backend)?,
            updated_at: get_n(&item, "updated_at").unwrap_or_default(),
            seal_key: Token::new(get_s(&item, "seal_key").unwrap_or_default()),
        }))
    }

    async fn put_notification_config(
        &self,
        project: ProjectId,
        config: Option<&NotificationConfig>,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let change = match config {
            Some(c) => {
                let mut item = key(project_pk(project), NOTIFY_SK);
                item.insert("url".into(), s(&c.url));
                item.insert("token".into(), s(c.token.expose()));
                item.insert(
                    "events".into(),
                    s(serde_json::to_string(&c.events).map_err(StoreError::backend)?),
                );
                item.insert("updated_at".into(), n(c.updated_at));
                item.insert("seal_key".into(), s(c.seal_key.expose()));
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(item))
                            .build()
                            .map_err(build_err)?,
                    )
                    .build()
            }
            None => self.delete(project_pk(project), NOTIFY_SK.to_owned())?,
        };
        self.client
            .transact_write_items()
            .transact_items(change)
            .transact_items(self.audit(audit)?)
            .send()
            .await
            .map_err(aws_err)?;
        Ok(())
    }

    async fn record_audit(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        self.client
            .transact_write_items()
            .transact_items(self.audit(audit)?)
            .send()
            .await
            .map_err(aws_err)?;
        Ok(())
    }

    /// One partition per project, newest first; a touchpoint's entries are filtered from the
    /// project's (a read covers every entry in the time range it passes, so a narrow `since`
    /// keeps it cheap).
    async fn audit_log(
        &self,
        project: ProjectId,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = filter
            .before_id
            .as_ref()
            .map(|before| key(audit_pk(project), before.clone()));
        let mut values = HashMap::from([(":pk".to_owned(), s(audit_pk(project)))]);
        let mut condition = String::from("pk = :pk");
        if let Some(since) = filter.since {
            condition.push_str(" AND sk >= :since");
            values.insert(":since".into(), s(format!("{:013}", since.max(0))));
        }
        if let Some(tp) = &filter.touchpoint_id {
            values.insert(":tp".into(), s(tp));
        }
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.audit_table)
                .key_condition_expression(&condition)
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(false)
                .set_exclusive_start_key(start.take())
                .limit(filter.limit.clamp(1, 1000) as i32);
            if filter.touchpoint_id.is_some() {
                query = query.filter_expression("touchpoint = :tp");
            }
            let page = query.send().await.map_err(aws_err)?;
            for item in page.items() {
                out.push(audit_from_item(project, item)?);
                if out.len() >= filter.limit {
                    return Ok(out);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }
}
