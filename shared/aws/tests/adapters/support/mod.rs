//! The moto server as the AWS peer: tables, queues and a schedule group with unique names.
//! Tests refuse to run against anything but a loopback endpoint.

#![allow(dead_code)]

use touchpoint_aws::Clients;
pub use touchpoint_aws::provision::provision;

/// Clients for the local moto server named by `AWS_ENDPOINT_URL`.
pub async fn clients() -> Clients {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL: run these tests through infra/test.sh");
    let host = endpoint
        .trim_start_matches("http://")
        .split([':', '/'])
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        host == "127.0.0.1" || host == "localhost" || host == "[::1]",
        "refusing to test against a non-local endpoint {endpoint}"
    );
    assert_eq!(
        std::env::var("AWS_EC2_METADATA_DISABLED").as_deref(),
        Ok("true")
    );
    Clients::from_env().await
}
