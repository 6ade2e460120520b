//! The web console: static files compiled into the binary and served under `/console/`.
//!
//! Plain HTML, CSS and JavaScript modules, no build step and nothing fetched from elsewhere
//! at run time, so the console works offline and ships with every gateway. The files hold
//! no data and need no token; the page keeps the admin token in `sessionStorage` and sends
//! it on each API call. Every answer carries headers that keep the page from being framed,
//! sniffed or made to load scripts from anywhere but here.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::response::{ApiError, Body};

/// `(path under /console/, content type, bytes)`.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../console/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/console.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/api.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../console/favicon.svg"),
    ),
];

/// Scripts, styles, images and API calls from this origin only; no framing (clickjacking),
/// no plugins, no `<base>` tricks, forms post only here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /`: the console is the front door.
pub fn redirect() -> Response<Body> {
    found("/console/")
}

/// `GET /console/...`: one of the built-in files, or 404.
pub fn serve(path: &str) -> Response<Body> {
    if path == "/console" {
        // Relative links in the page resolve against the directory.
        return found("/console/");
    }
    let name = path.strip_prefix("/console/").unwrap_or("");
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, content_type, bytes)) => {
            let mut response = with_headers(Response::new(Full::new(Bytes::from_static(bytes))));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        None => with_headers(
            ApiError::not_found(format!(
                "the console has no file `{}`",
                mailhook_core::event::truncate(name, 100)
            ))
            .into_response(),
        ),
    }
}

fn found(location: &'static str) -> Response<Body> {
    let mut response = with_headers(Response::new(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::FOUND;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    response
}

fn with_headers(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Files change with the binary; revalidating costs little and avoids a stale page
    // after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_its_type_and_the_security_headers() {
        for (name, content_type, bytes) in ASSETS {
            let response = serve(&format!("/console/{name}"));
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], content_type);
            assert!(!bytes.is_empty(), "{name} is empty");
            let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(csp.starts_with("default-src 'self'"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert_eq!(
                response.headers()[header::X_CONTENT_TYPE_OPTIONS],
                "nosniff"
            );
        }
        assert_eq!(serve("/console/nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(
            serve("/console/../Cargo.toml").status(),
            StatusCode::NOT_FOUND
        );
        for (response, to) in [(redirect(), "/console/"), (serve("/console"), "/console/")] {
            assert_eq!(response.status(), StatusCode::FOUND);
            assert_eq!(response.headers()[header::LOCATION], to);
        }
    }

    /// The page loads nothing from elsewhere and runs no inline script (the CSP would block
    /// it, and the page would break silently).
    #[test]
    fn the_page_loads_only_its_own_files() {
        let html = std::str::from_utf8(ASSETS[0].2).unwrap();
        for needle in [
            "src=\"http",
            "href=\"http",
            "<script>",
            "onclick=",
            "style=",
        ] {
            assert!(!html.contains(needle), "index.html contains `{needle}`");
        }
        for (name, _, bytes) in &ASSETS[1..4] {
            let text = std::str::from_utf8(bytes).unwrap();
            assert!(
                !text.contains("import(\"http"),
                "{name} imports from elsewhere"
            );
            assert!(!text.contains("innerHTML"), "{name} writes raw HTML");
        }
    }
}
