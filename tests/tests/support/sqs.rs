//! SQS messages as the Lambda event source hands them to a function.

use aws_lambda_events::sqs::{SqsMessage, SqsMessageAttribute};

/// A received message as an SQS event record: body, receipt handle, system attributes
/// (`ApproximateReceiveCount` among them) and message attributes.
pub fn record_of(m: aws_sdk_sqs::types::Message) -> SqsMessage {
    SqsMessage {
        message_id: m.message_id,
        receipt_handle: m.receipt_handle,
        body: m.body,
        md5_of_body: m.md5_of_body,
        attributes: m
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v))
            .collect(),
        message_attributes: m
            .message_attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    SqsMessageAttribute {
                        string_value: v.string_value,
                        data_type: Some(v.data_type),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        event_source: Some("aws:sqs".into()),
        ..Default::default()
    }
}
