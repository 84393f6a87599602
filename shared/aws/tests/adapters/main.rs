//! The AWS adapters against the moto server, one test binary: the DynamoDB touchpoint store
//! (the same rules the SQLite store keeps) and the DynamoDB ledger with the SQS intake and the
//! Scheduler.

mod support;

mod delivery;
mod touchpoints;
