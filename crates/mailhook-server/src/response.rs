//! JSON responses and the one error shape every endpoint uses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use mailhook_core::FieldError;
use serde::Serialize;
use serde_json::{Value, json};

pub type Body = Full<Bytes>;

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"error": "...", "details": [...]}` with a fitting status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<FieldError>,
    pub retry_after_secs: Option<u64>,
    /// For a 405: the methods the path takes, sent as `Allow` (RFC 9110).
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: Vec::new(),
            retry_after_secs: None,
            allow: None,
        }
    }

    pub fn with_details(mut self, details: Vec<FieldError>) -> ApiError {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// The store cannot take the request now; the client should come back.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut body = json!({"error": self.message});
        if !self.details.is_empty() {
            body["details"] = serde_json::to_value(&self.details).unwrap_or(Value::Null);
        }
        let mut response = json(self.status, &body);
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<mailhook_store::Error> for ApiError {
    fn from(err: mailhook_store::Error) -> ApiError {
        match err {
            mailhook_store::Error::Unavailable(_) | mailhook_store::Error::Closed => {
                tracing::warn!(error = %err, "store cannot take the request");
                ApiError::unavailable("the store cannot take this request now; retry later")
            }
            mailhook_store::Error::Unsupported(_) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, err.to_string())
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal store error; see the gateway's log",
                )
            }
        }
    }
}
