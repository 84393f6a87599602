//! The touchpoint domain: what a custom touchpoint is, the rules it obeys, and the ports through
//! which it is stored.
//!
//! This crate never depends on an HTTP framework, the AWS SDK or SQLite: adapters implement the
//! ports in [`ports`], and the functions (admin API, dispatcher, poller, local binary) call the use
//! cases in [`service`].
#![forbid(unsafe_code)]

pub mod audit;
pub mod clock;
pub mod delivery;
pub mod dispatch;
pub mod error;
pub mod health;
pub mod ids;
pub mod input;
pub mod json;
pub mod ledger;
pub mod limits;
pub mod model;
pub mod notify;
pub mod ports;
pub mod protocol;
pub mod reporting;
pub mod service;
pub mod template;
pub mod view;

pub use clock::{Clock, SystemClock};
pub use error::{DomainError, FieldError};
pub use model::*;
pub use ports::{ListFilter, StoreError, TouchpointStore, UpdateGuard};
pub use service::{ListParams, Page, Touchpoints, UrlPolicy};
