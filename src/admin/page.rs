//! The live conversation page's static assets, built into the binary: one
//! HTML page, its script and its style sheet. The script draws the flow from
//! `/api/flow` (refreshed every few seconds) and shows a searched contact
//! from `/contacts/{id}`.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::Shared;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/page.js");
const STYLE: &str = include_str!("page/page.css");

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/page.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route("/page.css", get(|| asset("text/css; charset=utf-8", STYLE)))
}

async fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            // A new binary may ship a new page: no stale copy.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
