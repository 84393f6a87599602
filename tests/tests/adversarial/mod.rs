//! The adversarial suite (issue 7), one test binary: crash safety under `kill -9`, receiver
//! faults, the SSRF guard, secret hygiene and the million-user load. RELIABILITY.md reports
//! what these runs measure.

/// These tests load the machine or measure time (timeouts of a few hundred milliseconds):
/// they run one at a time, and the test command runs this module in a pass of its own
/// (`-- adversarial::`), so that each has the two cores to itself.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

mod crash;
mod load;
mod receiver_faults;
mod secrets;
mod ssrf;
