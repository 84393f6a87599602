//! What the API reports about deliveries: a dispatch's state and batches, a batch's detail and
//! the statistics of a campaign or touchpoint. The use case owns the rules that turn stored
//! counters into these reports (state naming, the hour-by-hour window, the pending walk-back), so
//! handlers only shape HTTP.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use crate::clock::{Clock, Millis, rfc3339};
use crate::delivery::{
    BatchState, BatchView, Counters, DeliveryReports, DispatchIntake, DispatchView, HOUR_MS,
    HourStats, ReasonCount, StatsScope, hour_of,
};
use crate::error::{DomainError, FieldError};
use crate::ids::{DispatchId, OrderNo, TouchpointId};
use crate::model::ProjectId;

/// Longest statistics window: one week of hours.
pub const MAX_STATS_HOURS: u32 = 168;
/// The window when the caller names none.
pub const DEFAULT_STATS_HOURS: u32 = 24;
/// Failure reasons listed at most.
pub const TOP_REASONS: usize = 10;
/// Most touchpoints in one request for success rates (a page of the listing).
pub const MAX_WINDOW_TOUCHPOINTS: usize = 100;
/// Series read at once for a request for success rates.
const WINDOW_READS_AT_ONCE: usize = 16;

/// Where a dispatch stands, as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DispatchState {
    /// Handed in, not opened by the dispatcher yet.
    Queued,
    /// The queue gave up on it before the dispatcher could open it.
    DeadLettered,
    InProgress,
    /// Every user has a final result.
    Completed,
    /// Refused as a whole (see `rejected`).
    Rejected,
}

/// Names an opened dispatch's state from its counts.
pub fn dispatch_state(rejected: bool, users: u32, succeeded: u32, failed: u32) -> DispatchState {
    if rejected {
        DispatchState::Rejected
    } else if succeeded + failed >= users {
        DispatchState::Completed
    } else {
        DispatchState::InProgress
    }
}

/// A dispatch's users by outcome, and its batches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatchCounts {
    pub users: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub pending: u32,
    pub batches: u32,
    pub batches_finished: u32,
}

/// One batch in a dispatch's listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    /// The batch's `orderNo`: read it at `/v1/batches/{orderNo}`.
    pub order_no: OrderNo,
    pub index: i64,
    pub state: BatchState,
    pub users: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub attempts: u32,
    pub last_http_status: Option<u16>,
    pub last_error: Option<String>,
}

/// A dispatch as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatchReport {
    pub dispatch_id: DispatchId,
    pub project_id: ProjectId,
    /// Known once the dispatcher opened the dispatch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy_id: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub space_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touchpoint_id: Option<TouchpointId>,
    pub state: DispatchState,
    /// Why the dispatch was refused or dead-lettered, when it was.
    pub rejected: Option<String>,
    #[schema(format = DateTime)]
    pub received_at: String,
    /// Known once the dispatcher opened the dispatch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<DispatchCounts>,
    /// At most [`DISPATCH_BATCH_PAGE`] batches, from the index asked for (`batchesFrom`).
    pub batches: Vec<BatchSummary>,
    /// Where the next page of batches starts, when there is one (`?batchesFrom=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batches_from: Option<u32>,
}

/// Batches per page of a dispatch's report.
pub const DISPATCH_BATCH_PAGE: u32 = 100;

impl DispatchReport {
    /// An opened dispatch (its counts as the store keeps them) and a page of its batches.
    pub fn opened(
        view: DispatchView,
        batches: &[BatchView],
        next_batches_from: Option<u32>,
    ) -> DispatchReport {
        let (succeeded, failed) = (view.succeeded, view.failed);
        DispatchReport {
            state: dispatch_state(view.rejected.is_some(), view.users, succeeded, failed),
            dispatch_id: view.meta.dispatch_id,
            project_id: view.meta.project_id,
            campaign_id: Some(view.meta.campaign_id),
            strategy_id: Some(view.meta.strategy_id),
            space_id: Some(view.meta.space_id),
            touchpoint_id: Some(view.meta.touchpoint_id),
            rejected: view.rejected,
            received_at: rfc3339(view.received_at),
            counts: Some(DispatchCounts {
                users: view.users,
                succeeded,
                failed,
                pending: view.users.saturating_sub(succeeded + failed),
                batches: view.batches,
                batches_finished: view.batches_finished,
            }),
            next_batches_from,
            batches: batches
                .iter()
                .map(|b| BatchSummary {
                    order_no: b.order_no.clone(),
                    index: b.batch_index,
                    state: b.state,
                    users: b.users,
                    succeeded: b.succeeded,
                    failed: b.failed,
                    attempts: b.attempts,
                    last_http_status: b.last_http_status,
                    last_error: b.last_error.clone(),
                })
                .collect(),
        }
    }
}

/// One user's result in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserResultReport {
    pub gid: i64,
    /// `TOU_SUCC` or `TOU_FAIL`.
    pub status: &'static str,
    pub error_msg: String,
}

/// A batch as the API shows it: per-user results, pending users, attempts and polls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchReport {
    pub order_no: OrderNo,
    pub dispatch_id: DispatchId,
    pub index: i64,
    pub touchpoint_id: TouchpointId,
    pub campaign_id: String,
    pub state: BatchState,
    pub users: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub pending: u32,
    /// Async: the users still waiting for their receipt.
    pub pending_users: Vec<i64>,
    pub polls: u32,
    #[schema(format = DateTime)]
    pub next_poll_at: Option<String>,
    #[schema(format = DateTime)]
    pub receipt_deadline: Option<String>,
    pub attempts: u32,
    pub last_http_status: Option<u16>,
    pub last_error: Option<String>,
    pub response_excerpt: Option<String>,
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    pub sent_at: Option<String>,
    #[schema(format = DateTime)]
    pub resolved_at: Option<String>,
    pub results: Vec<UserResultReport>,
}

impl From<BatchView> for BatchReport {
    fn from(b: BatchView) -> BatchReport {
        let time = |t: Option<Millis>| t.map(rfc3339);
        BatchReport {
            pending: b.users.saturating_sub(b.succeeded + b.failed),
            results: b
                .results
                .iter()
                .map(|r| UserResultReport {
                    gid: r.gid,
                    status: r.status.code(),
                    error_msg: r.status.reason().to_owned(),
                })
                .collect(),
            order_no: b.order_no,
            dispatch_id: b.dispatch_id,
            index: b.batch_index,
            touchpoint_id: b.touchpoint_id,
            campaign_id: b.campaign_id,
            state: b.state,
            users: b.users,
            succeeded: b.succeeded,
            failed: b.failed,
            pending_users: b.pending,
            polls: b.polls,
            next_poll_at: time(b.next_poll_at),
            receipt_deadline: time(b.deadline),
            attempts: b.attempts,
            last_http_status: b.last_http_status,
            last_error: b.last_error,
            response_excerpt: b.response_excerpt,
            next_attempt_at: time(b.next_attempt_at),
            sent_at: time(b.sent_at),
            resolved_at: time(b.resolved_at),
        }
    }
}

/// One hour of a statistics window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HourReport {
    #[schema(format = DateTime)]
    pub hour: String,
    /// Users sent in the hour.
    pub sent: u64,
    /// Users that became final in the hour.
    pub succeeded: u64,
    pub failed: u64,
    /// Users still pending at the end of the hour.
    pub pending: u64,
    /// A batch settled in the hour, for drill-down.
    pub last_order_no: Option<OrderNo>,
}

/// The window a statistics report covers.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsWindow {
    pub hours: u32,
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
    pub succeeded: u64,
    pub failed: u64,
    /// succeeded / (succeeded + failed) in the window; null when nothing became final.
    pub success_rate: Option<f64>,
}

/// Totals, the last hours hour by hour and their most frequent failure reasons.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsReport {
    /// On a campaign's statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// On a touchpoint's statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touchpoint_id: Option<TouchpointId>,
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub pending: u64,
    pub window: StatsWindow,
    /// Every hour of the window, oldest first (zeros included).
    pub series: Vec<HourReport>,
    /// Most frequent first; each settled batch adds its 5 most frequent reasons, cut to 120
    /// characters.
    pub failure_reasons: Vec<ReasonCount>,
}

/// A touchpoint's users that became final in a window.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TouchpointWindow {
    pub touchpoint_id: TouchpointId,
    pub succeeded: u64,
    pub failed: u64,
    /// succeeded / (succeeded + failed); null when nothing became final.
    pub success_rate: Option<f64>,
}

/// Several touchpoints' success rates over the same window (the listing's column).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowsReport {
    pub hours: u32,
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
    /// One per distinct touchpoint asked for, in the order asked; a touchpoint with no
    /// activity (or unknown to the project) has zeros.
    pub items: Vec<TouchpointWindow>,
}

fn success_rate(succeeded: u64, failed: u64) -> Option<f64> {
    (succeeded + failed > 0).then(|| succeeded as f64 / (succeeded + failed) as f64)
}

/// The window of `hours` whole hours that ends with the current hour.
fn window_at(now: Millis, hours: u32) -> (Millis, Millis) {
    let to = hour_of(now) + HOUR_MS;
    (to - i64::from(hours) * HOUR_MS, to)
}

/// The hours `[from, from + hours)`, each filled from `recorded` (sorted by hour; hours outside
/// are skipped) or zero, with the users pending at each hour's end walked back from
/// `pending_now`: the totals move with the hour counters, so today's pending minus each later
/// hour's (sent − final) is exact.
pub fn hourly_series(
    from: Millis,
    hours: u32,
    recorded: Vec<HourStats>,
    pending_now: u64,
) -> Vec<HourReport> {
    let mut recorded = recorded.into_iter().peekable();
    let mut rows: Vec<HourStats> = Vec::with_capacity(hours as usize);
    for i in 0..i64::from(hours) {
        let hour = from + i * HOUR_MS;
        while recorded.peek().is_some_and(|r| r.hour < hour) {
            recorded.next();
        }
        rows.push(match recorded.next_if(|r| r.hour == hour) {
            Some(r) => r,
            None => HourStats {
                hour,
                ..HourStats::default()
            },
        });
    }
    let mut pending = pending_now as i64;
    let mut series: Vec<HourReport> = rows
        .into_iter()
        .rev()
        .map(|row| {
            let at_end = pending.max(0) as u64;
            pending -= row.sent as i64 - (row.succeeded + row.failed) as i64;
            HourReport {
                hour: rfc3339(row.hour),
                sent: row.sent,
                succeeded: row.succeeded,
                failed: row.failed,
                pending: at_end,
                last_order_no: row.last_order_no,
            }
        })
        .collect();
    series.reverse();
    series
}

/// Reads `?hours=`: a whole number from 1 to [`MAX_STATS_HOURS`], [`DEFAULT_STATS_HOURS`] when
/// absent.
pub fn stats_hours(raw: Option<&str>) -> Result<u32, DomainError> {
    match raw {
        None => Ok(DEFAULT_STATS_HOURS),
        Some(h) => h
            .parse::<u32>()
            .ok()
            .filter(|h| (1..=MAX_STATS_HOURS).contains(h))
            .ok_or_else(|| {
                DomainError::Validation(vec![FieldError::new(
                    "hours",
                    format!("must be a whole number of hours from 1 to {MAX_STATS_HOURS}"),
                )])
            }),
    }
}

/// Reads `?batchesFrom=`: a batch index, a whole number from 0; 0 when absent.
pub fn batches_from(raw: Option<&str>) -> Result<u32, DomainError> {
    match raw {
        None => Ok(0),
        Some(v) => v.parse::<u32>().map_err(|_| {
            DomainError::Validation(vec![FieldError::new(
                "batchesFrom",
                "must be a whole number from 0 (a batch index)",
            )])
        }),
    }
}

/// Reads `?ids=`: 1 to [`MAX_WINDOW_TOUCHPOINTS`] touchpoint ids separated by commas, repeats
/// counted (as the document's pattern counts them) and then dropped, the order kept.
pub fn window_touchpoints(raw: &str) -> Result<Vec<TouchpointId>, DomainError> {
    let refuse = |why: String| DomainError::Validation(vec![FieldError::new("ids", why)]);
    let given = raw.split(',').count();
    if given > MAX_WINDOW_TOUCHPOINTS {
        return Err(refuse(format!(
            "at most {MAX_WINDOW_TOUCHPOINTS} touchpoints at once, {given} given"
        )));
    }
    let mut ids: Vec<TouchpointId> = Vec::new();
    for id in raw.split(',') {
        if !crate::ids::is_touchpoint_id(id) {
            return Err(refuse(format!(
                "{:?} is not a touchpoint id",
                crate::protocol::truncate(id, 40)
            )));
        }
        if !ids.iter().any(|known| known == id) {
            ids.push(id.into());
        }
    }
    Ok(ids)
}

/// The reporting use case.
#[derive(Clone)]
pub struct Reporting {
    store: Arc<dyn DeliveryReports>,
    intake: Arc<dyn DispatchIntake>,
    clock: Arc<dyn Clock>,
}

impl Reporting {
    pub fn new(
        store: Arc<dyn DeliveryReports>,
        intake: Arc<dyn DispatchIntake>,
        clock: Arc<dyn Clock>,
    ) -> Reporting {
        Reporting {
            store,
            intake,
            clock,
        }
    }

    /// A dispatch: as the dispatcher recorded it, or as the intake knows it before that.
    /// A dispatch's state and counts (constant cost), and a page of its batches from index
    /// `batches_from`.
    pub async fn dispatch(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        batches_from: u32,
    ) -> Result<DispatchReport, DomainError> {
        if let Some(view) = self.store.dispatch(project, dispatch_id).await? {
            let batches = self
                .store
                .batch_page(project, dispatch_id, batches_from, DISPATCH_BATCH_PAGE)
                .await?;
            let next = batches_from.saturating_add(DISPATCH_BATCH_PAGE);
            let next = (view.rejected.is_none() && next < view.batches).then_some(next);
            return Ok(DispatchReport::opened(view, &batches, next));
        }
        let submitted = self
            .intake
            .submitted(project, dispatch_id)
            .await?
            .ok_or(DomainError::NotFound("dispatch"))?;
        Ok(DispatchReport {
            dispatch_id: dispatch_id.to_owned(),
            project_id: project,
            campaign_id: None,
            strategy_id: None,
            space_id: None,
            touchpoint_id: None,
            state: if submitted.dead_letter_reason.is_some() {
                DispatchState::DeadLettered
            } else {
                DispatchState::Queued
            },
            rejected: submitted.dead_letter_reason,
            received_at: rfc3339(submitted.received_at),
            counts: None,
            batches: Vec::new(),
            next_batches_from: None,
        })
    }

    pub async fn batch(
        &self,
        project: ProjectId,
        order_no: &OrderNo,
    ) -> Result<BatchReport, DomainError> {
        self.store
            .batch(project, order_no)
            .await?
            .map(BatchReport::from)
            .ok_or(DomainError::NotFound("batch"))
    }

    /// A scope's totals, and its last `hours` hour by hour.
    pub async fn stats(
        &self,
        project: ProjectId,
        scope: StatsScope,
        key: &str,
        hours: u32,
    ) -> Result<StatsReport, DomainError> {
        let c: Counters = self.store.stats(project, scope, key).await?;
        let (from, to) = window_at(self.clock.now_ms(), hours);
        let recorded = self
            .store
            .stats_series(project, scope, key, from, to)
            .await?;
        let failure_reasons = self
            .store
            .failure_reasons(project, scope, key, from, to, TOP_REASONS)
            .await?;
        let series = hourly_series(from, hours, recorded, c.pending);
        let succeeded: u64 = series.iter().map(|h| h.succeeded).sum();
        let failed: u64 = series.iter().map(|h| h.failed).sum();
        Ok(StatsReport {
            campaign_id: (scope == StatsScope::Campaign).then(|| key.to_owned()),
            touchpoint_id: (scope == StatsScope::Touchpoint).then(|| key.into()),
            sent: c.sent,
            succeeded: c.succeeded,
            failed: c.failed,
            pending: c.pending,
            window: StatsWindow {
                hours,
                from: rfc3339(from),
                to: rfc3339(to),
                succeeded,
                failed,
                success_rate: success_rate(succeeded, failed),
            },
            series,
            failure_reasons,
        })
    }

    /// Each touchpoint's users that became final in the last `hours`, read a few at a time.
    pub async fn windows(
        &self,
        project: ProjectId,
        ids: &[TouchpointId],
        hours: u32,
    ) -> Result<WindowsReport, DomainError> {
        use futures_util::{StreamExt, TryStreamExt};
        let (from, to) = window_at(self.clock.now_ms(), hours);
        let store = &self.store;
        let items: Vec<TouchpointWindow> = futures_util::stream::iter(ids.iter().cloned())
            .map(|id: TouchpointId| async move {
                let hours = store
                    .stats_series(project, StatsScope::Touchpoint, &id, from, to)
                    .await?;
                let succeeded = hours.iter().map(|h| h.succeeded).sum();
                let failed = hours.iter().map(|h| h.failed).sum();
                Ok::<_, crate::ports::StoreError>(TouchpointWindow {
                    touchpoint_id: id,
                    succeeded,
                    failed,
                    success_rate: success_rate(succeeded, failed),
                })
            })
            .buffered(WINDOW_READS_AT_ONCE)
            .try_collect()
            .await?;
        Ok(WindowsReport {
            hours,
            from: rfc3339(from),
            to: rfc3339(to),
            items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(at: Millis, sent: u64, succeeded: u64, failed: u64) -> HourStats {
        HourStats {
            hour: at,
            sent,
            succeeded,
            failed,
            last_order_no: None,
        }
    }

    #[test]
    fn every_hour_of_the_window_is_listed_with_the_users_pending_at_its_end() {
        let from = 10 * HOUR_MS;
        // Outside the window (before it): skipped. Hour 1: 10 sent, 4 final; hour 3: 2 final.
        let recorded = vec![
            hour(9 * HOUR_MS, 99, 0, 0),
            hour(from + HOUR_MS, 10, 3, 1),
            hour(from + 3 * HOUR_MS, 0, 2, 0),
        ];
        let series = hourly_series(from, 4, recorded, 4);
        let rows: Vec<(u64, u64, u64, u64)> = series
            .iter()
            .map(|h| (h.sent, h.succeeded, h.failed, h.pending))
            .collect();
        assert_eq!(
            rows,
            [(0, 0, 0, 0), (10, 3, 1, 6), (0, 0, 0, 6), (0, 2, 0, 4)]
        );
        assert_eq!(series[0].hour, rfc3339(from));
        assert_eq!(series[3].hour, rfc3339(from + 3 * HOUR_MS));
    }

    #[test]
    fn the_walk_back_never_reports_negative_pending() {
        // More became final in the window than were pending before it (sent earlier).
        let series = hourly_series(0, 2, vec![hour(HOUR_MS, 0, 5, 0)], 0);
        assert_eq!(series[0].pending, 5);
        let series = hourly_series(0, 2, vec![hour(HOUR_MS, 5, 0, 0)], 0);
        assert_eq!(series[0].pending, 0, "clamped at zero");
    }

    #[test]
    fn a_dispatch_is_named_by_its_counts() {
        assert_eq!(dispatch_state(true, 10, 10, 0), DispatchState::Rejected);
        assert_eq!(dispatch_state(false, 10, 7, 3), DispatchState::Completed);
        assert_eq!(dispatch_state(false, 10, 7, 2), DispatchState::InProgress);
        assert_eq!(dispatch_state(false, 0, 0, 0), DispatchState::Completed);
    }

    #[test]
    fn hours_are_bounded_and_default_to_a_day() {
        assert_eq!(stats_hours(None).unwrap(), 24);
        assert_eq!(stats_hours(Some("168")).unwrap(), 168);
        for bad in ["0", "169", "-1", "1.5", "", "x"] {
            assert!(stats_hours(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn window_ids_are_touchpoint_ids_kept_in_order_without_repeats_and_at_most_100() {
        let a = "tp_01JDX3ZZZZZZZZZZZZZZZZZZZA";
        let b = "tp_01JDX3ZZZZZZZZZZZZZZZZZZZB";
        let ids = window_touchpoints(&format!("{b},{a},{b}")).unwrap();
        assert_eq!(ids, [TouchpointId::from(b), TouchpointId::from(a)]);
        for bad in [
            "",
            "tp_short",
            &format!("{a},"),
            &format!("{a}, {b}"),
            "../x",
        ] {
            let Err(DomainError::Validation(errors)) = window_touchpoints(bad) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(errors[0].path, "ids", "{bad:?}");
        }
        let many: Vec<String> = (0..101).map(|i| format!("tp_{i:0>26}")).collect();
        assert!(window_touchpoints(&many[..100].join(",")).is_ok());
        let repeated = vec![many[0].as_str(); 101].join(",");
        assert!(
            window_touchpoints(&repeated).is_err(),
            "101 entries are refused even when they name one touchpoint"
        );
        let Err(DomainError::Validation(errors)) = window_touchpoints(&many.join(",")) else {
            panic!("101 touchpoints accepted");
        };
        assert!(
            errors[0].message.contains("at most 100"),
            "{}",
            errors[0].message
        );
    }
}
