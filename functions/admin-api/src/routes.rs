//! The handlers: parse, check the caller's role, call the use case, shape the response.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use touchpoint::ListParams;
use touchpoint::service::parse_version;
use touchpoint::view::{CampaignRefView, TouchpointView, operator_view};

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParams, QueryParams};

const ADMIN: &[&str] = &["admin"];
const CAMPAIGN_SYSTEM: &[&str] = &["admin", "campaign"];

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

pub async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

fn touchpoint_json(tp: &touchpoint::Touchpoint) -> Json<TouchpointView<'_>> {
    Json(TouchpointView::from(tp))
}

pub async fn create_touchpoint(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    who.require(ADMIN)?;
    let tp = state.touchpoints.create(who.project_id, &body).await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, "touchpoint created");
    let location = format!("/v1/touchpoints/{}", tp.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        touchpoint_json(&tp),
    )
        .into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageView<'a> {
    items: Vec<TouchpointView<'a>>,
    next_cursor: Option<&'a str>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
    kind: Option<String>,
    enabled: Option<String>,
    q: Option<String>,
}

pub async fn list_touchpoints(
    State(state): State<AppState>,
    who: Principal,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    who.require(ADMIN)?;
    let params = ListParams {
        limit: query.limit,
        cursor: query.cursor,
        kind: query.kind,
        enabled: query.enabled,
        q: query.q,
    };
    let page = state.touchpoints.list(who.project_id, &params).await?;
    Ok(Json(PageView {
        items: page.items.iter().map(Into::into).collect(),
        next_cursor: page.next_cursor.as_deref(),
    })
    .into_response())
}

pub async fn get_touchpoint(
    State(state): State<AppState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    who.require(ADMIN)?;
    let tp = state.touchpoints.get(who.project_id, &id).await?;
    Ok(touchpoint_json(&tp).into_response())
}

pub async fn replace_touchpoint(
    State(state): State<AppState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    who.require(ADMIN)?;
    let tp = state.touchpoints.update(who.project_id, &id, &body).await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, version = tp.version, "touchpoint edited");
    Ok(touchpoint_json(&tp).into_response())
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    version: Option<String>,
}

pub async fn delete_touchpoint(
    State(state): State<AppState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    QueryParams(query): QueryParams<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    who.require(ADMIN)?;
    let version = match query.version.as_deref() {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::validation(vec![touchpoint::FieldError::new(
                "version",
                "must be a positive integer",
            )])
        })?),
    };
    state
        .touchpoints
        .delete(who.project_id, &id, version)
        .await?;
    tracing::info!(project = who.project_id, touchpoint = %id, "touchpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn enable_touchpoint(
    State(state): State<AppState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    who.require(ADMIN)?;
    let version = parse_version(&body)?;
    let tp = state
        .touchpoints
        .enable(who.project_id, &id, version)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, "touchpoint enabled");
    Ok(touchpoint_json(&tp).into_response())
}

pub async fn disable_touchpoint(
    State(state): State<AppState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    who.require(ADMIN)?;
    let version = parse_version(&body)?;
    let tp = state
        .touchpoints
        .disable(who.project_id, &id, version)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, "touchpoint disabled");
    Ok(touchpoint_json(&tp).into_response())
}

pub async fn set_spaces(
    State(state): State<AppState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    who.require(ADMIN)?;
    let tp = state
        .touchpoints
        .set_spaces(who.project_id, &id, &body)
        .await?;
    tracing::info!(project = tp.project_id, touchpoint = %tp.id, spaces = tp.space_ids.len(), "spaces authorized");
    Ok(touchpoint_json(&tp).into_response())
}

pub async fn space_touchpoints(
    State(state): State<AppState>,
    who: Principal,
    PathParams(space): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    if !who.may_read_space(&space) {
        return Err(ApiError::forbidden(format!(
            "the {} role may not read space {space:?}",
            who.role.name()
        )));
    }
    let items: Vec<Value> = state
        .touchpoints
        .for_space(who.project_id, &space)
        .await?
        .iter()
        .map(operator_view)
        .collect();
    Ok(Json(json!({"spaceId": space, "items": items})))
}

pub async fn list_campaigns(
    State(state): State<AppState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(CAMPAIGN_SYSTEM)?;
    let refs = state.touchpoints.campaigns(who.project_id, &id).await?;
    let items: Vec<CampaignRefView<'_>> = refs.iter().map(Into::into).collect();
    Ok(Json(json!({"items": items})))
}

pub async fn put_campaign(
    State(state): State<AppState>,
    who: Principal,
    PathParams((id, campaign_id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    who.require(CAMPAIGN_SYSTEM)?;
    let campaign = state
        .touchpoints
        .put_campaign(who.project_id, &id, &campaign_id, &body)
        .await?;
    Ok(Json(json!(CampaignRefView::from(&campaign))))
}

pub async fn delete_campaign(
    State(state): State<AppState>,
    who: Principal,
    PathParams((id, campaign_id)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    who.require(CAMPAIGN_SYSTEM)?;
    state
        .touchpoints
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
