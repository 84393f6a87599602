//! The admin's test send: one real, signed request to the receiver, recorded nowhere.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use touchpoint::clock::Clock;
use touchpoint::model::Touchpoint;
use touchpoint::protocol::{UserData, UserStatus};
use touchpoint_outbound::Outbound;

use crate::{Verdict, exchange, touch};

/// The test-send use case.
#[derive(Clone)]
pub struct TestSend {
    outbound: Outbound,
    clock: Arc<dyn Clock>,
    /// The deployment's request timeout (a touchpoint may state its own).
    request_timeout: Duration,
    /// Divides the durations a touchpoint states: 1 in production.
    time_scale: f64,
    /// The limits of the receivers, shared with the process's other senders.
    limits: Option<Arc<crate::limits::ReceiverLimits>>,
}

impl TestSend {
    pub fn new(
        outbound: Outbound,
        clock: Arc<dyn Clock>,
        request_timeout: Duration,
        time_scale: f64,
    ) -> TestSend {
        TestSend {
            outbound,
            clock,
            request_timeout,
            time_scale,
            limits: None,
        }
    }

    /// Sends within the limits of each receiver, shared with the other senders of this process.
    pub fn with_limits(mut self, limits: Arc<crate::limits::ReceiverLimits>) -> TestSend {
        self.limits = Some(limits);
        self
    }

    /// One real, signed request with the fresh `order_no`. Not recorded in the ledger or
    /// statistics.
    pub async fn send(
        &self,
        tp: &Touchpoint,
        users: Vec<UserData>,
        order_no: String,
    ) -> TestSendReport {
        let now = self.clock.now_ms();
        let signed = touch(tp, &order_no, now, &users);
        let (body, headers) = (signed.body, signed.headers);
        let request = SentRequest {
            method: "POST",
            url: tp.spec.url.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            body: serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        };
        let gids: Vec<i64> = users.iter().map(|u| u.gid).collect();
        let timeout = tp
            .spec
            .request_timeout(self.request_timeout, self.time_scale);
        // A test send counts against the touchpoint's limits like any other request.
        let pass = match &self.limits {
            Some(limits) => match limits.acquire(tp, timeout).await {
                Some(pass) => Some(pass),
                None => {
                    let health = limits.health(tp).await;
                    let why = match (health.state, health.manual) {
                        (touchpoint::health::HealthState::Paused, true) => {
                            "not sent: the touchpoint is paused by an admin; resume it to send".to_owned()
                        }
                        (touchpoint::health::HealthState::Paused, false) => format!(
                            "not sent: the touchpoint is paused because its receiver is down ({}); a probe goes at {}, or resume it to send",
                            health.reason.as_deref().unwrap_or("failing"),
                            health.probe_at.as_deref().unwrap_or("the end of the cool-down")
                        ),
                        _ => "not sent: the touchpoint's requests in flight or its rate limit left no room within its request timeout".to_owned(),
                    };
                    return TestSendReport {
                        order_no,
                        request,
                        http_status: None,
                        latency_ms: None,
                        ok: false,
                        error: Some(why),
                        response_excerpt: None,
                        results: Vec::new(),
                    };
                }
            },
            None => None,
        };
        let exchange = exchange(&self.outbound, tp, body, &headers, &gids, timeout).await;
        if let Some(pass) = pass {
            pass.answered(exchange.answer);
        }
        if let Some(limits) = self.limits.as_ref().filter(|l| l.is_shared()) {
            // An admin Lambda instance keeps no slot once its request is answered.
            limits.release_idle().await;
        }
        let result = |gid: &i64, s: &UserStatus| TestResult {
            gid: *gid,
            status: s.code(),
            error_msg: s.reason().to_owned(),
        };
        let results: Vec<TestResult> = match &exchange.verdict {
            Verdict::Final(statuses) => gids
                .iter()
                .zip(statuses)
                .map(|(g, s)| result(g, s))
                .collect(),
            Verdict::Accepted(statuses) => gids
                .iter()
                .zip(statuses)
                .map(|(gid, s)| match s {
                    Some(s) => result(gid, s),
                    None => TestResult {
                        gid: *gid,
                        status: "PENDING",
                        error_msg: "awaiting the async receipt".into(),
                    },
                })
                .collect(),
            Verdict::Retry(_) => Vec::new(),
        };
        TestSendReport {
            order_no,
            request,
            http_status: exchange.http_status,
            latency_ms: exchange.latency_ms,
            ok: match &exchange.verdict {
                Verdict::Final(s) => s.iter().all(|s| *s == UserStatus::Succeeded),
                Verdict::Accepted(s) => s
                    .iter()
                    .all(|s| s.as_ref().is_none_or(|s| *s == UserStatus::Succeeded)),
                Verdict::Retry(_) => false,
            },
            error: exchange.error,
            response_excerpt: exchange.excerpt,
            results,
        }
    }
}

/// What a test send did: the request exactly as sent (the token only as the signature it
/// produced), the receiver's answer and each user's reading of it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSendReport {
    pub order_no: String,
    pub request: SentRequest,
    /// Null when no HTTP answer came (refused, timed out, blocked).
    pub http_status: Option<u16>,
    pub latency_ms: Option<u64>,
    /// Every user succeeded (or, async, was accepted and not failed).
    pub ok: bool,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    pub results: Vec<TestResult>,
}

/// The touch request a test send made.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SentRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: Value,
}

/// One user's result of a test send.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    pub gid: i64,
    /// `TOU_SUCC`, `TOU_FAIL`, or `PENDING` while an async receipt is awaited.
    pub status: &'static str,
    pub error_msg: String,
}
