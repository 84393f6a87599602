//! Dispatch intake, delivery visibility and test send.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use touchpoint::delivery::{BatchState, HOUR_MS, HourStats, StatsScope, hour_of};
use touchpoint::dispatch::{
    Dispatch, DispatchUser, dynamic_data, read_dispatch, render_for_user, resolve_template,
};
use touchpoint::ids::random_order_no;
use touchpoint::protocol::UserData;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParams, QueryParams};

const CAMPAIGN_SYSTEM: &[&str] = &["admin", "campaign"];
/// Most users one test send may carry.
const MAX_TEST_USERS: usize = 10;

/// `POST /v1/dispatches`: store durably and queue; the same `dispatchId` again queues nothing.
pub async fn submit_dispatch(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    who.require(CAMPAIGN_SYSTEM)?;
    let (dispatch, _) = read_dispatch(&body)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "malformed_dispatch", m.0))?;
    if dispatch.project_id != who.project_id {
        return Err(ApiError::forbidden(format!(
            "this key acts for project {}, not {}",
            who.project_id, dispatch.project_id
        )));
    }
    let queued = state
        .intake
        .submit(
            who.project_id,
            &dispatch.dispatch_id,
            body.to_string(),
            state.clock.now_ms(),
        )
        .await
        .map_err(touchpoint::DomainError::from)?;
    let status = if queued {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let what = if queued { "queued" } else { "duplicate" };
    if queued {
        tracing::info!(project = who.project_id, dispatch = %dispatch.dispatch_id, users = dispatch.users.len(), "dispatch queued");
    }
    Ok((
        status,
        Json(json!({"dispatchId": dispatch.dispatch_id, "status": what})),
    )
        .into_response())
}

pub async fn get_dispatch(
    State(state): State<AppState>,
    who: Principal,
    PathParams(dispatch_id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(CAMPAIGN_SYSTEM)?;
    let store = |e| ApiError::from(touchpoint::DomainError::from(e));
    let view = state
        .delivery
        .dispatch(who.project_id, &dispatch_id)
        .await
        .map_err(store)?;
    let Some(view) = view else {
        // Submitted but not opened by the dispatcher yet: the intake knows it.
        let submitted = state
            .intake
            .submitted(who.project_id, &dispatch_id)
            .await
            .map_err(store)?
            .ok_or_else(|| ApiError::not_found("no such dispatch"))?;
        let state_name = if submitted.dead_letter_reason.is_some() {
            "dead_lettered"
        } else {
            "queued"
        };
        return Ok(Json(json!({
            "dispatchId": dispatch_id,
            "projectId": who.project_id,
            "state": state_name,
            "rejected": submitted.dead_letter_reason,
            "receivedAt": touchpoint::clock::rfc3339(submitted.received_at),
            "batches": [],
        })));
    };
    let batches = state
        .delivery
        .dispatch_batches(who.project_id, &dispatch_id)
        .await
        .map_err(store)?;
    let succeeded: u32 = batches.iter().map(|b| b.succeeded).sum();
    let failed: u32 = batches.iter().map(|b| b.failed).sum();
    let finished = batches
        .iter()
        .filter(|b| b.state == BatchState::Final)
        .count() as u32;
    let state_name = if view.rejected.is_some() {
        "rejected"
    } else if succeeded + failed >= view.users {
        "completed"
    } else {
        "in_progress"
    };
    let listed: Vec<Value> = batches
        .iter()
        .map(|b| {
            json!({
                "orderNo": b.order_no, "index": b.batch_index, "state": b.state, "users": b.users,
                "succeeded": b.succeeded, "failed": b.failed, "attempts": b.attempts,
                "lastHttpStatus": b.last_http_status, "lastError": b.last_error,
            })
        })
        .collect();
    Ok(Json(json!({
        "dispatchId": view.meta.dispatch_id,
        "projectId": view.meta.project_id,
        "campaignId": view.meta.campaign_id,
        "strategyId": view.meta.strategy_id,
        "spaceId": view.meta.space_id,
        "touchpointId": view.meta.touchpoint_id,
        "state": state_name,
        "rejected": view.rejected,
        "receivedAt": touchpoint::clock::rfc3339(view.received_at),
        "counts": {
            "users": view.users,
            "succeeded": succeeded,
            "failed": failed,
            "pending": view.users.saturating_sub(succeeded + failed),
            "batches": view.batches,
            "batchesFinished": finished,
        },
        "batches": listed,
    })))
}

pub async fn get_batch(
    State(state): State<AppState>,
    who: Principal,
    PathParams(order_no): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(CAMPAIGN_SYSTEM)?;
    let batch = state
        .delivery
        .batch(who.project_id, &order_no)
        .await
        .map_err(|e| ApiError::from(touchpoint::DomainError::from(e)))?
        .ok_or_else(|| ApiError::not_found("no such batch"))?;
    let results: Vec<Value> = batch
        .results
        .iter()
        .map(|r| json!({"gid": r.gid, "status": r.status.code(), "errorMsg": r.status.reason()}))
        .collect();
    let time = |t: Option<i64>| t.map(touchpoint::clock::rfc3339);
    Ok(Json(json!({
        "orderNo": batch.order_no,
        "dispatchId": batch.dispatch_id,
        "index": batch.batch_index,
        "touchpointId": batch.touchpoint_id,
        "campaignId": batch.campaign_id,
        "state": batch.state,
        "users": batch.users,
        "succeeded": batch.succeeded,
        "failed": batch.failed,
        "pending": batch.users.saturating_sub(batch.succeeded + batch.failed),
        "pendingUsers": batch.pending,
        "polls": batch.polls,
        "nextPollAt": time(batch.next_poll_at),
        "receiptDeadline": time(batch.deadline),
        "attempts": batch.attempts,
        "lastHttpStatus": batch.last_http_status,
        "lastError": batch.last_error,
        "responseExcerpt": batch.response_excerpt,
        "nextAttemptAt": time(batch.next_attempt_at),
        "sentAt": time(batch.sent_at),
        "resolvedAt": time(batch.resolved_at),
        "results": results,
    })))
}

/// `?hours=` of the statistics routes: how far back the series and the failure reasons go.
#[derive(serde::Deserialize)]
pub struct StatsQuery {
    hours: Option<String>,
}

/// Longest statistics window: one week of hours.
const MAX_STATS_HOURS: i64 = 168;
/// Failure reasons listed at most.
const TOP_REASONS: usize = 10;

/// Totals, plus the last `hours` hour by hour (every hour, zeros included, oldest first, with
/// the users still pending at its end), the window's success rate and its most frequent
/// failure reasons.
async fn statistics(
    state: &AppState,
    project: i64,
    scope: StatsScope,
    key: &str,
    query: StatsQuery,
) -> Result<Value, ApiError> {
    let hours = match query.hours.as_deref() {
        None => 24,
        Some(h) => h
            .parse::<i64>()
            .ok()
            .filter(|h| (1..=MAX_STATS_HOURS).contains(h))
            .ok_or_else(|| {
                ApiError::validation(vec![touchpoint::FieldError::new(
                    "hours",
                    format!("must be a whole number of hours from 1 to {MAX_STATS_HOURS}"),
                )])
            })?,
    };
    let store = |e| ApiError::from(touchpoint::DomainError::from(e));
    let c = state
        .delivery
        .stats(project, scope, key)
        .await
        .map_err(store)?;
    let to = hour_of(state.clock.now_ms()) + HOUR_MS;
    let from = to - hours * HOUR_MS;
    let recorded = state
        .delivery
        .stats_series(project, scope, key, from, to)
        .await
        .map_err(store)?;
    let reasons = state
        .delivery
        .failure_reasons(project, scope, key, from, to, TOP_REASONS)
        .await
        .map_err(store)?;
    let mut recorded = recorded.into_iter().peekable();
    let mut series = Vec::with_capacity(hours as usize);
    let (mut ok, mut failed) = (0u64, 0u64);
    for i in 0..hours {
        let hour = from + i * HOUR_MS;
        while recorded.peek().is_some_and(|r| r.hour < hour) {
            recorded.next();
        }
        let row = match recorded.peek() {
            Some(r) if r.hour == hour => recorded.next().unwrap_or_default(),
            _ => HourStats {
                hour,
                ..HourStats::default()
            },
        };
        ok += row.succeeded;
        failed += row.failed;
        series.push(json!({
            "hour": touchpoint::clock::rfc3339(hour),
            "sent": row.sent,
            "succeeded": row.succeeded,
            "failed": row.failed,
            "lastOrderNo": row.last_order_no,
        }));
    }
    // Users still pending at the end of each hour: the totals are moved with the hour counters,
    // so walking back from today's pending through each hour's (sent − final) is exact.
    let mut pending = c.pending as i64;
    for row in series.iter_mut().rev() {
        row["pending"] = json!(pending.max(0));
        let sent = row["sent"].as_i64().unwrap_or_default();
        let done = row["succeeded"].as_i64().unwrap_or_default()
            + row["failed"].as_i64().unwrap_or_default();
        pending -= sent - done;
    }
    let rate = (ok + failed > 0).then(|| ok as f64 / (ok + failed) as f64);
    Ok(json!({
        "sent": c.sent, "succeeded": c.succeeded, "failed": c.failed, "pending": c.pending,
        "window": {
            "hours": hours,
            "from": touchpoint::clock::rfc3339(from),
            "to": touchpoint::clock::rfc3339(to),
            "succeeded": ok,
            "failed": failed,
            "successRate": rate,
        },
        "series": series,
        "failureReasons": reasons,
    }))
}

pub async fn campaign_stats(
    State(state): State<AppState>,
    who: Principal,
    PathParams(campaign_id): PathParams<String>,
    QueryParams(query): QueryParams<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    who.require(CAMPAIGN_SYSTEM)?;
    let mut body = statistics(
        &state,
        who.project_id,
        StatsScope::Campaign,
        &campaign_id,
        query,
    )
    .await?;
    body["campaignId"] = json!(campaign_id);
    Ok(Json(body))
}

pub async fn touchpoint_stats(
    State(state): State<AppState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    QueryParams(query): QueryParams<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    who.require(&["admin"])?;
    state.touchpoints.get(who.project_id, &id).await?;
    let mut body = statistics(&state, who.project_id, StatsScope::Touchpoint, &id, query).await?;
    body["touchpointId"] = json!(id);
    Ok(Json(body))
}

/// `POST /v1/touchpoints/{id}/test`: one real signed request, enabled or not, not counted.
pub async fn test_send(
    State(state): State<AppState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    who.require(&["admin"])?;
    let tp = state.touchpoints.get(who.project_id, &id).await?;
    let invalid = |m: String| ApiError::validation(vec![touchpoint::FieldError::new("", m)]);
    let users: Vec<DispatchUser> = match body.get("users") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_TEST_USERS => items
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let gid = u.get("gid").and_then(Value::as_i64).ok_or_else(|| {
                    ApiError::validation(vec![touchpoint::FieldError::new(
                        format!("users[{i}].gid"),
                        "must be an integer",
                    )])
                })?;
                let attributes = u
                    .get("attributes")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                Ok(DispatchUser { gid, attributes })
            })
            .collect::<Result<_, ApiError>>()?,
        _ => {
            return Err(ApiError::validation(vec![touchpoint::FieldError::new(
                "users",
                format!(
                    "1 to {MAX_TEST_USERS} test users required, each {{\"gid\": …, \"attributes\": {{…}}}}"
                ),
            )]));
        }
    };
    // Checked like a dispatch, except that a test works whether the touchpoint is enabled
    // and authorized or not.
    let mut reachable = tp.clone();
    reachable.enabled = true;
    let dispatch = Dispatch {
        dispatch_id: "test".into(),
        project_id: who.project_id,
        space_id: "test".into(),
        campaign_id: "test".into(),
        strategy_id: None,
        touchpoint_id: tp.id.clone(),
        template_values: body
            .get("templateValues")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        users,
    };
    reachable.space_ids = vec![dispatch.space_id.clone()];
    let template = resolve_template(&dispatch, Some(&reachable)).map_err(invalid)?;
    let data: Vec<UserData> = dispatch
        .users
        .iter()
        .map(|u| {
            let dynamic = dynamic_data(&tp, u);
            let tem_data = render_for_user(&tp, &template, &dynamic);
            UserData {
                gid: u.gid,
                dynamic_data: dynamic,
                tem_data,
            }
        })
        .collect();
    let report = state
        .dispatcher
        .test_send(&tp, data, random_order_no())
        .await;
    tracing::info!(project = who.project_id, touchpoint = %tp.id, status = ?report.get("httpStatus"), "test send");
    Ok(Json(report))
}

/// `GET /v1/touchpoints/{id}/params/{identifier}/options`: what an enum parameter offers.
pub async fn param_options(
    State(state): State<AppState>,
    who: Principal,
    PathParams((id, identifier)): PathParams<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let tp = state.touchpoints.get(who.project_id, &id).await?;
    let allowed = match &who.role {
        crate::auth::Role::Admin => true,
        crate::auth::Role::Operator { .. } => {
            tp.enabled && tp.space_ids.iter().any(|s| who.may_read_space(s))
        }
        crate::auth::Role::Campaign => false,
    };
    if !allowed {
        return Err(ApiError::forbidden(
            "only admins and operators of a space the touchpoint is authorized for may read its options",
        ));
    }
    let param = tp
        .spec
        .template_params
        .iter()
        .find(|p| p.identifier == identifier)
        .ok_or_else(|| {
            ApiError::not_found(format!("the touchpoint has no parameter {identifier:?}"))
        })?;
    match state.dispatcher.options().options(&tp, param).await {
        Ok(view) => Ok(Json(json!(view))),
        Err(e @ touchpoint_dispatcher::options::OptionsError::NotEnum(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_enum",
            e.to_string(),
        )),
        Err(e @ touchpoint_dispatcher::options::OptionsError::Upstream(_)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "options_unavailable",
            e.to_string(),
        )),
    }
}
