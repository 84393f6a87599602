//! The receipt-poller Lambda: EventBridge Scheduler invokes it every 5 minutes per async
//! touchpoint with `{"projectId":…,"touchpointId":…}`; it runs one round for that touchpoint.
#![forbid(unsafe_code)]

use std::sync::Arc;

use serde_json::Value;
use touchpoint::delivery::ReceiptRoundInput;
use touchpoint_aws::{AwsNames, Clients};
use touchpoint_outbound::Outbound;
use touchpoint_receipt_poller::ReceiptPoller;
use touchpoint_services::{Services, Settings};

pub struct PollerLambda {
    pub poller: Arc<ReceiptPoller>,
}

impl PollerLambda {
    pub async fn from_env() -> Result<PollerLambda, String> {
        let settings = touchpoint_aws::FunctionSettings::from_env()?;
        let clients = Clients::from_env().await;
        Self::new(
            &clients,
            &settings.names,
            Outbound::new(settings.allow_private_networks)?,
        )
    }

    pub fn new(
        clients: &Clients,
        names: &AwsNames,
        outbound: Outbound,
    ) -> Result<PollerLambda, String> {
        let services = Services::aws(clients, names, outbound, Settings::default())?;
        Ok(PollerLambda {
            poller: services.poller,
        })
    }

    /// One round for the touchpoint the schedule names, with no time limit.
    pub async fn handle(&self, input: Value) -> Result<Value, String> {
        self.handle_until(input, i64::MAX).await
    }

    /// One round that ends before `deadline` (epoch ms); what it leaves is still due and comes
    /// first in the next round. A round invoked twice (Scheduler delivers at least once) polls
    /// nothing twice: every batch is leased before it is polled.
    pub async fn handle_until(&self, input: Value, deadline: i64) -> Result<Value, String> {
        let input: ReceiptRoundInput = serde_json::from_value(input).map_err(|e| {
            format!("the input is not {{\"projectId\": …, \"touchpointId\": …}}: {e}")
        })?;
        let (project, touchpoint) = (input.project_id, &input.touchpoint_id);
        let report = self
            .poller
            .round_until(Some((project, touchpoint)), deadline)
            .await;
        // The receiver's slots go back to the other instances before this one is frozen.
        if let Some(limits) = self.poller.limits() {
            use touchpoint::clock::Clock;
            let now = touchpoint::clock::SystemClock.now_ms();
            limits
                .release_idle_within(deadline.saturating_sub(now))
                .await;
        }
        let report = report.map_err(|e| e.to_string())?;
        tracing::info!(project, touchpoint = %touchpoint, ?report, "receipt round");
        serde_json::to_value(report).map_err(|e| e.to_string())
    }
}
