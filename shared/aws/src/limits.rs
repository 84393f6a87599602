//! A touchpoint's limits shared by every Lambda instance ([`touchpoint::limits`]), in the
//! delivery table: one partition per touchpoint, `P#{project}#LIM#{touchpoint}`, with an item
//! per slot (`S#nn`: `lease`, `until`, `free_at`) and one for the back-pressure (`R`:
//! `cut_to`, `cut_from`, `cut_at`, `paused_until`). Every change is one conditional
//! `UpdateItem`; one consistent `Query` reads them all (at most 65 small items), a `GetItem` the
//! back-pressure alone (what every sending instance reads every 250 ms). Items expire
//! a day after their last use (`expires_at`).

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::ReturnValue;
use touchpoint::clock::Millis;
use touchpoint::ids::TouchpointId;
use touchpoint::limits::{Cut, LimitsState, Pressure, SharedLimits, SlotState};
use touchpoint::model::ProjectId;
use touchpoint::ports::StoreError;

use crate::item::{aws_err, conditional, get_n, get_s, key, n, s};

/// How long an unused limits item stays in the table.
const KEEP_SECS: i64 = 86_400;

#[derive(Clone)]
pub struct DynamoLimits {
    ddb: Client,
    table: String,
}

fn pk(project: ProjectId, tp: &TouchpointId) -> String {
    format!("P#{project}#LIM#{tp}")
}

fn slot_sk(slot: u16) -> String {
    format!("S#{slot:02}")
}

const PRESSURE_SK: &str = "R";

/// The back-pressure an `R` item holds.
fn pressure_of(item: &crate::item::Item) -> Pressure {
    Pressure {
        cut: match (
            get_n::<f64>(item, "cut_to"),
            get_n::<f64>(item, "cut_from"),
            get_n::<Millis>(item, "cut_at"),
        ) {
            (Some(to), Some(from), Some(at)) => Some(Cut { to, from, at }),
            _ => None,
        },
        paused_until: get_n(item, "paused_until").unwrap_or(0),
    }
}

fn expires(at: Millis) -> aws_sdk_dynamodb::types::AttributeValue {
    n(at.div_euclid(1000) + KEEP_SECS)
}

/// Sends a conditional write: its output, or `None` when it was refused on its condition.
async fn conditionally(
    update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
) -> Result<Option<aws_sdk_dynamodb::operation::update_item::UpdateItemOutput>, StoreError> {
    match update.send().await {
        Ok(out) => Ok(Some(out)),
        Err(e) if conditional(&e) => Ok(None),
        Err(e) => Err(aws_err(e)),
    }
}

type Update = aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;

impl DynamoLimits {
    pub fn new(ddb: Client, table: &str) -> DynamoLimits {
        DynamoLimits {
            ddb,
            table: table.to_owned(),
        }
    }

    /// An update of one slot's item, naming its `lease` (`#l`, the value `:l` being `lease`)
    /// and `until` (`#u`).
    fn slot_update(&self, project: ProjectId, tp: &TouchpointId, slot: u16, lease: &str) -> Update {
        self.ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk(project, tp), slot_sk(slot))))
            .expression_attribute_names("#l", "lease")
            .expression_attribute_names("#u", "until")
            .expression_attribute_values(":l", s(lease))
    }

    /// An update of the touchpoint's back-pressure item.
    fn pressure_update(&self, project: ProjectId, tp: &TouchpointId) -> Update {
        self.ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk(project, tp), PRESSURE_SK)))
    }
}

#[async_trait]
impl SharedLimits for DynamoLimits {
    async fn state(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
    ) -> Result<LimitsState, StoreError> {
        let items = crate::item::query_all(
            self.ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk(project, tp)))
                .consistent_read(true),
        )
        .await?;
        let mut state = LimitsState::default();
        for item in &items {
            let sk = get_s(item, "sk").unwrap_or_default();
            if sk == PRESSURE_SK {
                state.pressure = pressure_of(item);
            } else if let Some(slot) = sk.strip_prefix("S#").and_then(|x| x.parse().ok()) {
                state.slots.push(SlotState {
                    slot,
                    lease: get_s(item, "lease"),
                    until: get_n(item, "until").unwrap_or(0),
                });
            }
        }
        Ok(state)
    }

    async fn pressure(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
    ) -> Result<Pressure, StoreError> {
        let item = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk(project, tp), PRESSURE_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_err)?
            .item;
        Ok(item.as_ref().map(pressure_of).unwrap_or_default())
    }

    async fn take(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        slot: u16,
        lease: &str,
        now: Millis,
        until: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        let out = self
            .slot_update(project, tp, slot, lease)
            .update_expression("SET #l = :l, #u = :u, expires_at = :e")
            .condition_expression("attribute_not_exists(#l) OR #u < :now")
            .expression_attribute_values(":u", n(until))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":e", expires(until))
            .return_values(ReturnValue::AllOld);
        Ok(conditionally(out).await?.map(|o| {
            o.attributes
                .as_ref()
                .and_then(|a| get_n(a, "free_at"))
                .unwrap_or(0)
        }))
    }

    async fn renew(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        slot: u16,
        lease: &str,
        until: Millis,
    ) -> Result<bool, StoreError> {
        let out = self
            .slot_update(project, tp, slot, lease)
            .update_expression("SET #u = :u, expires_at = :e")
            .condition_expression("#l = :l")
            .expression_attribute_values(":u", n(until))
            .expression_attribute_values(":e", expires(until));
        Ok(conditionally(out).await?.is_some())
    }

    async fn release(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        slot: u16,
        lease: &str,
        free_at: Millis,
    ) -> Result<(), StoreError> {
        let out = self
            .slot_update(project, tp, slot, lease)
            .update_expression("SET free_at = :f, expires_at = :e REMOVE #l, #u")
            .condition_expression("#l = :l")
            .expression_attribute_values(":f", n(free_at))
            .expression_attribute_values(":e", expires(free_at));
        // Refused on its condition: the lease was lost, nothing to give back.
        conditionally(out).await.map(|_| ())
    }

    async fn cut(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        cut: Cut,
        unless_since: Millis,
    ) -> Result<(), StoreError> {
        let out = self
            .pressure_update(project, tp)
            .update_expression("SET cut_to = :to, cut_from = :from, cut_at = :at, expires_at = :e")
            .condition_expression("attribute_not_exists(cut_at) OR cut_at < :since")
            .expression_attribute_values(":to", n(cut.to))
            .expression_attribute_values(":from", n(cut.from))
            .expression_attribute_values(":at", n(cut.at))
            .expression_attribute_values(":since", n(unless_since))
            .expression_attribute_values(":e", expires(cut.at));
        // Refused on its condition: a cut already there.
        conditionally(out).await.map(|_| ())
    }

    async fn pause(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        until: Millis,
    ) -> Result<(), StoreError> {
        let out = self
            .pressure_update(project, tp)
            .update_expression("SET paused_until = :p, expires_at = :e")
            .condition_expression("attribute_not_exists(paused_until) OR paused_until < :p")
            .expression_attribute_values(":p", n(until))
            .expression_attribute_values(":e", expires(until));
        // Refused on its condition: a longer pause already there.
        conditionally(out).await.map(|_| ())
    }
}
