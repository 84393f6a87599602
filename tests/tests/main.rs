//! The end-to-end suite, one test binary: the real local binary as a separate process, the
//! Lambdas against the moto server, the dispatcher and the receipt poller against real
//! receivers, the delivery scenarios in the emulation of AWS, and the adversarial suite.
//!
//! The test command runs it in three passes: everything but the scenarios and the adversarial
//! suite; the scenarios side by side (`scenario_`, a thread each, compressed time); the
//! adversarial suite on its own (`adversarial::`: it loads the machine and measures time).

mod support;

mod adversarial;
mod aws;
mod delivery_sim;
mod dispatch;
mod local_dispatch;
mod local_service;
mod options;
mod receipts;
mod sim;
