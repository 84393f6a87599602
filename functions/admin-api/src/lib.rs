//! The admin HTTP API as one axum [`Router`]: served by `axum::serve` in the local binary and
//! by `lambda_http` on AWS, so both answer exactly alike.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use touchpoint::Touchpoints;
use touchpoint::clock::Clock;
use touchpoint::delivery::DispatchIntake;
use touchpoint::reporting::Reporting;
use touchpoint_receiver::{EnumOptions, TestSend};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod auth;
mod console;
pub mod contract;
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
    pub reporting: Reporting,
    pub auth: Arc<dyn Authenticator>,
    pub intake: Arc<dyn DispatchIntake>,
    pub test_send: TestSend,
    /// The enum-options cache (the dispatcher validates with the same one).
    pub options: Arc<EnumOptions>,
    pub clock: Arc<dyn Clock>,
    /// The receivers' limits and health (the dispatcher's): a touchpoint's `health` comes
    /// from them, and a resume closes its circuit breaker there.
    pub limits: Arc<touchpoint_receiver::limits::ReceiverLimits>,
}

/// The routes with their OpenAPI annotations, and the document they make.
fn documented() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use delivery_routes::*;
    use routes::*;
    let (router, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(create_touchpoint, list_touchpoints))
        .routes(routes!(
            get_touchpoint,
            replace_touchpoint,
            delete_touchpoint
        ))
        .routes(routes!(enable_touchpoint))
        .routes(routes!(disable_touchpoint))
        .routes(routes!(set_spaces))
        .routes(routes!(rotate_token))
        .routes(routes!(pause_touchpoint))
        .routes(routes!(resume_touchpoint))
        .routes(routes!(audit_log))
        .routes(routes!(
            get_notifications,
            put_notifications,
            delete_notifications
        ))
        .routes(routes!(list_campaigns))
        .routes(routes!(put_campaign, delete_campaign))
        .routes(routes!(space_touchpoints))
        .routes(routes!(test_send))
        .routes(routes!(touchpoint_stats))
        .routes(routes!(touchpoint_windows))
        .routes(routes!(param_options))
        .routes(routes!(submit_dispatch))
        .routes(routes!(get_dispatch))
        .routes(routes!(get_batch))
        .routes(routes!(campaign_stats))
        .split_for_parts();
    (router, openapi::finish(doc))
}

/// The whole admin API.
pub fn router(state: AppState) -> Router {
    let (api, doc) = documented();
    // Serialized once: the document is the same for every request.
    let doc = axum::body::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
    api.route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .route(
            "/v1/openapi.json",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    doc,
                )
            }),
        )
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(extract::MAX_DISPATCH_BYTES))
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
