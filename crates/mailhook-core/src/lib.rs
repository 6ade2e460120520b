//! The pure heart of mailhook: the event model and its validation, webhook settings, the
//! subscription filter, the failover chain and circuit breaker, signing, and the work bus.
//!
//! Nothing here does I/O or reads the clock: callers pass `now` in and carry out the
//! decisions that come back. That is what lets every rule be tested without sleeping.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod bus;
pub mod chain;
pub mod engagement;
pub mod error;
pub mod event;
pub mod filter;
pub mod net;
pub mod rate;
pub mod sample;
pub mod settings;
pub mod signature;
pub mod time;

pub use error::{FieldError, IntakeError};
pub use event::{AccountId, Event, EventId, EventType, MsgId};
pub use settings::{WebhookSettings, WebhookUrl};
