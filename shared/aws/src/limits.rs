//! A touchpoint's limits shared by every Lambda instance ([`touchpoint::limits`]), in the
//! delivery table: one partition per touchpoint, `P#{project}#LIM#{touchpoint}`, with an item
//! per slot (`S#nn`: `lease`, `until`, `free_at`) and one for the back-pressure (`R`:
//! `cut_to`, `cut_from`, `cut_at`, `paused_until`). Every change is one conditional
//! `UpdateItem`; one consistent `Query` reads them all (at most 65 small items), a `GetItem` the
//! back-pressure alone (what every sending instance reads every 250 ms). Items expire
//! a day after their last use (`expires_at`).
//!
//! The `R` item also holds the receiver's health ([`touchpoint::health`]): five window slots
//! (`hs{k}`: the slot's number, `hr{k}` requests, `hf{k}` failures, at `number % 5`) that every
//! instance adds its counts to about once a second while it sends, and the breaker when open
//! (`br_since`, `br_reason`, `br_until`, `br_probe`, `br_opened`; its cool-down is also a pause).

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::ReturnValue;
use touchpoint::clock::Millis;
use touchpoint::health::{Breaker, SLOTS, Window};
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
        window: {
            let mut w = Window::default();
            for k in 0..SLOTS {
                if let Some(slot) = get_n::<i64>(item, &format!("hs{k}")) {
                    w.slots[k] = (
                        slot,
                        get_n(item, &format!("hr{k}")).unwrap_or(0),
                        get_n(item, &format!("hf{k}")).unwrap_or(0),
                    );
                }
            }
            w
        },
        breaker: get_n::<Millis>(item, "br_since").map(|since| Breaker {
            since,
            reason: get_s(item, "br_reason").unwrap_or_default(),
            until: get_n(item, "br_until").unwrap_or(0),
            probe_until: get_n(item, "br_probe").unwrap_or(0),
            opened: get_n(item, "br_opened").unwrap_or(1),
        }),
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

    async fn report(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        slot: i64,
        requests: u32,
        failures: u32,
    ) -> Result<Pressure, StoreError> {
        let k = slot.rem_euclid(SLOTS as i64);
        let (hs, hr, hf) = (format!("hs{k}"), format!("hr{k}"), format!("hf{k}"));
        let expire = expires(slot.saturating_mul(60_000).max(0));
        // Two tries each way: the slot is this one (add to it), or older or absent (start it);
        // another instance may start it between the two.
        for _ in 0..2 {
            let add = self
                .pressure_update(project, tp)
                .update_expression(format!("ADD {hr} :r, {hf} :f SET expires_at = :e"))
                .condition_expression(format!("{hs} = :s"))
                .expression_attribute_values(":r", n(requests))
                .expression_attribute_values(":f", n(failures))
                .expression_attribute_values(":s", n(slot))
                .expression_attribute_values(":e", expire.clone())
                .return_values(ReturnValue::AllNew);
            if let Some(out) = conditionally(add).await? {
                return Ok(out.attributes.as_ref().map(pressure_of).unwrap_or_default());
            }
            let start = self
                .pressure_update(project, tp)
                .update_expression(format!(
                    "SET {hs} = :s, {hr} = :r, {hf} = :f, expires_at = :e"
                ))
                .condition_expression(format!("attribute_not_exists({hs}) OR {hs} < :s"))
                .expression_attribute_values(":r", n(requests))
                .expression_attribute_values(":f", n(failures))
                .expression_attribute_values(":s", n(slot))
                .expression_attribute_values(":e", expire.clone())
                .return_values(ReturnValue::AllNew);
            if let Some(out) = conditionally(start).await? {
                return Ok(out.attributes.as_ref().map(pressure_of).unwrap_or_default());
            }
        }
        // The slot moved on past this report's (a late report): nothing to add.
        self.pressure(project, tp).await
    }

    async fn trip(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        b: &Breaker,
    ) -> Result<bool, StoreError> {
        let out = self
            .pressure_update(project, tp)
            .update_expression(
                "SET br_since = :since, br_reason = :reason, br_until = :until, br_opened = :opened, \
                 paused_until = :until, expires_at = :e REMOVE br_probe",
            )
            .condition_expression("attribute_not_exists(br_since)")
            .expression_attribute_values(":since", n(b.since))
            .expression_attribute_values(":reason", s(&b.reason))
            .expression_attribute_values(":until", n(b.until))
            .expression_attribute_values(":opened", n(b.opened))
            .expression_attribute_values(":e", expires(b.until));
        Ok(conditionally(out).await?.is_some())
    }

    async fn probe(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        let out = self
            .pressure_update(project, tp)
            .update_expression("SET br_probe = :until")
            .condition_expression(
                "attribute_exists(br_since) AND br_until <= :now \
                 AND (attribute_not_exists(br_probe) OR br_probe < :now)",
            )
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":until", n(until));
        Ok(conditionally(out).await?.is_some())
    }

    async fn settle(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        next: Option<&Breaker>,
        probe: Option<Millis>,
    ) -> Result<bool, StoreError> {
        let mut update = match next {
            Some(b) => self
                .pressure_update(project, tp)
                .update_expression(
                    "SET br_since = :since, br_reason = :reason, br_until = :until, \
                     br_opened = :opened, paused_until = :until, expires_at = :e REMOVE br_probe",
                )
                .expression_attribute_values(":since", n(b.since))
                .expression_attribute_values(":reason", s(&b.reason))
                .expression_attribute_values(":until", n(b.until))
                .expression_attribute_values(":opened", n(b.opened))
                .expression_attribute_values(":e", expires(b.until)),
            None => {
                let window: Vec<String> = (0..SLOTS)
                    .flat_map(|k| [format!("hs{k}"), format!("hr{k}"), format!("hf{k}")])
                    .collect();
                self.pressure_update(project, tp)
                    .update_expression(format!(
                        "SET paused_until = :zero REMOVE br_since, br_reason, br_until, br_probe, br_opened, {}",
                        window.join(", ")
                    ))
                    .expression_attribute_values(":zero", n(0))
            }
        };
        if let Some(lease) = probe {
            update = update
                .condition_expression("br_probe = :probe")
                .expression_attribute_values(":probe", n(lease));
        }
        // Refused on its condition: the probe no longer holds the breaker.
        conditionally(update).await.map(|out| out.is_some())
    }

    async fn release_probe(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        probe: Millis,
    ) -> Result<(), StoreError> {
        let update = self
            .pressure_update(project, tp)
            .update_expression("REMOVE br_probe")
            .condition_expression("br_probe = :probe")
            .expression_attribute_values(":probe", n(probe));
        conditionally(update).await.map(|_| ())
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
