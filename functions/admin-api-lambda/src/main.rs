#![forbid(unsafe_code)]

use touchpoint_admin_api_lambda::{JwtClaims, app};
use touchpoint_aws::{AwsNames, Clients};
use touchpoint_outbound::Outbound;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .without_time()
        .init();
    let names = AwsNames::from_env()?;
    let clients = Clients::from_env().await;
    let allow_private = std::env::var("ALLOW_PRIVATE_NETWORKS").is_ok_and(|v| v == "true");
    let urls = touchpoint::UrlPolicy {
        allow_plain_http: std::env::var("ALLOW_PLAIN_HTTP").is_ok_and(|v| v == "true"),
    };
    let router = app(
        &clients,
        &names,
        Outbound::new(allow_private)?,
        JwtClaims::from_env(),
        urls,
    )?;
    lambda_http::run(router).await
}
