//! Configuration read once per cold start from the environment, and the SDK clients built
//! from it.

use std::time::Duration;

/// Names of the resources, as the SAM template passes them to each function.
#[derive(Clone, Debug)]
pub struct AwsNames {
    pub touchpoints_table: String,
    pub delivery_table: String,
    pub dispatch_queue_url: Option<String>,
    pub results_queue_url: Option<String>,
    pub schedule_group: Option<String>,
    pub poller_arn: Option<String>,
    pub scheduler_role_arn: Option<String>,
    /// How long delivery records are kept (DynamoDB TTL).
    pub retention: Duration,
}

fn required(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("{name} is not set"))
}

fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl AwsNames {
    /// Reads `TOUCHPOINTS_TABLE`, `DELIVERY_TABLE` (required) and `DISPATCH_QUEUE_URL`,
    /// `RESULTS_QUEUE_URL`, `SCHEDULE_GROUP`, `RECEIPT_POLLER_ARN`, `SCHEDULER_ROLE_ARN`,
    /// `RETENTION_DAYS` (default 30).
    pub fn from_env() -> Result<AwsNames, String> {
        let days = match optional("RETENTION_DAYS") {
            None => 30,
            Some(d) => d
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|d| *d >= 1)
                .ok_or("RETENTION_DAYS must be a positive integer")?,
        };
        Ok(AwsNames {
            touchpoints_table: required("TOUCHPOINTS_TABLE")?,
            delivery_table: required("DELIVERY_TABLE")?,
            dispatch_queue_url: optional("DISPATCH_QUEUE_URL"),
            results_queue_url: optional("RESULTS_QUEUE_URL"),
            schedule_group: optional("SCHEDULE_GROUP"),
            poller_arn: optional("RECEIPT_POLLER_ARN"),
            scheduler_role_arn: optional("SCHEDULER_ROLE_ARN"),
            retention: Duration::from_secs(days * 86_400),
        })
    }
}

/// The SDK clients of one process.
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub scheduler: aws_sdk_scheduler::Client,
}

impl Clients {
    /// Builds the clients from the default provider chain (and `AWS_ENDPOINT_URL`, which the
    /// tests point at a local moto server).
    pub async fn from_env() -> Clients {
        Self::build(None).await
    }

    /// The clients of [`Clients::from_env`] sent to an explicit endpoint (a local emulator such
    /// as moto), whatever `AWS_ENDPOINT_URL` says.
    pub async fn with_endpoint(endpoint: &str) -> Clients {
        Self::build(Some(endpoint)).await
    }

    async fn build(endpoint: Option<&str>) -> Clients {
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        // The SDK's hyper client on rustls with ring, the crypto library the outbound client
        // uses too, instead of its default on aws-lc: one crypto library per binary.
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https);
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        Clients {
            dynamodb: aws_sdk_dynamodb::Client::new(&shared),
            sqs: aws_sdk_sqs::Client::new(&shared),
            scheduler: aws_sdk_scheduler::Client::new(&shared),
        }
    }
}
