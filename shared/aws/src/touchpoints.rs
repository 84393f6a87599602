//! [`TouchpointStore`] on DynamoDB. Layout (see `infra/dynamodb.md`):
//!
//! | item | pk | sk |
//! |---|---|---|
//! | touchpoint | `P#{project}` | `TP#{id}` |
//! | name claim (uniqueness) | `P#{project}` | `NAME#{name}` |
//! | space grant | `P#{project}#SPACE#{space}` | `TP#{id}` |
//! | campaign reference | `P#{project}` | `CR#{id}#{campaign}` |
//!
//! Every change is a conditional write on the touchpoint's `version`; the touchpoint keeps a
//! `blocking` count of campaign references in a blocking state, so "disable unless a live
//! campaign uses it" is one condition (`blocking = 0`) checked by the same write.

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
use touchpoint::ids::TouchpointId;
use touchpoint::model::{CampaignRef, CampaignState, Token, Touchpoint};
use touchpoint::ports::{ListFilter, StoreError, TouchpointStore, UpdateGuard};

use crate::item::*;

#[derive(Clone, Debug)]
pub struct DynamoTouchpoints {
    client: Client,
    table: String,
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
    Ok(item)
}

fn from_item(item: &Item) -> Result<Touchpoint, StoreError> {
    let spec = get_s(item, "spec").ok_or_else(|| missing("spec"))?;
    Ok(Touchpoint {
        id: get_s(item, "id").ok_or_else(|| missing("id"))?.into(),
        project_id: get_n(item, "project").ok_or_else(|| missing("project"))?,
        spec: serde_json::from_str(&spec).map_err(StoreError::backend)?,
        token: get_s(item, "token").map(Token::new),
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

impl DynamoTouchpoints {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoTouchpoints {
        DynamoTouchpoints {
            client,
            table: table.into(),
        }
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
    async fn insert(&self, tp: &Touchpoint) -> Result<(), StoreError> {
        let mut claim = key(project_pk(tp.project_id), name_sk(&tp.spec.name));
        claim.insert("id".into(), s(&tp.id));
        let result = self
            .client
            .transact_write_items()
            .transact_items(self.put(to_item(tp, 0)?, "attribute_not_exists(pk)")?)
            .transact_items(self.put(claim, "attribute_not_exists(pk)")?)
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
    ) -> Result<(), StoreError> {
        self.change_ref(project, id, &campaign.campaign_id, Some(campaign))
            .await
            .map(|_| ())
    }

    async fn delete_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign_id: &str,
    ) -> Result<bool, StoreError> {
        self.change_ref(project, id, campaign_id, None).await
    }
}
