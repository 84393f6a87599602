//! The dispatcher Lambda: handles an SQS batch of dispatch messages concurrently, each record
//! on its own, and reports the ones to redeliver as partial batch failures
//! (`ReportBatchItemFailures`). It reads its invocation deadline: no batch is claimed unless it
//! can be sent and recorded in time, and what is left is handed on.
//!
//! - Done: the message is deleted.
//! - Work left (a retry round later, or the deadline near): a fresh copy of the message goes to
//!   the queue, delayed until then (at most 15 minutes; a copy that arrives early waits out the
//!   rest by its visibility), with the time in its `notBefore` attribute, and this one is
//!   deleted. Every delivery that makes progress so starts a new message: its receive count
//!   counts only deliveries in a row that made none (crashes, storage errors), and neither the
//!   poison guard (`MAX_RECEIVES`) nor the queue's `maxReceiveCount` is reached on a healthy
//!   path however long the retries or slow the receiver.
//! - Unreadable (not JSON, duplicate keys, no dispatch id or project, unreadable users): nobody
//!   can be told per user, so the message is moved to the dead-letter queue at once with the
//!   reason as a message attribute (`DEAD_LETTER_QUEUE_URL`; its alarm fires) and logged; it is
//!   never retried.
//! - Received more than `MAX_RECEIVES` times in a row without progress: every user without an
//!   outcome fails ("delivery stalled: …"), as far as the deadline allows and then on fresh
//!   copies, so nothing waits forever and nothing is lost silently.
//! - A record whose handling fails or panics is reported as failed and comes back after the
//!   visibility timeout; the other records of the batch are not affected.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use touchpoint::clock::{Clock, Millis, SystemClock};
use touchpoint::ledger::stalled;
use touchpoint::notify::{Notification, NotificationOutbox};
use touchpoint_aws::bodies::Body;
use touchpoint_aws::notify::{Queued, SqsOutbox, is_notification, read_queued};
use touchpoint_aws::{AwsNames, Clients, DispatchBodies};
use touchpoint_dispatcher::{Dispatcher, DispatcherConfig, Handled};
use touchpoint_outbound::Outbound;
use touchpoint_receiver::notify::NotificationSender;
use touchpoint_services::{Services, Settings};
use tracing::Instrument;

/// The message attribute of a fresh copy (or of a notification's next attempt): when it is
/// due (epoch ms).
pub const NOT_BEFORE: &str = touchpoint_aws::notify::NOT_BEFORE;
/// The longest delay SQS gives a message.
const MAX_DELAY_SECONDS: u64 = 900;
/// Bytes of dispatch bodies an instance delivers at once, at most: a record whose dispatch
/// would take it beyond waits for earlier ones (and is handed on to a fresh message if its
/// invocation's time runs out first). An event holds up to `BatchSize` records within Lambda's
/// 6 MB payload, but a record may refer to a stored body of up to
/// `touchpoint::dispatch::MAX_DISPATCH_BYTES`; the dispatcher's memory grows with the bodies it
/// holds, and `MemorySize` is set from ten 10,000-user dispatches of about 800 KB each
/// (BENCHMARKS.md).
pub const BODY_BYTES_AT_ONCE: usize = 8 * 1024 * 1024;

/// Everything a warm Lambda keeps between invocations.
pub struct DispatcherLambda {
    pub dispatcher: Arc<Dispatcher>,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    /// Where unreadable messages go, with their reason; unset: they are only logged.
    pub dead_letter_url: Option<String>,
    pub clock: Arc<dyn Clock>,
    pub max_receives: u32,
    /// Where the intake stores dispatches larger than a message (unset: messages are read as
    /// they are).
    pub bodies: Option<DispatchBodies>,
    /// The groups of the ledger's checkpoints: told how many records are under way, a group
    /// goes as soon as every one of them waits in it.
    pub groups: Option<Arc<touchpoint_aws::group::Groups>>,
    /// Bytes of dispatch bodies being delivered (see [`BODY_BYTES_AT_ONCE`]).
    pub bodies_in_hand: Arc<tokio::sync::Semaphore>,
    /// Sends the notifications that wait on the dispatch queue, and puts one back for its next
    /// attempt (unset: a notification message is dropped with a warning).
    pub notifications: Option<(NotificationSender, Arc<dyn NotificationOutbox>)>,
}

impl DispatcherLambda {
    /// Built once per cold start from the environment.
    pub async fn from_env() -> Result<DispatcherLambda, String> {
        let settings = touchpoint_aws::FunctionSettings::from_env()?;
        let clients = Clients::from_env().await;
        let names = &settings.names;
        let queue_url = names
            .dispatch_queue_url
            .clone()
            .ok_or("DISPATCH_QUEUE_URL is not set")?;
        let mut cfg = DispatcherConfig::default();
        if let Some(retry) = settings.retry.clone() {
            cfg.retry = retry;
        }
        // The dispatcher's poison guard and this backstop on the queue's receive count (kept
        // below the queue's own maxReceiveCount) count the same deliveries without progress.
        cfg.max_stalls = settings.max_receives;
        let mut lambda = Self::new(
            &clients,
            names,
            queue_url,
            Outbound::new(settings.allow_private_networks)?,
            cfg,
            settings.max_receives,
        )?;
        lambda.dead_letter_url = settings.dead_letter_queue_url.clone();
        Ok(lambda)
    }

    /// A Lambda around a dispatcher built elsewhere (simulations wrap its stores).
    pub fn from_parts(
        dispatcher: Arc<Dispatcher>,
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        max_receives: u32,
    ) -> DispatcherLambda {
        DispatcherLambda {
            dispatcher,
            sqs,
            queue_url,
            dead_letter_url: None,
            clock: Arc::new(SystemClock),
            max_receives,
            bodies: None,
            groups: None,
            bodies_in_hand: Arc::new(tokio::sync::Semaphore::new(BODY_BYTES_AT_ONCE)),
            notifications: None,
        }
    }

    pub fn new(
        clients: &Clients,
        names: &AwsNames,
        queue_url: String,
        outbound: Outbound,
        cfg: DispatcherConfig,
        max_receives: u32,
    ) -> Result<DispatcherLambda, String> {
        let (services, groups) = Services::aws_grouped(
            clients,
            names,
            outbound,
            Settings::default().with_dispatcher(cfg),
        )?;
        let outbox: Arc<dyn NotificationOutbox> = Arc::new(SqsOutbox::new(
            clients.sqs.clone(),
            queue_url.clone(),
            services.clock.clone(),
        ));
        Ok(DispatcherLambda {
            dispatcher: services.dispatcher,
            sqs: clients.sqs.clone(),
            queue_url,
            dead_letter_url: None,
            clock: services.clock,
            max_receives,
            bodies: Some(DispatchBodies::new(clients, names)),
            groups: Some(groups),
            bodies_in_hand: Arc::new(tokio::sync::Semaphore::new(BODY_BYTES_AT_ONCE)),
            notifications: Some((services.notification_sender, outbox)),
        })
    }

    /// One SQS event with no time limit (tests, tools).
    pub async fn handle(self: &Arc<Self>, event: SqsEvent) -> SqsBatchResponse {
        self.handle_until(event, Millis::MAX).await
    }

    /// One SQS event, finished before `deadline` (epoch ms, the invocation's deadline): records
    /// run concurrently, each on its own; the response names those to redeliver.
    pub async fn handle_until(
        self: &Arc<Self>,
        event: SqsEvent,
        deadline: Millis,
    ) -> SqsBatchResponse {
        let mut set = tokio::task::JoinSet::new();
        let mut ids = HashMap::new();
        // Every record counted before any starts: a group never goes thinking all are in it
        // while some have yet to begin. A notification is no writer of a group: one sent to a
        // slow endpoint does not hold the dispatches' checkpoints back.
        let participants: Vec<_> = event
            .records
            .iter()
            .map(|r| {
                if r.body.as_deref().is_some_and(is_notification) {
                    None
                } else {
                    self.groups.as_ref().map(|g| g.participant())
                }
            })
            .collect();
        for (record, under_way) in event.records.into_iter().zip(participants) {
            let me = Arc::clone(self);
            let id = record.message_id.clone().unwrap_or_default();
            // Every line logged while the record is handled names its message.
            let span = tracing::info_span!("sqs_record", message_id = %id);
            let task = set.spawn(
                async move {
                    let deletable = me.handle_record(record, deadline).await;
                    drop(under_way);
                    deletable
                }
                .instrument(span),
            );
            ids.insert(task.id(), id);
        }
        let mut response = SqsBatchResponse::default();
        while let Some(joined) = set.join_next_with_id().await {
            let (task, deletable) = match joined {
                Ok((task, deletable)) => (task, deletable),
                Err(e) => {
                    // A panic is a failure like any other: the message comes back.
                    tracing::error!(error = %e, "a record's handling panicked; it will be redelivered");
                    (e.id(), false)
                }
            };
            if !deletable {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = ids.remove(&task).unwrap_or_default();
                response.batch_item_failures.push(failure);
            }
        }
        // The receivers' slots go back to the other instances before this one is frozen, and
        // the breaker's notifications reach the outbox.
        let limits = self.dispatcher.limits();
        limits
            .release_idle_within(deadline.saturating_sub(self.clock.now_ms()))
            .await;
        let left = deadline.saturating_sub(self.clock.now_ms()).clamp(0, 2_000);
        limits.told(Duration::from_millis(left as u64)).await;
        response
    }

    /// Hands the dispatch on to a fresh message due at `at`, so this one can be deleted. True
    /// when it was sent; otherwise this message is delayed instead (and reported as failed).
    async fn continue_at(&self, record: &SqsMessage, at: Millis) -> bool {
        let id = record.message_id.as_deref().unwrap_or_default();
        let now = self.clock.now_ms();
        let delay = ((at - now).max(0) as u64)
            .div_ceil(1000)
            .min(MAX_DELAY_SECONDS) as i32;
        let attribute = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(at.to_string())
            .build();
        let sent = match (attribute, &record.body) {
            (Ok(attribute), Some(body)) => self
                .sqs
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body.clone())
                .delay_seconds(delay)
                .message_attributes(NOT_BEFORE, attribute)
                .send()
                .await
                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()),
            (Err(e), _) => Err(e.to_string()),
            (_, None) => Err("the message has no body".into()),
        };
        match sent {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(message_id = id, error = %e, "cannot hand the dispatch on to a fresh message; delaying this one");
                self.delay(record, at).await;
                false
            }
        }
    }

    /// Keeps this message hidden until `at` (it comes back then with one more receive).
    async fn delay(&self, record: &SqsMessage, at: Millis) {
        let id = record.message_id.as_deref().unwrap_or_default();
        let wait = Duration::from_millis((at - self.clock.now_ms()).max(0) as u64);
        let seconds = wait.as_secs_f64().ceil().clamp(1.0, 43_200.0) as i32;
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

    /// Sends a notification that waited on the queue (its next attempt goes back onto it);
    /// true when the message may be deleted.
    async fn send_notification(&self, n: &Notification, attempt: u32, seal: &str) -> bool {
        let Some((sender, outbox)) = &self.notifications else {
            tracing::warn!(notification = %n.id, "a notification arrived where none are sent; dropped");
            return true;
        };
        match sender.handle(n, attempt, Some(seal), outbox.as_ref()).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(notification = %n.id, error = %e, "cannot put a notification back for its next attempt; SQS will redeliver it");
                false
            }
        }
    }

    /// True when the message may be deleted.
    async fn handle_record(&self, record: SqsMessage, deadline: Millis) -> bool {
        let id = record.message_id.as_deref().unwrap_or_default();
        // Read once, by the dispatcher, straight into the typed dispatch.
        let Some(body) = record.body.as_deref() else {
            return self.dead_letter(&record, "the message has no body").await;
        };
        // A fresh copy that arrived before its time waits out the rest (SQS delays at most
        // 15 minutes); nothing is read or sent for it.
        let not_before = record
            .message_attributes
            .get(NOT_BEFORE)
            .and_then(|a| a.string_value.as_deref())
            .and_then(|v| v.parse::<Millis>().ok());
        if let Some(at) = not_before.filter(|at| *at > self.clock.now_ms() + 1_000) {
            self.delay(&record, at).await;
            return false;
        }
        match read_queued(body) {
            Queued::Dispatch => {}
            Queued::Unreadable(why) => return self.dead_letter(&record, &why).await,
            Queued::Notification(n, attempt, seal) => {
                return self.send_notification(&n, attempt, &seal).await;
            }
        }
        // Its share of the bodies this instance holds at once, before anything is read.
        let size = DispatchBodies::size_of(body).clamp(1, BODY_BYTES_AT_ONCE);
        let wait = (deadline - self.dispatcher.config().deadline_margin.as_millis() as i64)
            .saturating_sub(self.clock.now_ms())
            .max(0);
        let share = tokio::time::timeout(
            Duration::from_millis(wait as u64),
            Arc::clone(&self.bodies_in_hand).acquire_many_owned(size as u32),
        )
        .await;
        let _share = match share {
            Ok(Ok(share)) => share,
            // Its time ran out behind larger ones: a fresh message carries it on.
            _ => return self.continue_at(&record, self.clock.now_ms()).await,
        };
        // A dispatch larger than a message was stored by the intake: read it back whole.
        let stored;
        let body = match &self.bodies {
            None => body,
            Some(bodies) => match bodies.read(body).await {
                Ok(Body::Inline) => body,
                Ok(Body::Stored(text)) => {
                    stored = text;
                    stored.as_str()
                }
                Ok(Body::Unreadable(why)) => return self.dead_letter(&record, &why).await,
                Err(e) => {
                    tracing::error!(message_id = id, error = %e, "cannot read the stored dispatch; SQS will redeliver it");
                    return false;
                }
            },
        };
        let receives: u32 = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let handled = match stalled(receives, self.max_receives) {
            Some(reason) => {
                tracing::error!(message_id = id, %reason, "giving up on a dispatch");
                self.dispatcher.give_up_text(body, &reason, deadline).await
            }
            None => self.dispatcher.handle_text(body, receives, deadline).await,
        };
        match handled {
            Ok(Handled::Done) => true,
            Ok(Handled::Malformed(reason)) => self.dead_letter(&record, &reason).await,
            Ok(Handled::RetryAt(at)) => self.continue_at(&record, at).await,
            Ok(Handled::Continue) => self.continue_at(&record, self.clock.now_ms()).await,
            Err(e) => {
                tracing::error!(message_id = id, error = %e, "dispatch failed on storage; SQS will redeliver it");
                false
            }
        }
    }
}
