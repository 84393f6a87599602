//! The admin console: one page and its script and style, embedded in the binary and served
//! without authentication (they hold no data; every call the page makes carries the key the
//! user signed in with). Strict headers: the page runs only its own script, talks only to this
//! origin, and may not be framed.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

const INDEX: &str = include_str!("../console/index.html");
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The page's files by name: (name, content type, text), read from `console/` at build time.
macro_rules! assets {
    ($($file:literal: $content_type:expr),* $(,)?) => {
        &[$(($file, $content_type, include_str!(concat!("../console/", $file)))),*]
    };
}

/// The ES modules (`main.js` is the entry `index.html` loads) and the style sheet.
const ASSETS: &[(&str, &str, &str)] = assets![
    "main.js": JS,
    "router.js": JS,
    "state.js": JS,
    "api.js": JS,
    "i18n.js": JS,
    "dom.js": JS,
    "dialog.js": JS,
    "list.js": JS,
    "editor.js": JS,
    "editor-model.js": JS,
    "spaces.js": JS,
    "test-send.js": JS,
    "delivery.js": JS,
    "rotate.js": JS,
    "audit.js": JS,
    "notifications.js": JS,
    "app.css": CSS,
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /`: the console.
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{file}`: its script and style.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, content_type, body)| page(content_type, body))
        .ok_or_else(|| ApiError::not_found("no such console file"))
}
