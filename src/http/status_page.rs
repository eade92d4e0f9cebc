//! `GET /`: the status page. One self-contained HTML file (its styles,
//! script and hand-drawn SVG charts inline), compiled into the binary: no
//! CDN, nothing to fetch but the receiver's own `/stats` and `/stats/daily`,
//! which it reads again every few seconds.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("status_page.html");

/// Everything the page runs is in it; it may only call back to this receiver.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'";

/// The page's icon (it links the same one inline, so a browser that reads the
/// page asks for nothing; this answers one that asks anyway).
const FAVICON: &str = include_str!("favicon.svg");

pub async fn favicon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "max-age=86400")], FAVICON)
        .into_response()
}

pub async fn page() -> Response {
    self_contained_page(PAGE)
}

/// One of the receiver's own pages: HTML that may run only what it holds and
/// call back only to this receiver.
pub fn self_contained_page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response()
}
