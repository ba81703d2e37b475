//! The panel page and its assets, compiled into the binary with `include_str!`: plain HTML,
//! CSS and JavaScript, so running the panel needs no build step and no files beside the
//! binary.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The page (`GET /panel`).
pub const PAGE: &str = include_str!("page/index.html");
/// Its script (`GET /panel/assets/panel.js`).
pub const SCRIPT: &str = include_str!("page/panel.js");
/// Its styles (`GET /panel/assets/panel.css`).
pub const STYLES: &str = include_str!("page/panel.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidate on every load: an upgraded service serves its own page, never a stale one.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

pub fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

pub fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub fn styles() -> Response {
    asset(STYLES, "text/css; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_small_and_self_contained() {
        assert!(PAGE.len() + SCRIPT.len() + STYLES.len() < 40_000, "the panel stays small");
        assert!(PAGE.contains("/panel/assets/panel.js") && PAGE.contains("/panel/assets/panel.css"));
        // No inline script or style: the CSP allows only 'self'.
        assert!(!PAGE.contains("<script>") && !PAGE.contains("style="));
        // Prompt text is never parsed as HTML.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
    }
}
