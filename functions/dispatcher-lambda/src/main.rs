#![forbid(unsafe_code)]

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use touchpoint_dispatcher_lambda::DispatcherLambda;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .without_time()
        .init();
    let state = Arc::new(DispatcherLambda::from_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let state = Arc::clone(&state);
        // The invocation's deadline (epoch ms): the dispatcher stops claiming batches in time
        // to record the ones in flight and hand the rest on.
        let deadline = i64::try_from(event.context.deadline).unwrap_or(i64::MAX);
        async move { Ok::<_, Error>(state.handle_until(event.payload, deadline).await) }
    }))
    .await
}
