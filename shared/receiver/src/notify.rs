//! Sends operational notifications (see [`touchpoint::notify`]) to a project's own endpoint,
//! signed with the Standard Webhooks headers, through the same SSRF guard as every request.

use std::sync::Arc;
use std::time::Duration;

use touchpoint::clock::Clock;
use touchpoint::notify::{Notification, NotificationOutbox, retry_wait, seal_holds};
use touchpoint::ports::{StoreError, TouchpointStore};
use touchpoint::protocol::signature_headers;
use touchpoint_outbound::Outbound;

/// How long a notification's endpoint may take to answer.
pub const NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(10);

/// What one attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Answered 2xx.
    Delivered,
    /// Not sent again: the project no longer wants it, or the endpoint refused it for good
    /// (a 4xx other than 408 and 429, a redirect, a URL the SSRF guard refuses).
    Dropped(String),
    /// Worth another attempt (a transport error, a timeout, 408, 429, 5xx).
    Retry(String),
}

/// What became of a notification taken from its outbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Delivered, dropped or given up on: remove it.
    Finished,
    /// Put back into the outbox for its next attempt (under the same id).
    Again,
}

#[derive(Clone)]
pub struct NotificationSender {
    store: Arc<dyn TouchpointStore>,
    outbound: Outbound,
    clock: Arc<dyn Clock>,
    time_scale: f64,
}

impl NotificationSender {
    pub fn new(
        store: Arc<dyn TouchpointStore>,
        outbound: Outbound,
        clock: Arc<dyn Clock>,
        time_scale: f64,
    ) -> NotificationSender {
        NotificationSender {
            store,
            outbound,
            clock,
            time_scale,
        }
    }

    /// One attempt, with the project's settings as they are now (a changed URL or token
    /// applies to notifications already waiting; a type unsubscribed since is dropped).
    /// `seal`: the notification's [`touchpoint::notify::seal`] where it waited in a queue
    /// that others may write to; one that does not hold is dropped (forged, or made under a
    /// token replaced since).
    pub async fn send(&self, n: &Notification, seal: Option<&str>) -> Sent {
        let config = match self.store.notification_config(n.project_id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Sent::Dropped("the project has no notification settings".into()),
            Err(e) => return Sent::Retry(format!("cannot read the settings: {e}")),
        };
        if let Some(given) = seal
            && !seal_holds(n, &config.seal_key, given)
        {
            return Sent::Dropped(
                "its seal does not hold: forged, or made for settings removed since".into(),
            );
        }
        if !config.events.contains(&n.event) {
            return Sent::Dropped(format!(
                "the project no longer subscribes to {}",
                n.event.as_str()
            ));
        }
        let body = n.body();
        let seconds = self.clock.now_ms().div_euclid(1000);
        let headers = signature_headers([config.token.expose()], &n.id, seconds, &body);
        match self
            .outbound
            .post_json(&config.url, body, &headers, NOTIFICATION_TIMEOUT)
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => Sent::Delivered,
            Ok(r) if matches!(r.status, 408 | 429 | 500..=599) => {
                Sent::Retry(format!("HTTP {}", r.status))
            }
            Ok(r) => Sent::Dropped(format!("HTTP {}", r.status)),
            Err(e) if e.retryable() => Sent::Retry(e.to_string()),
            Err(e) => Sent::Dropped(e.to_string()),
        }
    }

    /// Sends attempt `attempt` of `n`; one worth retrying goes back into `outbox` for its next
    /// attempt (an error: it could not be put back, and stays where it was).
    pub async fn handle(
        &self,
        n: &Notification,
        attempt: u32,
        seal: Option<&str>,
        outbox: &dyn NotificationOutbox,
    ) -> Result<Handled, StoreError> {
        match self.send(n, seal).await {
            Sent::Delivered => {
                tracing::info!(project = n.project_id, notification = %n.id, attempt, "notification delivered");
                Ok(Handled::Finished)
            }
            Sent::Dropped(why) => {
                tracing::warn!(project = n.project_id, notification = %n.id, attempt, reason = %why, "notification dropped");
                Ok(Handled::Finished)
            }
            Sent::Retry(why) => match retry_wait(attempt, self.time_scale) {
                Some(wait) => {
                    tracing::info!(project = n.project_id, notification = %n.id, attempt, reason = %why, wait_ms = wait, "notification will be retried");
                    // Its seal holds for the next attempt too: the key lives as long as the
                    // settings (an outbox this process alone writes keeps none).
                    outbox
                        .put(
                            n,
                            attempt + 1,
                            self.clock.now_ms().saturating_add(wait),
                            seal.unwrap_or_default(),
                        )
                        .await?;
                    Ok(Handled::Again)
                }
                None => {
                    tracing::warn!(project = n.project_id, notification = %n.id, attempt, reason = %why, "notification given up after its last attempt");
                    Ok(Handled::Finished)
                }
            },
        }
    }
}
