//! AWS adapters: every port of the touchpoint domain on DynamoDB, SQS and EventBridge
//! Scheduler. The table layout, keys and access patterns are documented in
//! `infra/dynamodb.md`; item conversions live next to the layout they encode.
#![forbid(unsafe_code)]

pub mod bodies;
pub mod config;
pub mod delivery;
pub mod group;
mod item;
pub mod limits;
pub mod notify;
pub mod provision;
pub mod schedule;
pub mod touchpoints;

pub use bodies::DispatchBodies;
pub use config::{AwsNames, Clients, Env, FunctionSettings, process_env};
pub use delivery::DynamoDelivery;
pub use limits::DynamoLimits;
pub use schedule::SchedulerReceipts;
pub use touchpoints::DynamoTouchpoints;
