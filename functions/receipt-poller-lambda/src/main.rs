#![forbid(unsafe_code)]

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use touchpoint_receipt_poller_lambda::PollerLambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .without_time()
        .init();
    let state = Arc::new(PollerLambda::from_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let state = Arc::clone(&state);
        // The invocation's deadline (epoch ms): the round leases no batch it cannot finish.
        let deadline = i64::try_from(event.context.deadline).unwrap_or(i64::MAX);
        async move {
            state
                .handle_until(event.payload, deadline)
                .await
                .map_err(Error::from)
        }
    }))
    .await
}
