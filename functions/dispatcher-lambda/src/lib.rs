//! The dispatcher Lambda: handles an SQS batch of dispatch messages concurrently and reports
//! the ones to redeliver as partial batch failures (`ReportBatchItemFailures`).
//!
//! - Done: the message is deleted.
//! - Unreadable (not JSON, duplicate keys, no dispatch id or project, unreadable users): nobody
//!   can be told per user, so the message is moved to the dead-letter queue at once with the
//!   reason as a message attribute (`DEAD_LETTER_QUEUE_URL`; its alarm fires) and logged; it is
//!   never retried.
//! - Batches waiting for a retry: the message's visibility is set to the retry time and it is
//!   reported as failed, so SQS redelivers it then.
//! - Received more than `MAX_RECEIVES` times: every user without an outcome fails, and the
//!   message is deleted (nothing waits forever, nothing is lost silently).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::Value;
use touchpoint::clock::{Clock, SystemClock};
use touchpoint_aws::{AwsNames, Clients, DynamoDelivery, DynamoTouchpoints};
use touchpoint_dispatcher::{Dispatcher, DispatcherConfig, Handled, RetryPolicy};
use touchpoint_outbound::Outbound;

/// Everything a warm Lambda keeps between invocations.
pub struct DispatcherLambda {
    pub dispatcher: Dispatcher,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    /// Where unreadable messages go, with their reason; unset: they are only logged.
    pub dead_letter_url: Option<String>,
    pub clock: Arc<dyn Clock>,
    pub max_receives: u32,
}

impl DispatcherLambda {
    /// Built once per cold start from the environment.
    pub async fn from_env() -> Result<DispatcherLambda, String> {
        let names = AwsNames::from_env()?;
        let clients = Clients::from_env().await;
        let queue_url = names
            .dispatch_queue_url
            .clone()
            .ok_or("DISPATCH_QUEUE_URL is not set")?;
        let mut cfg = DispatcherConfig::default();
        if let Ok(s) = std::env::var("RETRY_SCHEDULE") {
            cfg.retry = RetryPolicy::parse(&s).map_err(|e| format!("RETRY_SCHEDULE: {e}"))?;
        }
        let allow_private = std::env::var("ALLOW_PRIVATE_NETWORKS").is_ok_and(|v| v == "true");
        let max_receives = std::env::var("MAX_RECEIVES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let mut lambda = Self::new(
            &clients,
            &names,
            queue_url,
            Outbound::new(allow_private)?,
            cfg,
            max_receives,
        );
        lambda.dead_letter_url = std::env::var("DEAD_LETTER_QUEUE_URL")
            .ok()
            .filter(|u| !u.is_empty());
        Ok(lambda)
    }

    pub fn new(
        clients: &Clients,
        names: &AwsNames,
        queue_url: String,
        outbound: Outbound,
        cfg: DispatcherConfig,
        max_receives: u32,
    ) -> DispatcherLambda {
        let touchpoints = Arc::new(DynamoTouchpoints::new(
            clients.dynamodb.clone(),
            &names.touchpoints_table,
        ));
        let ledger = Arc::new(DynamoDelivery::new(clients, names));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        DispatcherLambda {
            dispatcher: Dispatcher::new(touchpoints, ledger, outbound, Arc::clone(&clock), cfg),
            sqs: clients.sqs.clone(),
            queue_url,
            dead_letter_url: None,
            clock,
            max_receives,
        }
    }

    /// One SQS event: records run concurrently; the response names those to redeliver.
    pub async fn handle(self: &Arc<Self>, event: SqsEvent) -> SqsBatchResponse {
        let mut set = tokio::task::JoinSet::new();
        for record in event.records {
            let me = Arc::clone(self);
            set.spawn(async move {
                let id = record.message_id.clone().unwrap_or_default();
                (id, me.handle_record(record).await)
            });
        }
        let mut response = SqsBatchResponse::default();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((_, true)) => {}
                Ok((id, false)) => {
                    response.batch_item_failures.push(BatchItemFailure {
                        item_identifier: id,
                    });
                }
                Err(e) => tracing::error!(error = %e, "a record's task failed"),
            }
        }
        response
    }

    /// Moves an unreadable message to the dead-letter queue with its reason. True when it may
    /// be deleted from the dispatch queue (moved, or no dead-letter queue is configured).
    async fn dead_letter(&self, record: &SqsMessage, reason: &str) -> bool {
        let id = record.message_id.as_deref().unwrap_or_default();
        tracing::error!(message_id = id, %reason, "unreadable dispatch message dead-lettered");
        let Some(url) = &self.dead_letter_url else {
            return true;
        };
        let attribute = |v: &str| {
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
        };
        let reason: String = reason.chars().take(1_000).collect();
        // SQS refuses empty attribute values.
        let source = if id.is_empty() { "unknown" } else { id };
        let (Ok(reason), Ok(source)) = (attribute(&reason), attribute(source)) else {
            return false;
        };
        let sent = self
            .sqs
            .send_message()
            .queue_url(url)
            .message_body(record.body.clone().unwrap_or_else(|| "(no body)".into()))
            .message_attributes("reason", reason)
            .message_attributes("sourceMessageId", source)
            .send()
            .await;
        match sent {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(message_id = id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "cannot dead-letter the message; SQS will redeliver it");
                false
            }
        }
    }

    /// True when the message may be deleted.
    async fn handle_record(&self, record: SqsMessage) -> bool {
        let id = record.message_id.as_deref().unwrap_or_default();
        let body: Value = match record
            .body
            .as_deref()
            .map(touchpoint::json::parse_strict_str)
        {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                return self.dead_letter(&record, &format!("not JSON: {e}")).await;
            }
            None => return self.dead_letter(&record, "the message has no body").await,
        };
        let receives: u32 = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        if receives > self.max_receives {
            let reason = format!("dead-lettered after {} deliveries", receives - 1);
            return match self.dispatcher.give_up(&body, &reason).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(message_id = id, error = %e, "cannot record a dead-lettered dispatch");
                    false
                }
            };
        }
        match self.dispatcher.handle_owned(body).await {
            Ok(Handled::Done) => true,
            Ok(Handled::Malformed(reason)) => self.dead_letter(&record, &reason).await,
            Ok(Handled::RetryAt(at)) => {
                let wait = Duration::from_millis((at - self.clock.now_ms()).max(0) as u64);
                let seconds = wait.as_secs().clamp(1, 43_200) as i32;
                if let Some(handle) = &record.receipt_handle {
                    let changed = self
                        .sqs
                        .change_message_visibility()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .visibility_timeout(seconds)
                        .send()
                        .await;
                    if let Err(e) = changed {
                        tracing::warn!(message_id = id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "cannot delay the message; it comes back after the queue's visibility timeout");
                    }
                }
                false
            }
            Err(e) => {
                tracing::error!(message_id = id, error = %e, "dispatch failed on storage; SQS will redeliver it");
                false
            }
        }
    }
}
