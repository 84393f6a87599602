//! Small helpers for DynamoDB items and errors.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use touchpoint::ports::StoreError;

pub type Item = HashMap<String, AttributeValue>;

/// An UpdateItem expression assembled from its clauses: each action keyword once, an empty
/// action left out (DynamoDB refuses `REMOVE` with nothing after it).
#[derive(Debug, Default)]
pub struct UpdateExpr {
    sets: Vec<String>,
    removes: Vec<String>,
}

impl UpdateExpr {
    /// `SET` clauses to start with.
    pub fn setting<I: IntoIterator<Item = S>, S: Into<String>>(clauses: I) -> UpdateExpr {
        let mut e = UpdateExpr::default();
        e.sets.extend(clauses.into_iter().map(Into::into));
        e
    }

    /// One `SET` clause, such as `name = :value`.
    pub fn set(&mut self, clause: impl Into<String>) -> &mut UpdateExpr {
        self.sets.push(clause.into());
        self
    }

    /// One attribute (or list element) to `REMOVE`.
    pub fn remove(&mut self, attribute: impl Into<String>) -> &mut UpdateExpr {
        self.removes.push(attribute.into());
        self
    }

    /// The expression.
    pub fn expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.sets.is_empty() {
            parts.push(format!("SET {}", self.sets.join(", ")));
        }
        if !self.removes.is_empty() {
            parts.push(format!("REMOVE {}", self.removes.join(", ")));
        }
        parts.join(" ")
    }
}

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn b(v: bool) -> AttributeValue {
    AttributeValue::Bool(v)
}

pub fn get_s(item: &Item, key: &str) -> Option<String> {
    item.get(key).and_then(|v| v.as_s().ok()).cloned()
}

pub fn get_n<T: std::str::FromStr>(item: &Item, key: &str) -> Option<T> {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

pub fn get_b(item: &Item, key: &str) -> Option<bool> {
    item.get(key).and_then(|v| v.as_bool().ok()).copied()
}

pub fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// A failed AWS call, without request details (they may carry item contents).
pub fn aws_err<
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
>(
    e: SdkError<E, R>,
) -> StoreError {
    let message = match &e {
        SdkError::ServiceError(se) => {
            format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(se.err()))
        }
        other => format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(other)),
    };
    StoreError::Backend(message.into())
}

/// Whether a failed write failed on its condition (the answer then is "no", not an error).
pub fn conditional<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

pub fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::backend(e)
}

pub fn missing(what: &str) -> StoreError {
    StoreError::Backend(format!("malformed item: {what} missing").into())
}

/// The items of up to 100 keys of `table`, asking again for unprocessed keys (DynamoDB
/// throttled the read) after a back-off of 20 ms doubling to 2 s.
pub async fn batch_get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: aws_sdk_dynamodb::types::KeysAndAttributes,
) -> Result<Vec<Item>, StoreError> {
    let mut out = Vec::new();
    let mut wait = std::time::Duration::from_millis(20);
    let mut request = HashMap::from([(table.to_owned(), keys)]);
    while !request.is_empty() {
        let got = client
            .batch_get_item()
            .set_request_items(Some(request))
            .send()
            .await
            .map_err(aws_err)?;
        if let Some(items) = got.responses.and_then(|mut r| r.remove(table)) {
            out.extend(items);
        }
        request = got.unprocessed_keys.unwrap_or_default();
        request.retain(|_, k| !k.keys().is_empty());
        if !request.is_empty() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(2));
        }
    }
    Ok(out)
}

/// Every item a query matches, following `LastEvaluatedKey` page by page.
pub async fn query_all(
    query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
) -> Result<Vec<Item>, StoreError> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = query
            .clone()
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(aws_err)?;
        out.extend(page.items().iter().cloned());
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UpdateExpr;

    #[test]
    fn an_update_expression_names_each_action_once_and_leaves_empty_ones_out() {
        let mut e = UpdateExpr::setting(["a = :a", "b = :b"]);
        e.remove("c").remove("outbox[0]");
        assert_eq!(e.expression(), "SET a = :a, b = :b REMOVE c, outbox[0]");
        assert_eq!(UpdateExpr::setting(["a = :a"]).expression(), "SET a = :a");
        let mut only_removes = UpdateExpr::default();
        only_removes.remove("x");
        assert_eq!(only_removes.expression(), "REMOVE x");
        assert_eq!(UpdateExpr::default().expression(), "");
    }
}
