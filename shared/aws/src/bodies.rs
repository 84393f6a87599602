//! Dispatch bodies too large for an SQS message. The HTTP intake takes a dispatch of up to
//! [`touchpoint::dispatch::MAX_DISPATCH_BYTES`]; an SQS message holds 1 MiB. A body above
//! [`INLINE_BYTES`] is stored in the delivery table in parts (`P#{project}#D#{dispatchId}`,
//! `BODY#{0000…}`, each at most [`PART_BYTES`], far below the 400 KB item limit) and the queue
//! carries a reference, `{"dispatchRef":{"projectId","dispatchId","parts","bytes"}}`, which the
//! dispatcher Lambda reads back into the whole body. The dispatch stays one unit: one
//! `dispatchId`, one set of batches, one state.

use aws_sdk_dynamodb::Client;
use serde::{Deserialize, Serialize};
use touchpoint::ProjectId;
use touchpoint::ids::DispatchId;
use touchpoint::ports::StoreError;

use crate::item::*;

/// Bodies up to this many bytes go on the queue as they are (the queue's
/// `MaximumMessageSize` is 1 MiB; the rest is room for attributes).
pub const INLINE_BYTES: usize = 1_000_000;
/// Bytes of one stored part at most.
pub const PART_BYTES: usize = 300_000;
const REF_PREFIX: &str = "{\"dispatchRef\":";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DispatchRef {
    project_id: ProjectId,
    dispatch_id: DispatchId,
    parts: usize,
    bytes: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RefMessage {
    dispatch_ref: DispatchRef,
}

/// Where large dispatch bodies are kept.
#[derive(Clone, Debug)]
pub struct DispatchBodies {
    ddb: Client,
    table: String,
}

/// What reading a message's body found.
pub enum Body {
    /// The message is the dispatch.
    Inline,
    /// The message referred to a stored body: here it is.
    Stored(String),
    /// The message refers to a body that cannot be read back (with why): nobody can be told
    /// per user.
    Unreadable(String),
}

fn pk(project: ProjectId, id: &str) -> String {
    format!("P#{project}#D#{id}")
}

/// `text` cut into parts of at most `max` bytes, on character boundaries.
fn parts_of(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (part, tail) = rest.split_at(end);
        parts.push(part);
        rest = tail;
    }
    parts
}

impl DispatchBodies {
    pub fn new(clients: &crate::Clients, names: &crate::AwsNames) -> DispatchBodies {
        DispatchBodies {
            ddb: clients.dynamodb.clone(),
            table: names.delivery_table.clone(),
        }
    }

    /// What goes on the queue for `body`: the body itself when it fits, otherwise a reference
    /// to its parts, stored first (kept until `expires_at`, epoch seconds).
    pub async fn message_for(
        &self,
        project: ProjectId,
        dispatch_id: &DispatchId,
        body: String,
        expires_at: i64,
    ) -> Result<String, StoreError> {
        if body.len() <= INLINE_BYTES {
            return Ok(body);
        }
        let parts = parts_of(&body, PART_BYTES);
        for (i, part) in parts.iter().enumerate() {
            let mut item = key(pk(project, dispatch_id), format!("BODY#{i:04}"));
            item.insert("text".into(), s(*part));
            item.insert("expires_at".into(), n(expires_at));
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .send()
                .await
                .map_err(aws_err)?;
        }
        serde_json::to_string(&RefMessage {
            dispatch_ref: DispatchRef {
                project_id: project,
                dispatch_id: dispatch_id.clone(),
                parts: parts.len(),
                bytes: body.len(),
            },
        })
        .map_err(StoreError::backend)
    }

    /// The bytes of the dispatch a message carries: its own, or those of the stored body it
    /// refers to (as the reference states them; nothing is read).
    pub fn size_of(message: &str) -> usize {
        if message.starts_with(REF_PREFIX)
            && let Ok(RefMessage { dispatch_ref: r }) = serde_json::from_str(message)
        {
            return r.bytes;
        }
        message.len()
    }

    /// Reads a message back into its dispatch.
    pub async fn read(&self, message: &str) -> Result<Body, StoreError> {
        if !message.starts_with(REF_PREFIX) {
            return Ok(Body::Inline);
        }
        let Ok(RefMessage { dispatch_ref: r }) = serde_json::from_str(message) else {
            // Not one of ours: the dispatcher reads it as what it is.
            return Ok(Body::Inline);
        };
        let items = query_all(
            self.ddb
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk AND begins_with(sk, :body)")
                .expression_attribute_values(":pk", s(pk(r.project_id, &r.dispatch_id)))
                .expression_attribute_values(":body", s("BODY#")),
        )
        .await?;
        let mut text = String::with_capacity(r.bytes);
        for item in &items {
            text.push_str(&get_s(item, "text").unwrap_or_default());
        }
        if items.len() != r.parts || text.len() != r.bytes {
            return Ok(Body::Unreadable(format!(
                "the stored body of dispatch {} has {} of {} parts ({} of {} bytes)",
                r.dispatch_id,
                items.len(),
                r.parts,
                text.len(),
                r.bytes
            )));
        }
        Ok(Body::Stored(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cut_on_character_boundaries_and_join_back() {
        let text = "失".repeat(1000) + "abc";
        let parts = parts_of(&text, 1000);
        assert!(parts.iter().all(|p| p.len() <= 1000 && !p.is_empty()));
        assert_eq!(parts.concat(), text);
        assert!(parts_of("", 10).is_empty());
        assert_eq!(parts_of("abcd", 2), ["ab", "cd"]);
    }

    #[test]
    fn a_message_weighs_what_it_carries_or_what_its_reference_states() {
        let inline = r#"{"dispatchId":"d1","users":[]}"#;
        assert_eq!(DispatchBodies::size_of(inline), inline.len());
        let reference =
            r#"{"dispatchRef":{"projectId":1,"dispatchId":"d1","parts":7,"bytes":1600000}}"#;
        assert_eq!(DispatchBodies::size_of(reference), 1_600_000);
        // Not one of ours: weighed as it is.
        let odd = r#"{"dispatchRef":{"bytes":"many"}}"#;
        assert_eq!(DispatchBodies::size_of(odd), odd.len());
    }
}
