//! SQS messages as the Lambda event source hands them to a function.

use aws_lambda_events::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};

/// An SQS event of `records` (the event types cannot be built literally: they are
/// non-exhaustive).
pub fn event_of(records: Vec<SqsMessage>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = records;
    event
}

/// A received message as an SQS event record: body, receipt handle, system attributes
/// (`ApproximateReceiveCount` among them) and message attributes.
pub fn record_of(m: aws_sdk_sqs::types::Message) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = m.message_id;
    record.receipt_handle = m.receipt_handle;
    record.body = m.body;
    record.md5_of_body = m.md5_of_body;
    record.attributes = m
        .attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v))
        .collect();
    record.message_attributes = m
        .message_attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let mut attribute = SqsMessageAttribute::default();
            attribute.string_value = v.string_value;
            attribute.data_type = Some(v.data_type);
            (k, attribute)
        })
        .collect();
    record.event_source = Some("aws:sqs".into());
    record
}
