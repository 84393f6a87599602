//! The notification outbox on AWS: a notification waits as a message on the dispatch queue
//! (`{"notification", "attempt", "seal"}`), which the dispatcher Lambda sends (and puts back,
//! delayed, for a retry). No table or queue of its own: it travels through what the template
//! already has.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use touchpoint::clock::{Clock, Millis};
use touchpoint::notify::{Notification, NotificationOutbox};
use touchpoint::ports::StoreError;

/// The message attribute of a message due later than SQS can delay it: when (epoch ms).
pub const NOT_BEFORE: &str = "notBefore";
/// The longest delay SQS gives a message.
const MAX_DELAY_SECONDS: i64 = 900;

/// A notification as it waits on the queue.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    notification: Notification,
    attempt: u32,
    seal: String,
}

/// What a dispatch-queue message holds, for the dispatcher Lambda.
pub enum Queued {
    /// A dispatch (or anything else the dispatcher reads).
    Dispatch,
    /// A notification to send: its attempt and seal.
    Notification(Notification, u32, String),
    /// Marked a notification and unreadable as one.
    Unreadable(String),
}

/// Whether a message is marked a notification: its first key (a dispatch never starts so).
pub fn is_notification(body: &str) -> bool {
    body.trim_start().starts_with("{\"notification\"")
}

/// Tells a notification from a dispatch by its first key.
pub fn read_queued(body: &str) -> Queued {
    if !is_notification(body) {
        return Queued::Dispatch;
    }
    match serde_json::from_str::<Envelope>(body) {
        Ok(e) => Queued::Notification(e.notification, e.attempt, e.seal),
        Err(e) => Queued::Unreadable(format!("unreadable notification: {e}")),
    }
}

pub struct SqsOutbox {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    clock: std::sync::Arc<dyn Clock>,
}

impl SqsOutbox {
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        clock: std::sync::Arc<dyn Clock>,
    ) -> SqsOutbox {
        SqsOutbox {
            sqs,
            queue_url,
            clock,
        }
    }
}

#[async_trait]
impl NotificationOutbox for SqsOutbox {
    async fn put(
        &self,
        n: &Notification,
        attempt: u32,
        due_at: Millis,
        seal: &str,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(&Envelope {
            notification: n.clone(),
            attempt,
            seal: seal.to_owned(),
        })
        .map_err(StoreError::backend)?;
        let wait = (due_at - self.clock.now_ms()).max(0);
        let mut send = self
            .sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(((wait + 999) / 1000).min(MAX_DELAY_SECONDS) as i32);
        if wait > MAX_DELAY_SECONDS * 1000 {
            let at = aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(due_at.to_string())
                .build()
                .map_err(StoreError::backend)?;
            send = send.message_attributes(NOT_BEFORE, at);
        }
        send.send().await.map_err(|e| {
            StoreError::Backend(
                aws_sdk_sqs::error::DisplayErrorContext(&e)
                    .to_string()
                    .into(),
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_message_is_told_from_a_dispatch() {
        let n = Notification::new(
            3,
            touchpoint::notify::EventType::ReceiptTimeout,
            "o",
            1,
            serde_json::Value::Null,
        );
        let body = serde_json::to_string(&Envelope {
            notification: n.clone(),
            attempt: 2,
            seal: "v1,x".into(),
        })
        .unwrap();
        assert!(
            matches!(read_queued(&body), Queued::Notification(m, 2, s) if m == n && s == "v1,x")
        );
        assert!(matches!(
            read_queued(r#"{"dispatchId":"d","notification":1}"#),
            Queued::Dispatch
        ));
        assert!(matches!(
            read_queued(r#"{"notification":{"id":1}}"#),
            Queued::Unreadable(_)
        ));
    }
}
