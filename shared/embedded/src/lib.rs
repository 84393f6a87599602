//! Embedded adapters for single-process installs: a SQLite store in a data directory.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a committed write survives the process
//! being killed at any moment (`kill -9`); only a power loss can drop the last transactions.
//! One connection serves the process, owned by one writer thread (a single writer is what
//! SQLite allows anyway); operations queued at the same time share a transaction, each in its
//! own savepoint, and none is answered before its transaction is committed.
#![forbid(unsafe_code)]

mod delivery;
mod schema;
mod store;

pub use delivery::{PUBLISH_ROUND, QueuedDispatch, ResultsFile};
pub use store::{Durability, SqliteStore};
