//! The moto server as the AWS peer: tables, queues and a schedule group with unique names.
//! Tests refuse to run against anything but a loopback endpoint.

#![allow(dead_code)]

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use touchpoint_aws::{AwsNames, Clients};

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

pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    format!(
        "{prefix}-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn attr(name: &str, t: ScalarAttributeType) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(t)
        .build()
        .unwrap()
}

fn key(name: &str, t: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .unwrap()
}

/// Creates both tables (as template.yaml defines them), both queues and a schedule group.
pub async fn provision(c: &Clients) -> AwsNames {
    let touchpoints_table = unique("touchpoints");
    let delivery_table = unique("delivery");
    c.dynamodb
        .create_table()
        .table_name(&touchpoints_table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk", ScalarAttributeType::S))
        .attribute_definitions(attr("sk", ScalarAttributeType::S))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .send()
        .await
        .unwrap();
    c.dynamodb
        .create_table()
        .table_name(&delivery_table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk", ScalarAttributeType::S))
        .attribute_definitions(attr("sk", ScalarAttributeType::S))
        .attribute_definitions(attr("due_tp", ScalarAttributeType::S))
        .attribute_definitions(attr("next_poll_at", ScalarAttributeType::N))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("due")
                .key_schema(key("due_tp", KeyType::Hash))
                .key_schema(key("next_poll_at", KeyType::Range))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let dispatch_queue = c
        .sqs
        .create_queue()
        .queue_name(unique("dispatch"))
        .send()
        .await
        .unwrap();
    let results_queue = c
        .sqs
        .create_queue()
        .queue_name(format!("{}.fifo", unique("results")))
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap();
    let group = unique("receipts");
    c.scheduler
        .create_schedule_group()
        .name(&group)
        .send()
        .await
        .unwrap();
    AwsNames {
        touchpoints_table,
        delivery_table,
        dispatch_queue_url: dispatch_queue.queue_url,
        results_queue_url: results_queue.queue_url,
        schedule_group: Some(group),
        poller_arn: Some("arn:aws:lambda:us-east-1:123456789012:function:receipt-poller".into()),
        scheduler_role_arn: Some("arn:aws:iam::123456789012:role/scheduler".into()),
        retention: std::time::Duration::from_secs(30 * 86_400),
    }
}
