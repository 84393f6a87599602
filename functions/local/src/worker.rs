//! The in-process halves of the local service: the dispatch worker that drains the durable
//! local queue through the same [`Dispatcher`] the SQS Lambda uses, and the results publisher.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use touchpoint::clock::Clock;
use touchpoint_dispatcher::{Dispatcher, Handled};
use touchpoint_embedded::{QueuedDispatch, ResultsFile, SqliteStore};
use tracing::Instrument;

/// Messages handled at once, at most: enough for one-user dispatches (a triggered campaign's)
/// to keep a touchpoint's `maxConcurrency` (up to 64) busy several times over. Each runs its
/// batches under the per-touchpoint limits, so this does not add requests to a receiver.
pub const CONCURRENT_MESSAGES: usize = 256;
/// Bytes of message bodies in hand at once, at most: a dispatch holds a few times its body's
/// size while it is handled, so memory stays bounded whatever the mix (about ten 10,000-user
/// dispatches, or hundreds of small ones).
pub const BYTES_IN_HAND: usize = 16 << 20;
/// Messages taken from the queue in one receive, at most.
const RECEIVE_AT_ONCE: usize = 32;
/// How long a received message stays hidden while it is handled.
const VISIBILITY_MS: i64 = 10 * 60 * 1000;
/// How long the results publisher lets outcomes gather after a round that was not full.
const GATHER_RESULTS: Duration = Duration::from_millis(10);
/// Longest sleep when nothing is queued (a submit wakes the worker at once).
const IDLE_POLL: Duration = Duration::from_secs(1);

pub struct Worker {
    pub store: SqliteStore,
    pub dispatcher: Arc<Dispatcher>,
    pub clock: Arc<dyn Clock>,
    /// How long one delivery of a message may take (the Lambda's timeout on AWS).
    pub turn: Duration,
}

impl Worker {
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(CONCURRENT_MESSAGES));
        let bytes = Arc::new(Semaphore::new(BYTES_IN_HAND));
        let wake = self.store.queue_ready();
        loop {
            if *stop.borrow() {
                return;
            }
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            // As many messages as there are free slots, in one write (at most a few dozen, so
            // one receive does not take a long turn on the store).
            let mut permits = vec![permit];
            while permits.len() < RECEIVE_AT_ONCE {
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let now = self.clock.now_ms();
            match self
                .store
                .receive_many(now, VISIBILITY_MS, permits.len())
                .await
            {
                Ok(messages) if !messages.is_empty() => {
                    for (message, permit) in messages.into_iter().zip(permits) {
                        // A body larger than the whole budget waits for all of it.
                        let weight = message.body.len().clamp(1, BYTES_IN_HAND) as u32;
                        let Ok(in_hand) = Arc::clone(&bytes).acquire_many_owned(weight).await
                        else {
                            return;
                        };
                        let worker = Arc::clone(&self);
                        let span = tracing::info_span!("queued_dispatch", queue_id = message.id);
                        tokio::spawn(
                            async move {
                                worker.handle(message).await;
                                drop((permit, in_hand));
                            }
                            .instrument(span),
                        );
                    }
                }
                Ok(_) => {
                    drop(permits);
                    let next = self.store.next_visible().await.ok().flatten();
                    let sleep = next
                        .map(|t| {
                            Duration::from_millis((t - self.clock.now_ms()).clamp(1, 1000) as u64)
                        })
                        .unwrap_or(IDLE_POLL);
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(sleep) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err(e) => {
                    drop(permits);
                    tracing::error!(error = %e, "cannot read the local queue");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    }

    async fn handle(&self, message: QueuedDispatch) {
        // The same time limit per delivery as the dispatcher Lambda's: a large dispatch hands
        // the rest on instead of holding a worker slot for ever.
        let deadline = self.clock.now_ms() + self.turn.as_millis() as i64;
        // The poison guard is the dispatcher's (deliveries in a row without progress, kept on
        // the dispatch record); the local queue has no redrive limit of its own.
        let outcome = self
            .dispatcher
            .handle_text(&message.body, message.receives, deadline)
            .await;
        let result = match outcome {
            Ok(Handled::Done) => self.store.ack(message.id).await,
            Ok(Handled::RetryAt(at)) => self.store.continue_at(message.id, at).await,
            Ok(Handled::Continue) => {
                self.store
                    .continue_at(message.id, self.clock.now_ms())
                    .await
            }
            Ok(Handled::Malformed(reason)) => {
                tracing::error!(queue_id = message.id, %reason, "malformed dispatch dead-lettered");
                self.store.dead_letter(message.id, &reason).await
            }
            Err(e) => {
                tracing::error!(error = %e, "dispatch failed on storage; it will be retried");
                self.store
                    .redeliver_at(message.id, self.clock.now_ms() + 1_000)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, queue_id = message.id, "cannot update the local queue");
        }
    }
}

/// Publishes final outcomes to `results.jsonl` until stopped.
pub async fn publish_results(
    results: ResultsFile,
    store: SqliteStore,
    mut stop: watch::Receiver<bool>,
) {
    let wake = store.results_ready();
    loop {
        match results.publish_pending().await {
            Ok(n) if n >= touchpoint_embedded::PUBLISH_ROUND => continue,
            Ok(n) if n > 0 => {
                // Outcomes arriving one by one (one-user dispatches) are published a few
                // milliseconds later in one round instead of a round each: a round costs a
                // transaction and a write of the file whatever it carries.
                tokio::select! {
                    () = tokio::time::sleep(GATHER_RESULTS) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot publish results"),
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The local stand-in for EventBridge Scheduler: every `interval`, one receipt round per
/// scheduled touchpoint.
pub async fn tick_receipts(
    store: SqliteStore,
    poller: Arc<touchpoint_receipt_poller::ReceiptPoller>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let schedules = match store.receipt_schedules().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read receipt schedules");
                continue;
            }
        };
        for (project, touchpoint) in schedules {
            match poller.round(Some((project, &touchpoint))).await {
                Ok(report) if report != Default::default() => {
                    tracing::info!(project, %touchpoint, ?report, "receipt round");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(project, %touchpoint, error = %e, "receipt round failed"),
            }
        }
    }
}

/// Notifications sent at once, at most, in one round of the local outbox.
const NOTIFICATIONS_AT_ONCE: usize = 16;
/// How long a notification taken to be sent stays hidden: a process that stops meanwhile
/// leaves it to be sent again after the next start.
const NOTIFICATION_HIDE_MS: i64 = 2 * 60 * 1000;

/// Sends the notifications the local outbox holds when they are due, retried by the sender's
/// schedule; never in the way of a delivery (their own task, their own requests).
pub async fn send_notifications(
    store: SqliteStore,
    sender: touchpoint_receiver::notify::NotificationSender,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let wake = store.notifications_waiting();
    loop {
        if *stop.borrow() {
            return;
        }
        let now = clock.now_ms();
        let due = match store
            .due_notifications(now, NOTIFICATION_HIDE_MS, NOTIFICATIONS_AT_ONCE)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the notification outbox");
                Vec::new()
            }
        };
        let full = due.len() == NOTIFICATIONS_AT_ONCE;
        let sends = due.into_iter().map(|(attempt, n)| {
            let (store, sender) = (store.clone(), sender.clone());
            async move {
                match sender.handle(&n, attempt, None, &store).await {
                    Ok(touchpoint_receiver::notify::Handled::Finished) => {
                        if let Err(e) = store.notification_done(&n.id).await {
                            tracing::warn!(notification = %n.id, error = %e, "cannot remove a sent notification; it may be sent again");
                        }
                    }
                    Ok(touchpoint_receiver::notify::Handled::Again) => {}
                    Err(e) => {
                        tracing::warn!(notification = %n.id, error = %e, "cannot keep a notification for its next attempt; it comes back when its hiding ends");
                    }
                }
            }
        });
        futures_util::future::join_all(sends).await;
        if full {
            continue;
        }
        let wait = match store.next_notification_at().await {
            Ok(Some(at)) => Duration::from_millis((at - clock.now_ms()).clamp(0, 1_000) as u64),
            _ => IDLE_POLL,
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}
