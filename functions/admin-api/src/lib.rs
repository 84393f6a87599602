//! The admin HTTP API as one axum [`Router`]: served by `axum::serve` in the local binary and
//! by `lambda_http` on AWS, so both answer exactly alike.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use touchpoint::Touchpoints;
use touchpoint::clock::Clock;
use touchpoint::delivery::{DeliveryStore, DispatchIntake};
use touchpoint_dispatcher::Dispatcher;

pub mod auth;
mod console;
mod delivery_routes;
pub mod error;
pub mod extract;
pub mod openapi;
mod routes;

pub use auth::{ApiKeys, Authenticator, Principal, Role};
pub use error::ApiError;

/// What every handler borrows: the use cases and how callers are identified.
#[derive(Clone)]
pub struct AppState {
    pub touchpoints: Touchpoints,
    pub auth: Arc<dyn Authenticator>,
    pub delivery: Arc<dyn DeliveryStore>,
    pub intake: Arc<dyn DispatchIntake>,
    pub dispatcher: Arc<Dispatcher>,
    pub clock: Arc<dyn Clock>,
}

/// The whole admin API.
pub fn router(state: AppState) -> Router {
    use routes::*;
    Router::new()
        .route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi))
        .route(
            "/v1/touchpoints",
            post(create_touchpoint).get(list_touchpoints),
        )
        .route(
            "/v1/touchpoints/{id}",
            get(get_touchpoint)
                .put(replace_touchpoint)
                .delete(delete_touchpoint),
        )
        .route("/v1/touchpoints/{id}/enable", post(enable_touchpoint))
        .route("/v1/touchpoints/{id}/disable", post(disable_touchpoint))
        .route("/v1/touchpoints/{id}/spaces", put(set_spaces))
        .route("/v1/touchpoints/{id}/campaigns", get(list_campaigns))
        .route(
            "/v1/touchpoints/{id}/campaigns/{campaignId}",
            put(put_campaign).delete(delete_campaign),
        )
        .route("/v1/spaces/{spaceId}/touchpoints", get(space_touchpoints))
        .route(
            "/v1/touchpoints/{id}/test",
            post(delivery_routes::test_send),
        )
        .route(
            "/v1/touchpoints/{id}/stats",
            get(delivery_routes::touchpoint_stats),
        )
        .route(
            "/v1/touchpoints/{id}/params/{identifier}/options",
            get(delivery_routes::param_options),
        )
        .route("/v1/dispatches", post(delivery_routes::submit_dispatch))
        .route(
            "/v1/dispatches/{dispatchId}",
            get(delivery_routes::get_dispatch),
        )
        .route("/v1/batches/{orderNo}", get(delivery_routes::get_batch))
        .route(
            "/v1/campaigns/{campaignId}/stats",
            get(delivery_routes::campaign_stats),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

/// One log line per request: method, route (not the raw path, which may carry ids), status,
/// latency. Headers and bodies are never logged: they carry keys and tokens.
async fn access_log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    tracing::info!(
        %method,
        route,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}
