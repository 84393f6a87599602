//! Dispatch intake, delivery reports, enum options and test send.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use touchpoint::delivery::StatsScope;
use touchpoint::dispatch::{
    Dispatch, DispatchUser, dynamic_data, read_dispatch, render_for_user, resolve_template,
};
use touchpoint::ids::random_order_no;
use touchpoint::ids::{DispatchId, OrderNo, TouchpointId};
use touchpoint::protocol::UserData;
use touchpoint::reporting::{
    BatchReport, DispatchReport, StatsReport, WindowsReport, stats_hours, window_touchpoints,
};
use touchpoint_receiver::TestSendReport;
use touchpoint_receiver::options::{OptionsError, OptionsView};

use crate::AppState;
use crate::auth::{Admin, CampaignSystem, Principal, Role};
use crate::contract::*;
use crate::error::ApiError;
use crate::extract::{JsonDocument, JsonInput, PathParams, QueryParams};

/// Hand in a dispatch: stored durably and queued; the same `dispatchId` again queues nothing.
#[utoipa::path(post, path = "/v1/dispatches", tag = "dispatches",
    request_body = DispatchInput,
    security(("bearer" = ["admin", "campaign"])),
    responses(
        (status = 202, description = "Queued", body = DispatchAccepted,
            links(("GetDispatch" = (operation_id = "get_dispatch", parameters(("dispatchId" = "$response.body#/dispatchId")))))),
        (status = 200, description = "The dispatchId was handed in before; nothing queued", body = DispatchAccepted,
            links(("GetDispatch" = (operation_id = "get_dispatch", parameters(("dispatchId" = "$response.body#/dispatchId")))))),
        (status = 413, description = "The body is larger than 4 MiB (4,194,304 bytes)", body = ErrorBody),
        (status = 422, description = "The dispatch cannot be read (its problems listed)", body = ErrorBody),
    ))]
pub async fn submit_dispatch(
    State(state): State<AppState>,
    CampaignSystem(who): CampaignSystem,
    JsonDocument { text, value }: JsonDocument,
) -> Result<Response, ApiError> {
    let (dispatch, problems) = read_dispatch(&value)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "malformed_dispatch", m.0))?;
    // What the queue would have to fail every user for is refused here, where someone can be
    // told: the campaign system fixes the dispatch instead of finding failed users later.
    if !problems.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_dispatch",
            problems.join("; "),
        ));
    }
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
            // As the producer wrote it, without the white space between tokens (which would
            // count against the queue's message size).
            touchpoint::json::minify(&text),
            state.clock.now_ms(),
        )
        .await
        .map_err(touchpoint::DomainError::from)?;
    if queued {
        tracing::info!(project = who.project_id, dispatch = %dispatch.dispatch_id, users = dispatch.users.len(), "dispatch queued");
    }
    let (status, intake) = if queued {
        (StatusCode::ACCEPTED, Intake::Queued)
    } else {
        (StatusCode::OK, Intake::Duplicate)
    };
    Ok((
        status,
        Json(DispatchAccepted {
            dispatch_id: dispatch.dispatch_id,
            status: intake,
        }),
    )
        .into_response())
}

/// A dispatch's state, counts and batches.
#[utoipa::path(get, path = "/v1/dispatches/{dispatchId}", tag = "dispatches",
    params(("dispatchId" = String, Path, description = "the producer's id of the dispatch (URL-encoded)"), DispatchQuery),
    security(("bearer" = ["admin", "campaign"])),
    responses(
        (status = 200, description = "The dispatch", body = DispatchReport),
        (status = 404, description = "No such dispatch in the caller's project", body = ErrorBody),
        (status = 422, description = "batchesFrom is not a batch index", body = ErrorBody),
    ))]
pub async fn get_dispatch(
    State(state): State<AppState>,
    CampaignSystem(who): CampaignSystem,
    PathParams(dispatch_id): PathParams<DispatchId>,
    QueryParams(query): QueryParams<DispatchQuery>,
) -> Result<Json<DispatchReport>, ApiError> {
    let from = touchpoint::reporting::batches_from(query.batches_from.as_deref())?;
    Ok(Json(
        state
            .reporting
            .dispatch(who.project_id, &dispatch_id, from)
            .await?,
    ))
}

/// A batch: per-user results, pending users, attempts, polls, last HTTP status and error,
/// response excerpt.
#[utoipa::path(get, path = "/v1/batches/{orderNo}", tag = "dispatches",
    params(("orderNo" = String, Path, description = "the batch's orderNo")),
    security(("bearer" = ["admin", "campaign"])),
    responses(
        (status = 200, description = "The batch", body = BatchReport),
        (status = 404, description = "No such batch in the caller's project", body = ErrorBody),
    ))]
pub async fn get_batch(
    State(state): State<AppState>,
    CampaignSystem(who): CampaignSystem,
    PathParams(order_no): PathParams<OrderNo>,
) -> Result<Json<BatchReport>, ApiError> {
    Ok(Json(
        state.reporting.batch(who.project_id, &order_no).await?,
    ))
}

/// Users sent, succeeded, failed and pending for a campaign; the last `hours` hour by hour and
/// their most frequent failure reasons.
#[utoipa::path(get, path = "/v1/campaigns/{campaignId}/stats", tag = "campaigns",
    params(("campaignId" = String, Path, description = "the campaign"), StatsQuery),
    security(("bearer" = ["admin", "campaign"])),
    responses(
        (status = 200, description = "The statistics", body = StatsReport),
        (status = 422, description = "hours is out of range", body = ErrorBody),
    ))]
pub async fn campaign_stats(
    State(state): State<AppState>,
    CampaignSystem(who): CampaignSystem,
    PathParams(campaign_id): PathParams<String>,
    QueryParams(query): QueryParams<StatsQuery>,
) -> Result<Json<StatsReport>, ApiError> {
    let hours = stats_hours(query.hours.as_deref())?;
    let report = state
        .reporting
        .stats(who.project_id, StatsScope::Campaign, &campaign_id, hours)
        .await?;
    Ok(Json(report))
}

/// Users sent, succeeded, failed and pending through the touchpoint; the last `hours` hour by
/// hour and their most frequent failure reasons.
#[utoipa::path(get, path = "/v1/touchpoints/{id}/stats", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id"), StatsQuery),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The statistics", body = StatsReport),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 422, description = "hours is out of range", body = ErrorBody),
    ))]
pub async fn touchpoint_stats(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    QueryParams(query): QueryParams<StatsQuery>,
) -> Result<Json<StatsReport>, ApiError> {
    let hours = stats_hours(query.hours.as_deref())?;
    state.touchpoints.get(who.project_id, &id).await?;
    let report = state
        .reporting
        .stats(who.project_id, StatsScope::Touchpoint, &id, hours)
        .await?;
    Ok(Json(report))
}

/// Several touchpoints' success rates over the same window, in one request (the console's
/// listing asks for a page at a time).
#[utoipa::path(get, path = "/v1/stats/touchpoints", tag = "touchpoints",
    params(WindowsQuery),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Each touchpoint's users that became final in the window", body = WindowsReport),
        (status = 422, description = "ids or hours is out of range", body = ErrorBody),
    ))]
pub async fn touchpoint_windows(
    State(state): State<AppState>,
    Admin(who): Admin,
    QueryParams(query): QueryParams<WindowsQuery>,
) -> Result<Json<WindowsReport>, ApiError> {
    let hours = stats_hours(query.hours.as_deref())?;
    let ids = window_touchpoints(&query.ids)?;
    Ok(Json(
        state.reporting.windows(who.project_id, &ids, hours).await?,
    ))
}

/// Test send: one real signed request, enabled or not, not counted.
#[utoipa::path(post, path = "/v1/touchpoints/{id}/test", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id")),
    request_body = TestSendInput,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "What was sent and how the receiver answered (also when it failed)", body = TestSendReport),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 422, description = "Invalid test users or template values", body = ErrorBody),
    ))]
pub async fn test_send(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    JsonInput(body): JsonInput<TestSendInput>,
) -> Result<Json<TestSendReport>, ApiError> {
    if body.users.is_empty() || body.users.len() > MAX_TEST_USERS {
        return Err(ApiError::validation(vec![touchpoint::FieldError::new(
            "users",
            format!("1 to {MAX_TEST_USERS} test users required"),
        )]));
    }
    if let Some(i) = body.users.iter().position(|u| u.0.gid < 0) {
        return Err(ApiError::validation(vec![touchpoint::FieldError::new(
            format!("users[{i}].gid"),
            "must not be negative",
        )]));
    }
    let tp = state.touchpoints.get(who.project_id, &id).await?;
    let invalid = |m: String| ApiError::validation(vec![touchpoint::FieldError::new("", m)]);
    let users: Vec<DispatchUser> = body
        .users
        .into_iter()
        .map(|ObjectOnly(u)| DispatchUser {
            gid: u.gid,
            attributes: u.attributes.unwrap_or_default(),
        })
        .collect();
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
        template_values: body.template_values.unwrap_or_default(),
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
    let report = state.test_send.send(&tp, data, random_order_no()).await;
    tracing::info!(project = who.project_id, touchpoint = %tp.id, status = ?report.http_status, "test send");
    Ok(Json(report))
}

/// An enum parameter's options (manual, or from its options API, cached 5 minutes).
#[utoipa::path(get, path = "/v1/touchpoints/{id}/params/{identifier}/options", tag = "operators",
    params(
        ("id" = String, Path, description = "the touchpoint's id"),
        ("identifier" = String, Path, description = "the enum parameter's identifier"),
    ),
    security(("bearer" = ["admin", "operator"])),
    responses(
        (status = 200, description = "The options", body = OptionsView),
        (status = 404, description = "No such touchpoint or parameter", body = ErrorBody),
        (status = 422, description = "The parameter is not an enum", body = ErrorBody),
        (status = 502, description = "The options API failed and nothing is cached", body = ErrorBody),
    ))]
pub async fn param_options(
    State(state): State<AppState>,
    who: Principal,
    PathParams((id, identifier)): PathParams<(TouchpointId, String)>,
) -> Result<Json<OptionsView>, ApiError> {
    let tp = state.touchpoints.get(who.project_id, &id).await?;
    let allowed = match &who.role {
        Role::Admin => true,
        Role::Operator { .. } => tp.enabled && tp.space_ids.iter().any(|s| who.may_read_space(s)),
        Role::Campaign => false,
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
    match state.options.options(&tp, param).await {
        Ok(view) => Ok(Json(view)),
        Err(e @ OptionsError::NotEnum(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_enum",
            e.to_string(),
        )),
        Err(e @ OptionsError::Upstream(_)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "options_unavailable",
            e.to_string(),
        )),
    }
}
