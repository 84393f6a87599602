//! [`ReceiptSchedule`] on EventBridge Scheduler: one `rate(5 minutes)` schedule per async
//! touchpoint, in a dedicated group, invoking the receipt-poller Lambda with
//! `{"projectId":…,"touchpointId":…}`.

use async_trait::async_trait;
use aws_sdk_scheduler::types::{FlexibleTimeWindow, FlexibleTimeWindowMode, Target};

use touchpoint::ProjectId;
use touchpoint::delivery::ReceiptRoundInput;
use touchpoint::delivery::ReceiptSchedule;
use touchpoint::ids::TouchpointId;
use touchpoint::ports::StoreError;

/// How often each async touchpoint's receipts are polled (protocol §2.2).
pub const SCHEDULE_EXPRESSION: &str = "rate(5 minutes)";
/// [`SCHEDULE_EXPRESSION`] as a duration.
pub const SCHEDULE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct SchedulerReceipts {
    client: aws_sdk_scheduler::Client,
    group: String,
    poller_arn: String,
    role_arn: String,
    expression: String,
}

/// The schedule's name: at most 64 characters of `[0-9a-zA-Z-_.]`.
pub fn schedule_name(project: ProjectId, touchpoint_id: &TouchpointId) -> String {
    format!("receipts-{project}-{touchpoint_id}").replace(
        |c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        "-",
    )
}

/// The `Input` a schedule hands the poller.
pub fn schedule_input(project: ProjectId, touchpoint_id: &TouchpointId) -> String {
    serde_json::to_string(&ReceiptRoundInput {
        project_id: project,
        touchpoint_id: touchpoint_id.to_owned(),
    })
    .unwrap_or_default()
}

impl SchedulerReceipts {
    pub fn new(
        client: aws_sdk_scheduler::Client,
        names: &crate::AwsNames,
    ) -> Result<SchedulerReceipts, String> {
        Ok(SchedulerReceipts {
            client,
            group: names
                .schedule_group
                .clone()
                .ok_or("SCHEDULE_GROUP is not set")?,
            poller_arn: names
                .poller_arn
                .clone()
                .ok_or("RECEIPT_POLLER_ARN is not set")?,
            role_arn: names
                .scheduler_role_arn
                .clone()
                .ok_or("SCHEDULER_ROLE_ARN is not set")?,
            expression: SCHEDULE_EXPRESSION.into(),
        })
    }
}

fn err<E: std::fmt::Debug>(e: E) -> StoreError {
    StoreError::Backend(format!("scheduler: {e:?}").into())
}

#[async_trait]
impl ReceiptSchedule for SchedulerReceipts {
    async fn ensure(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<(), StoreError> {
        let target = Target::builder()
            .arn(&self.poller_arn)
            .role_arn(&self.role_arn)
            .input(schedule_input(project, touchpoint_id))
            .build()
            .map_err(err)?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(err)?;
        let result = self
            .client
            .create_schedule()
            .name(schedule_name(project, touchpoint_id))
            .group_name(&self.group)
            .schedule_expression(&self.expression)
            .flexible_time_window(window)
            .target(target)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conflict_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(crate::item::aws_err(e)),
        }
    }

    async fn remove(
        &self,
        project: ProjectId,
        touchpoint_id: &TouchpointId,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_schedule()
            .name(schedule_name(project, touchpoint_id))
            .group_name(&self.group)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(crate::item::aws_err(e)),
        }
    }
}
