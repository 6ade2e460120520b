//! `GET /openapi.json`: the API's OpenAPI 3.1 document (`docs/openapi.json`), built into the
//! binary so what is served always belongs to the code that serves it. A test in
//! `tests/it/openapi.rs` keeps the document and the router in step.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;

use crate::response::Body;

/// The document, as checked in.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

pub fn serve() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
