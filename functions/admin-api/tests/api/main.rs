//! The admin API driven through its Router on a real SQLite store, one test binary: the routes
//! and their rules, and hostile input with the authorization matrix.
//!
//! Every response of every test passes through [`common::Api::send`], which fails the test if
//! it is a 500 or if its body ever contains a touchpoint token.

mod common;

mod audit;
mod health;
mod hostile_input;
mod notifications;
mod routes;
