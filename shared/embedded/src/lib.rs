//! Embedded adapters for single-process installs: a SQLite store in a data directory.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a committed write survives the process
//! being killed at any moment (`kill -9`); only a power loss can drop the last transactions.
//! One connection serves the process behind a mutex, on tokio's blocking pool: the admin API's
//! load is small, and a single writer is what SQLite allows anyway.
#![forbid(unsafe_code)]

mod delivery;
mod schema;
mod store;

pub use delivery::{QueuedDispatch, ResultsFile};
pub use store::SqliteStore;
