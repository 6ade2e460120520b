//! Errors of validation: what was wrong, where, and with which value.

use serde::Serialize;

/// One problem with one field of the input, as the API reports it in `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Position of the event in a batch; absent for settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            index: None,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn at(index: usize, field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            index: Some(index),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why an intake body was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body must be an event object or an array of event objects, got {0}")]
    Shape(&'static str),
    #[error("batch is empty: send at least one event")]
    Empty,
    #[error("batch has {count} events, the limit is {max} (intake.batch_events_max)")]
    TooMany { count: usize, max: usize },
    #[error("JSON nesting is {depth} levels deep, the limit is {max} (limits.json_depth_max)")]
    TooDeep { depth: usize, max: usize },
    #[error("{} invalid field(s); nothing was stored", .0.len())]
    Invalid(Vec<FieldError>),
}
