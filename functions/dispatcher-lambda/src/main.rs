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
        async move { Ok::<_, Error>(state.handle(event.payload).await) }
    }))
    .await
}
