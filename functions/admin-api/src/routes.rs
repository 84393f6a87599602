//! The touchpoint lifecycle's handlers: read the request, call the use case, answer with the
//! contract's types. Each one's `#[utoipa::path]` is its entry in the OpenAPI document; the
//! statuses every authenticated route can answer (400, 401, 403, 413, 415, 500) are added there
//! by [`crate::openapi`].

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use touchpoint::ListParams;
use touchpoint::ids::TouchpointId;
use touchpoint::notify::NotificationSettings;
use touchpoint::view::{CampaignRefView, TouchpointView};

use crate::AppState;
use crate::auth::{Admin, CampaignSystem, Principal};
use crate::contract::*;
use crate::error::ApiError;
use crate::extract::{JsonBody, JsonInput, PathParams, QueryParams};

#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "The service is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// A touchpoint as the API answers it, with its receiver's health.
async fn touchpoint_json<'a>(
    state: &AppState,
    tp: &'a touchpoint::Touchpoint,
) -> Json<TouchpointView<'a>> {
    Json(TouchpointView::from(tp).with_health(state.limits.health(tp).await))
}

/// Register a touchpoint (enabled, authorized for no space).
#[utoipa::path(post, path = "/v1/touchpoints", tag = "touchpoints",
    request_body = TouchpointInput,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "Registered", body = TouchpointView,
            headers(("Location" = String, description = "the touchpoint's URL")),
            links(
                ("GetTouchpoint" = (operation_id = "get_touchpoint", parameters(("id" = "$response.body#/id")))),
                ("ReplaceTouchpoint" = (operation_id = "replace_touchpoint", parameters(("id" = "$response.body#/id")))),
                ("DeleteTouchpoint" = (operation_id = "delete_touchpoint", parameters(("id" = "$response.body#/id")))),
                ("EnableTouchpoint" = (operation_id = "enable_touchpoint", parameters(("id" = "$response.body#/id")))),
                ("DisableTouchpoint" = (operation_id = "disable_touchpoint", parameters(("id" = "$response.body#/id")))),
                ("SetSpaces" = (operation_id = "set_spaces", parameters(("id" = "$response.body#/id")))),
                ("ListCampaigns" = (operation_id = "list_campaigns", parameters(("id" = "$response.body#/id")))),
                ("TestSend" = (operation_id = "test_send", parameters(("id" = "$response.body#/id")))),
                ("TouchpointStats" = (operation_id = "touchpoint_stats", parameters(("id" = "$response.body#/id"))))
            )),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 422, description = "Invalid fields, each at its JSON path", body = ErrorBody),
    ))]
pub async fn create_touchpoint(
    State(state): State<AppState>,
    Admin(who): Admin,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let tp = state
        .touchpoints
        .by(who.actor())
        .create(who.project_id, &body)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, "touchpoint created");
    let location = format!("/v1/touchpoints/{}", tp.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        touchpoint_json(&state, &tp).await,
    )
        .into_response())
}

/// List touchpoints, filtered and paged.
#[utoipa::path(get, path = "/v1/touchpoints", tag = "touchpoints",
    params(ListQuery),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "A page", body = TouchpointPage),
        (status = 422, description = "A query parameter is invalid", body = ErrorBody),
    ))]
pub async fn list_touchpoints(
    State(state): State<AppState>,
    Admin(who): Admin,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    let params = ListParams {
        limit: query.limit,
        cursor: query.cursor,
        kind: query.kind,
        enabled: query.enabled,
        q: query.q,
    };
    let page = state.touchpoints.list(who.project_id, &params).await?;
    // Each one's health: one read of the shared store apiece on AWS, side by side.
    let health =
        futures_util::future::join_all(page.items.iter().map(|tp| state.limits.health(tp))).await;
    Ok(Json(TouchpointPage {
        items: page
            .items
            .iter()
            .zip(health)
            .map(|(tp, h)| TouchpointView::from(tp).with_health(h))
            .collect(),
        next_cursor: page.next_cursor.as_deref(),
    })
    .into_response())
}

/// Read a touchpoint.
#[utoipa::path(get, path = "/v1/touchpoints/{id}", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The touchpoint", body = TouchpointView),
        (status = 404, description = "No such touchpoint in the caller's project", body = ErrorBody),
    ))]
pub async fn get_touchpoint(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
) -> Result<Response, ApiError> {
    let tp = state.touchpoints.get(who.project_id, &id).await?;
    Ok(touchpoint_json(&state, &tp).await.into_response())
}

/// Replace the editable fields of a disabled touchpoint.
#[utoipa::path(put, path = "/v1/touchpoints/{id}", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id")),
    request_body = TouchpointReplace,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Replaced", body = TouchpointView),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 409, description = "Enabled, the name is taken, or the version is not the current one", body = ErrorBody),
        (status = 422, description = "Invalid fields, each at its JSON path", body = ErrorBody),
    ))]
pub async fn replace_touchpoint(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let tp = state
        .touchpoints
        .by(who.actor())
        .update(who.project_id, &id, &body)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, version = tp.version, "touchpoint edited");
    Ok(touchpoint_json(&state, &tp).await.into_response())
}

/// Delete a disabled touchpoint.
#[utoipa::path(delete, path = "/v1/touchpoints/{id}", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id"), DeleteQuery),
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 409, description = "Enabled, or the version is not the current one", body = ErrorBody),
        (status = 422, description = "The version is not a positive integer", body = ErrorBody),
    ))]
pub async fn delete_touchpoint(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    QueryParams(query): QueryParams<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let version = match query.version.as_deref() {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
            ApiError::validation(vec![touchpoint::FieldError::new(
                "version",
                "must be a positive integer",
            )])
        })?),
    };
    state
        .touchpoints
        .by(who.actor())
        .delete(who.project_id, &id, version)
        .await?;
    tracing::info!(project = who.project_id, touchpoint = %id, "touchpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Enable.
#[utoipa::path(post, path = "/v1/touchpoints/{id}/enable", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id")),
    request_body(content = Option<VersionInput>, description = "optional"),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Enabled", body = TouchpointView),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 409, description = "The version is not the current one", body = ErrorBody),
        (status = 422, description = "The body is not {} or {\"version\": n}", body = ErrorBody),
    ))]
pub async fn enable_touchpoint(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    JsonInput(body): JsonInput<Option<VersionInput>>,
) -> Result<Response, ApiError> {
    let version = body.unwrap_or_default().version;
    let tp = state
        .touchpoints
        .by(who.actor())
        .enable(who.project_id, &id, version)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, "touchpoint enabled");
    Ok(touchpoint_json(&state, &tp).await.into_response())
}

/// Disable, unless active campaigns use it.
#[utoipa::path(post, path = "/v1/touchpoints/{id}/disable", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id")),
    request_body(content = Option<VersionInput>, description = "optional"),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Disabled", body = TouchpointView),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 409, description = "Active campaigns use it (listed in `campaigns`), or the version is not the current one", body = ErrorBody),
        (status = 422, description = "The body is not {} or {\"version\": n}", body = ErrorBody),
    ))]
pub async fn disable_touchpoint(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    JsonInput(body): JsonInput<Option<VersionInput>>,
) -> Result<Response, ApiError> {
    let version = body.unwrap_or_default().version;
    let tp = state
        .touchpoints
        .by(who.actor())
        .disable(who.project_id, &id, version)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, "touchpoint disabled");
    Ok(touchpoint_json(&state, &tp).await.into_response())
}

/// Replace the authorized spaces.
#[utoipa::path(put, path = "/v1/touchpoints/{id}/spaces", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id")),
    request_body = SpacesInput,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Authorized", body = TouchpointView),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 409, description = "The version is not the current one", body = ErrorBody),
        (status = 422, description = "Invalid space ids", body = ErrorBody),
    ))]
pub async fn set_spaces(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    JsonInput(body): JsonInput<SpacesInput>,
) -> Result<Response, ApiError> {
    let tp = state
        .touchpoints
        .by(who.actor())
        .set_spaces(who.project_id, &id, body.space_ids, body.version)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, spaces = tp.space_ids.len(), "spaces authorized");
    Ok(touchpoint_json(&state, &tp).await.into_response())
}

/// Replace the token, also while enabled: during the overlap `webhook-signature` carries a
/// signature with the new token and one with the old, and `sign` keeps the old token; from its
/// end, only the new one is used.
#[utoipa::path(post, path = "/v1/touchpoints/{id}/token/rotate", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id")),
    request_body = RotateInput,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Rotated (`tokenOverlapUntil` says when the old token stops)", body = TouchpointView),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 409, description = "The version is not the current one", body = ErrorBody),
        (status = 422, description = "Invalid token, overlap or version", body = ErrorBody),
    ))]
pub async fn rotate_token(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let tp = state
        .touchpoints
        .by(who.actor())
        .rotate_token(who.project_id, &id, &body)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, "token rotated");
    Ok(touchpoint_json(&state, &tp).await.into_response())
}

/// Pause by hand, enabled or not: no request goes to the receiver until it is resumed; its
/// batches wait without using up their attempts and without a deadline (receipt deadlines
/// still apply).
#[utoipa::path(post, path = "/v1/touchpoints/{id}/pause", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id")),
    request_body(content = Option<PauseInput>, description = "optional"),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Paused (`health.manual` is true)", body = TouchpointView),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 409, description = "The version is not the current one", body = ErrorBody),
        (status = 422, description = "Invalid reason or version", body = ErrorBody),
    ))]
pub async fn pause_touchpoint(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let tp = state
        .touchpoints
        .by(who.actor())
        .pause(who.project_id, &id, &body)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, "touchpoint paused by hand");
    Ok(touchpoint_json(&state, &tp).await.into_response())
}

/// Resume: ends an admin's pause and closes the circuit breaker; requests go again at once.
#[utoipa::path(post, path = "/v1/touchpoints/{id}/resume", tag = "touchpoints",
    params(("id" = String, Path, description = "the touchpoint's id")),
    request_body(content = Option<VersionInput>, description = "optional"),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Resumed", body = TouchpointView),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 409, description = "The version is not the current one", body = ErrorBody),
        (status = 422, description = "The body is not {} or {\"version\": n}", body = ErrorBody),
    ))]
pub async fn resume_touchpoint(
    State(state): State<AppState>,
    Admin(who): Admin,
    PathParams(id): PathParams<TouchpointId>,
    JsonInput(body): JsonInput<Option<VersionInput>>,
) -> Result<Response, ApiError> {
    let version = body.unwrap_or_default().version;
    let before = state.touchpoints.get(who.project_id, &id).await?;
    let breaker_open = state
        .limits
        .breaker_now(&before)
        .await
        .map_err(touchpoint::DomainError::from)?
        .map(|b| b.since);
    let tp = state
        .touchpoints
        .by(who.actor())
        .resume(who.project_id, &id, version, breaker_open)
        .await?;
    state
        .limits
        .close_breaker(&tp)
        .await
        .map_err(touchpoint::DomainError::from)?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, "touchpoint resumed by hand");
    Ok(touchpoint_json(&state, &tp).await.into_response())
}

/// The project's notification settings (never the token).
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The settings", body = NotificationSettings),
        (status = 404, description = "The project has none", body = ErrorBody),
    ))]
pub async fn get_notifications(
    State(state): State<AppState>,
    Admin(who): Admin,
) -> Result<Response, ApiError> {
    match state
        .touchpoints
        .notification_settings(who.project_id)
        .await?
    {
        Some(settings) => Ok(Json(settings).into_response()),
        None => Err(ApiError::not_found(
            "the project has no notification settings",
        )),
    }
}

/// Replace the project's notification settings: `touchpoint.paused` and `touchpoint.resumed`
/// (the circuit breaker's and an admin's), `dispatch.completed`, `batch.retries_exhausted` and
/// `receipt.timeout` go to `url`, signed with `token`, retried for about two hours.
#[utoipa::path(put, path = "/v1/notifications", tag = "notifications",
    request_body = NotificationSettingsInput,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The settings now", body = NotificationSettings),
        (status = 422, description = "Invalid URL, token or events", body = ErrorBody),
    ))]
pub async fn put_notifications(
    State(state): State<AppState>,
    Admin(who): Admin,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let settings = state
        .touchpoints
        .by(who.actor())
        .put_notification_settings(who.project_id, &body)
        .await?;
    tracing::info!(project = who.project_id, "notification settings replaced");
    Ok(Json(settings).into_response())
}

/// Remove the project's notification settings: nothing more is sent.
#[utoipa::path(delete, path = "/v1/notifications", tag = "notifications",
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "The project has none", body = ErrorBody),
    ))]
pub async fn delete_notifications(
    State(state): State<AppState>,
    Admin(who): Admin,
) -> Result<Response, ApiError> {
    if state
        .touchpoints
        .by(who.actor())
        .delete_notification_settings(who.project_id)
        .await?
    {
        tracing::info!(project = who.project_id, "notification settings removed");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(
            "the project has no notification settings",
        ))
    }
}

/// The audit log: every admin mutation with its actor, time and changed fields, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = 422, description = "A query parameter is invalid", body = ErrorBody),
    ))]
pub async fn audit_log(
    State(state): State<AppState>,
    Admin(who): Admin,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<Response, ApiError> {
    let params = touchpoint::service::AuditParams {
        touchpoint_id: query.touchpoint_id,
        since: query.since,
        limit: query.limit,
        cursor: query.cursor,
    };
    let page = state.touchpoints.audit_log(who.project_id, &params).await?;
    Ok(Json(AuditPage {
        items: page.items.iter().map(Into::into).collect(),
        next_cursor: page.next_cursor.as_deref(),
    })
    .into_response())
}

/// What operators of a space may pick, with each parameter's input.
#[utoipa::path(get, path = "/v1/spaces/{spaceId}/touchpoints", tag = "operators",
    params(SpacePath),
    security(("bearer" = ["admin", "operator"])),
    responses(
        (status = 200, description = "Enabled touchpoints authorized for the space", body = SpaceTouchpoints),
        (status = 422, description = "Not a space id", body = ErrorBody),
    ))]
pub async fn space_touchpoints(
    State(state): State<AppState>,
    who: Principal,
    PathParams(space): PathParams<String>,
) -> Result<Response, ApiError> {
    if !who.may_read_space(&space) {
        return Err(ApiError::forbidden(format!(
            "the {} role may not read space {space:?}",
            who.role.name()
        )));
    }
    let touchpoints = state.touchpoints.for_space(who.project_id, &space).await?;
    Ok(Json(SpaceTouchpoints {
        space_id: &space,
        items: touchpoints.iter().map(Into::into).collect(),
    })
    .into_response())
}

/// Campaigns that reference the touchpoint.
#[utoipa::path(get, path = "/v1/touchpoints/{id}/campaigns", tag = "campaigns",
    params(("id" = String, Path, description = "the touchpoint's id")),
    security(("bearer" = ["admin", "campaign"])),
    responses(
        (status = 200, description = "The references", body = CampaignRefList),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
    ))]
pub async fn list_campaigns(
    State(state): State<AppState>,
    CampaignSystem(who): CampaignSystem,
    PathParams(id): PathParams<TouchpointId>,
) -> Result<Response, ApiError> {
    let refs = state.touchpoints.campaigns(who.project_id, &id).await?;
    Ok(Json(CampaignRefList {
        items: refs.iter().map(Into::into).collect(),
    })
    .into_response())
}

/// Record a campaign's reference and state.
#[utoipa::path(put, path = "/v1/touchpoints/{id}/campaigns/{campaignId}", tag = "campaigns",
    params(CampaignRefPath),
    request_body = CampaignRefInput,
    security(("bearer" = ["admin", "campaign"])),
    responses(
        (status = 200, description = "Recorded", body = CampaignRefView),
        (status = 404, description = "No such touchpoint", body = ErrorBody),
        (status = 409, description = "A live campaign cannot use a disabled touchpoint", body = ErrorBody),
        (status = 422, description = "Invalid campaign id, state or name", body = ErrorBody),
    ))]
pub async fn put_campaign(
    State(state): State<AppState>,
    CampaignSystem(who): CampaignSystem,
    PathParams((id, campaign_id)): PathParams<(TouchpointId, String)>,
    JsonInput(body): JsonInput<CampaignRefInput>,
) -> Result<Response, ApiError> {
    let campaign = state
        .touchpoints
        .by(who.actor())
        .put_campaign(
            who.project_id,
            &id,
            &campaign_id,
            body.state,
            body.name.as_deref(),
        )
        .await?;
    Ok(Json(CampaignRefView::from(&campaign)).into_response())
}

/// Remove a campaign's reference.
#[utoipa::path(delete, path = "/v1/touchpoints/{id}/campaigns/{campaignId}", tag = "campaigns",
    params(CampaignRefPath),
    security(("bearer" = ["admin", "campaign"])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such touchpoint or reference", body = ErrorBody),
    ))]
pub async fn delete_campaign(
    State(state): State<AppState>,
    CampaignSystem(who): CampaignSystem,
    PathParams((id, campaign_id)): PathParams<(TouchpointId, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .touchpoints
        .by(who.actor())
        .delete_campaign(who.project_id, &id, &campaign_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

pub async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
