//! Creates the tables, queues and schedule group exactly as `template.yaml` declares them,
//! with unique names: for tests against the moto server and for trying the AWS adapters
//! against a local endpoint. Deployments use the SAM template instead.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};

use crate::{AwsNames, Clients};

pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the OS random source");
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
        .expect("moto or DynamoDB accepts the definition")
}

fn key(name: &str, t: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .expect("moto or DynamoDB accepts the definition")
}

/// Creates both tables, both queues (the results queue FIFO) and a schedule group.
///
/// # Panics
/// When the endpoint refuses a definition: this is a set-up helper, not a request path.
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
        .expect("moto or DynamoDB accepts the definition");
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
                    // As template.yaml declares it: a few small attributes, so that a lease
                    // (which writes none of them) does not rewrite the index.
                    Projection::builder()
                        .projection_type(ProjectionType::Include)
                        .set_non_key_attributes(Some(
                            crate::delivery::DUE_PROJECTION
                                .iter()
                                .map(|a| (*a).to_owned())
                                .collect(),
                        ))
                        .build(),
                )
                .build()
                .expect("moto or DynamoDB accepts the definition"),
        )
        .send()
        .await
        .expect("moto or DynamoDB accepts the definition");
    let dispatch_queue = c
        .sqs
        .create_queue()
        .queue_name(unique("dispatch"))
        .send()
        .await
        .expect("moto or DynamoDB accepts the definition");
    let results_queue = c
        .sqs
        .create_queue()
        .queue_name(format!("{}.fifo", unique("results")))
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("moto or DynamoDB accepts the definition");
    let group = unique("receipts");
    c.scheduler
        .create_schedule_group()
        .name(&group)
        .send()
        .await
        .expect("moto or DynamoDB accepts the definition");
    AwsNames {
        touchpoints_table,
        delivery_table,
        dispatch_queue_url: dispatch_queue.queue_url,
        results_queue_url: results_queue.queue_url,
        schedule_group: Some(group),
        poller_arn: Some("arn:aws:lambda:us-east-1:123456789012:function:receipt-poller".into()),
        scheduler_role_arn: Some("arn:aws:iam::123456789012:role/scheduler".into()),
        retention: std::time::Duration::from_secs(30 * 86_400),
        breaker: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_receipt_index_projects_what_the_template_declares() {
        let template = include_str!("../../../template.yaml");
        let declared = format!(
            "NonKeyAttributes: [{}]",
            crate::delivery::DUE_PROJECTION.join(", ")
        );
        assert!(
            template.contains(&declared),
            "template.yaml lacks {declared}"
        );
    }
}
