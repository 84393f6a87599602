#![forbid(unsafe_code)]

use touchpoint_admin_api_lambda::{JwtClaims, app};
use touchpoint_aws::{Clients, FunctionSettings};
use touchpoint_outbound::Outbound;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .without_time()
        .init();
    let settings = FunctionSettings::from_env()?;
    let clients = Clients::from_env().await;
    let urls = touchpoint::UrlPolicy {
        allow_plain_http: settings.allow_plain_http,
    };
    let router = app(
        &clients,
        &settings.names,
        Outbound::new(settings.allow_private_networks)?,
        JwtClaims::from_env(),
        urls,
    )?;
    lambda_http::run(router).await
}
