//! Talking to a touchpoint's receiver: one touch exchange read against the protocol (what an
//! answer means for each user of the batch), the admin's test send and the enum-options cache.
//! The dispatcher and the admin API both use it; neither depends on the other.
#![forbid(unsafe_code)]

pub mod limits;
pub mod notify;
pub mod options;
mod test_send;

use std::time::Duration;

use touchpoint::model::{Receipt, Touchpoint};
use touchpoint::protocol::{
    ReceiptReading, UserData, UserStatus, read_receipt, settle_sync, touch_request, truncate,
};
use touchpoint_outbound::Outbound;

pub use options::EnumOptions;
pub use test_send::{SentRequest, TestResult, TestSend, TestSendReport};

/// The outcome of one HTTP exchange with a receiver.
#[derive(Debug)]
pub struct Exchange {
    /// None when no HTTP answer came.
    pub http_status: Option<u16>,
    pub latency_ms: Option<u64>,
    /// Why the exchange did not succeed as a whole, for the record.
    pub error: Option<String>,
    /// The start of the receiver's answer (at most 1,000 characters).
    pub excerpt: Option<String>,
    pub verdict: Verdict,
    /// What the exchange says of the receiver's health and limits (with its `Retry-After`).
    pub answer: limits::Answer,
}

/// What an exchange means for the users of the batch, in the batch's order.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Async: the receiver accepted; `None` users await their receipt.
    Accepted(Vec<Option<UserStatus>>),
    Final(Vec<UserStatus>),
    /// Nothing is final: send the batch again (after the receiver's `Retry-After`, if given).
    Retry(Option<Duration>),
}

/// A touch request (protocol §1) for `users`, signed with the touchpoint's tokens at `now`.
pub fn touch(
    tp: &Touchpoint,
    order_no: &str,
    now: touchpoint::clock::Millis,
    users: &[UserData],
) -> touchpoint::protocol::SignedRequest {
    touch_request(&tp.signing(now), order_no, now, users)
}

/// Sends one touch request and decides what the answer means for the batch (protocol §2.1,
/// §3).
pub async fn exchange(
    outbound: &Outbound,
    tp: &Touchpoint,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
    gids: &[i64],
    timeout: Duration,
) -> Exchange {
    let fail_all = |reason: String| Verdict::Final(vec![UserStatus::failed(reason); gids.len()]);
    match outbound
        .post_json(&tp.spec.url, body, headers, timeout)
        .await
    {
        Err(e) => {
            let verdict = if e.retryable() {
                Verdict::Retry(None)
            } else {
                fail_all(e.to_string())
            };
            Exchange {
                http_status: None,
                latency_ms: None,
                error: Some(e.to_string()),
                excerpt: None,
                verdict,
                answer: limits::Answer::of_error(&e),
            }
        }
        Ok(reply) => {
            let excerpt = Some(truncate(&String::from_utf8_lossy(&reply.body), 1_000))
                .filter(|s| !s.is_empty());
            let status = reply.status;
            let oversized = format!(
                "invalid receipt: the response is larger than {} bytes",
                touchpoint_outbound::MAX_RESPONSE_BYTES
            );
            let (verdict, error) = match status {
                200..=299 if reply.truncated => (fail_all(oversized.clone()), Some(oversized)),
                200..=299 if matches!(tp.spec.receipt, Receipt::Async { .. }) => {
                    match read_receipt(&reply.body, false) {
                        ReceiptReading::Statuses(mut known) => {
                            let statuses = gids.iter().map(|g| known.remove(g)).collect();
                            (Verdict::Accepted(statuses), None)
                        }
                        other => (Verdict::Final(settle_sync(gids, other).0), None),
                    }
                }
                200..=299 => {
                    let reading = read_receipt(&reply.body, true);
                    let (statuses, unknown) = settle_sync(gids, reading);
                    if !unknown.is_empty() {
                        tracing::warn!(touchpoint = %tp.id, unknown = ?unknown, "receipt named gids not in the batch; ignored");
                    }
                    (Verdict::Final(statuses), None)
                }
                300..=399 => {
                    let why = format!("HTTP {status}: redirects are not followed");
                    (fail_all(why.clone()), Some(why))
                }
                408 | 429 | 500..=599 => (
                    Verdict::Retry(reply.retry_after),
                    Some(format!("HTTP {status}")),
                ),
                _ => {
                    let why = format!("HTTP {status}");
                    (fail_all(why.clone()), Some(why))
                }
            };
            Exchange {
                http_status: Some(status),
                latency_ms: Some(reply.latency.as_millis() as u64),
                error,
                excerpt,
                verdict,
                answer: limits::Answer::of(Some(status), reply.retry_after),
            }
        }
    }
}
