//! Dispatches (protocol §5): reading the campaign system's message, checking it against the
//! touchpoint, and planning the batches that will be sent.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::ids::{DispatchId, OrderNo, TouchpointId};
use crate::input::{ValueContext, check_template_value};
use crate::model::{ParamType, ProjectId, Touchpoint};
use crate::protocol::UserData;
use crate::template::{Segment, segments};

/// Most users one dispatch may carry.
pub const MAX_USERS: usize = 10_000;
/// The largest dispatch body the HTTP intake takes (10,000 users with a few attributes each;
/// on AWS the Lambda's 6 MB request limit, with the body escaped in its event, sets it).
pub const MAX_DISPATCH_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_ID_CHARS: usize = 256;

/// A user of a dispatch: id and the data center's attributes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispatchUser {
    pub gid: i64,
    #[serde(default)]
    pub attributes: Map<String, Value>,
}

/// A dispatch as the campaign system sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dispatch {
    pub dispatch_id: DispatchId,
    pub project_id: ProjectId,
    pub space_id: String,
    pub campaign_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy_id: Option<String>,
    pub touchpoint_id: TouchpointId,
    #[serde(default)]
    pub template_values: Map<String, Value>,
    pub users: Vec<DispatchUser>,
}

/// A message that cannot be attributed to a project and dispatch, or whose users cannot be
/// read: nobody can be told about it per user, so it is refused whole.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

/// A dispatch message as it should be: every field of the known shape, nothing else (anything
/// else, including a key twice, goes to [`read_dispatch`] on the whole value, which says
/// exactly what is wrong).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Wire {
    dispatch_id: String,
    project_id: ProjectId,
    space_id: String,
    campaign_id: String,
    #[serde(default)]
    strategy_id: Option<String>,
    touchpoint_id: String,
    #[serde(default)]
    template_values: Option<crate::json::Strict>,
    users: Vec<WireUser>,
}

/// A user of a well-formed dispatch: an object with `gid` and optional `attributes`, nothing
/// else. Read by hand because a derived reader would also take `[1]` for `{"gid": 1}`.
struct WireUser {
    gid: i64,
    attributes: Option<crate::json::Strict>,
}

impl<'de> Deserialize<'de> for WireUser {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WireUser, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = WireUser;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a user object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<WireUser, A::Error> {
                use serde::de::Error;
                let (mut gid, mut attributes) = (None, None);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "gid" if gid.is_none() => gid = Some(map.next_value::<i64>()?),
                        "attributes" if attributes.is_none() => {
                            attributes = Some(map.next_value::<Option<crate::json::Strict>>()?);
                        }
                        other => {
                            return Err(A::Error::custom(format_args!("unexpected key {other:?}")));
                        }
                    }
                }
                Ok(WireUser {
                    gid: gid.ok_or_else(|| A::Error::missing_field("gid"))?,
                    attributes: attributes.flatten(),
                })
            }
        }
        d.deserialize_map(Fields)
    }
}

/// An object, or nothing for null and absent; `Err` for anything else.
fn object_or_empty(v: Option<crate::json::Strict>) -> Result<Map<String, Value>, ()> {
    match v.map(|s| s.0) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(()),
    }
}

/// An id as [`read_dispatch`] accepts it (trimmed, 1 to 256 characters, no control
/// characters).
fn clean_id(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.chars().count() <= MAX_ID_CHARS && !s.chars().any(char::is_control))
        .then(|| s.to_owned())
}

/// The well-formed dispatch in `w`, or `None` when anything is off (then [`read_dispatch`]
/// names it).
fn checked_wire(w: Wire) -> Option<Dispatch> {
    let users_ok = !w.users.is_empty() && w.users.len() <= MAX_USERS;
    let mut seen = HashSet::with_capacity(w.users.len());
    let mut users = Vec::with_capacity(w.users.len());
    for u in w.users {
        if u.gid < 0 || !seen.insert(u.gid) {
            return None;
        }
        users.push(DispatchUser {
            gid: u.gid,
            attributes: object_or_empty(u.attributes).ok()?,
        });
    }
    let strategy_id = match w.strategy_id {
        None => None,
        Some(s) => Some(clean_id(&s)?),
    };
    users_ok.then_some(())?;
    Some(Dispatch {
        dispatch_id: DispatchId::new(clean_id(&w.dispatch_id)?),
        project_id: w.project_id,
        space_id: clean_id(&w.space_id)?,
        campaign_id: clean_id(&w.campaign_id)?,
        strategy_id,
        touchpoint_id: TouchpointId::new(clean_id(&w.touchpoint_id)?),
        template_values: object_or_empty(w.template_values).ok()?,
        users,
    })
}

/// Reads a dispatch message from its text: a well-formed one in one pass into the typed
/// dispatch, without building the document first; anything else through [`read_dispatch`],
/// which gives the same answer the whole-value reading always gave (and "not JSON" for text
/// that is not one strict JSON document).
pub fn read_dispatch_text(text: &str) -> Result<(Dispatch, Vec<String>), Malformed> {
    // Only an object is a dispatch (a derived reader would also take an array, field by field).
    let object = text.trim_start().starts_with('{');
    if object
        && let Ok(wire) = serde_json::from_str::<Wire>(text)
        && let Some(dispatch) = checked_wire(wire)
    {
        return Ok((dispatch, Vec::new()));
    }
    let value =
        crate::json::parse_strict_str(text).map_err(|e| Malformed(format!("not JSON: {e}")))?;
    read_dispatch(&value)
}

/// Reads a dispatch. `Err(Malformed)` when the envelope (dispatchId, projectId, users with
/// integer gids) is unreadable; otherwise the dispatch plus the reasons it is invalid, if any
/// (an invalid dispatch still ends every user it names in a recorded failure).
pub fn read_dispatch(v: &Value) -> Result<(Dispatch, Vec<String>), Malformed> {
    let Value::Object(m) = v else {
        return Err(Malformed("the dispatch must be a JSON object".into()));
    };
    let id = |key: &str| -> Option<String> {
        m.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| {
                !s.is_empty()
                    && s.chars().count() <= MAX_ID_CHARS
                    && !s.chars().any(char::is_control)
            })
            .map(str::to_owned)
    };
    let dispatch_id = id("dispatchId").ok_or_else(|| {
        Malformed(format!(
            "dispatchId must be a string of 1 to {MAX_ID_CHARS} characters"
        ))
    })?;
    let project_id = m
        .get("projectId")
        .and_then(crate::json::as_whole_i64)
        .ok_or_else(|| Malformed("projectId must be an integer".into()))?;
    let Some(Value::Array(raw_users)) = m.get("users") else {
        return Err(Malformed("users must be an array".into()));
    };
    let mut problems = Vec::new();
    let mut users = Vec::with_capacity(raw_users.len());
    let mut seen = HashSet::with_capacity(raw_users.len());
    let mut duplicates = Vec::new();
    let mut negative = Vec::new();
    for (i, u) in raw_users.iter().enumerate() {
        let Some(gid) = u.get("gid").and_then(crate::json::as_whole_i64) else {
            return Err(Malformed(format!("users[{i}].gid must be an integer")));
        };
        let attributes = match u.get("attributes") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) => a.clone(),
            Some(_) => {
                problems.push(format!("users[{i}].attributes must be an object"));
                Map::new()
            }
        };
        if gid < 0 {
            negative.push(gid);
        }
        if seen.insert(gid) {
            users.push(DispatchUser { gid, attributes });
        } else {
            duplicates.push(gid);
        }
    }
    if !duplicates.is_empty() {
        problems.push(format!(
            "gid {} appears more than once",
            duplicates
                .iter()
                .take(5)
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !negative.is_empty() {
        problems.push(format!(
            "gid must not be negative (got {})",
            negative
                .iter()
                .take(5)
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if users.is_empty() {
        problems.push("users must hold at least one user".into());
    }
    if raw_users.len() > MAX_USERS {
        problems.push(format!(
            "users holds {} users; at most {MAX_USERS} per dispatch",
            raw_users.len()
        ));
    }
    let mut required = |key: &str| {
        id(key).unwrap_or_else(|| {
            problems.push(format!(
                "{key} must be a string of 1 to {MAX_ID_CHARS} characters"
            ));
            String::new()
        })
    };
    let space_id = required("spaceId");
    let campaign_id = required("campaignId");
    let touchpoint_id = required("touchpointId");
    let strategy_id = match m.get("strategyId") {
        None | Some(Value::Null) => None,
        Some(_) => match id("strategyId") {
            Some(s) => Some(s),
            None => {
                problems.push("strategyId must be a string".into());
                None
            }
        },
    };
    let template_values = match m.get("templateValues") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(t)) => t.clone(),
        Some(_) => {
            problems.push("templateValues must be an object".into());
            Map::new()
        }
    };
    Ok((
        Dispatch {
            dispatch_id: DispatchId::new(dispatch_id),
            project_id,
            space_id,
            campaign_id,
            strategy_id,
            touchpoint_id: TouchpointId::new(touchpoint_id),
            template_values,
            users,
        },
        problems,
    ))
}

/// Checks the dispatch against its touchpoint and returns the `temData` values (before
/// per-user rendering), or why every user of the dispatch fails.
pub fn resolve_template(
    d: &Dispatch,
    tp: Option<&Touchpoint>,
) -> Result<Map<String, Value>, String> {
    resolve_template_with(d, tp, &HashMap::new())
}

/// [`resolve_template`] with the selectable codes of API-backed enum parameters, by
/// identifier, where a list is known (codes of a parameter with no known list are accepted).
pub fn resolve_template_with(
    d: &Dispatch,
    tp: Option<&Touchpoint>,
    api_codes: &HashMap<String, HashSet<String>>,
) -> Result<Map<String, Value>, String> {
    let Some(tp) = tp else {
        return Err(format!("touchpoint {} does not exist", d.touchpoint_id));
    };
    if !tp.enabled {
        return Err(format!("touchpoint {} is disabled", tp.id));
    }
    if !tp.space_ids.contains(&d.space_id) {
        return Err(format!(
            "touchpoint {} is not authorized for space {}",
            tp.id, d.space_id
        ));
    }
    let attribute_ids: HashSet<&str> = tp
        .spec
        .user_attributes
        .iter()
        .map(|a| a.identifier.as_str())
        .collect();
    let mut problems = Vec::new();
    for key in d.template_values.keys() {
        if !tp.spec.template_params.iter().any(|p| p.identifier == *key) {
            problems.push(format!(
                "templateValues.{key} is not a parameter of the touchpoint"
            ));
        }
    }
    let mut out = Map::new();
    for p in &tp.spec.template_params {
        let given = d
            .template_values
            .get(&p.identifier)
            .filter(|v| !v.is_null());
        let value = match (given, &p.default) {
            (Some(v), _) => {
                let ctx = ValueContext {
                    param_type: p.param_type,
                    enum_spec: p.enum_spec.as_ref(),
                    attribute_ids: &attribute_ids,
                    api_codes: api_codes.get(&p.identifier),
                };
                match check_template_value(v, &ctx) {
                    Ok(v) => v,
                    Err(message) => {
                        problems.push(format!("templateValues.{} {message}", p.identifier));
                        Value::Null
                    }
                }
            }
            (None, Some(default)) => default.clone(),
            (None, None) if p.required => {
                problems.push(format!("templateValues.{} is required", p.identifier));
                Value::Null
            }
            (None, None) => Value::Null,
        };
        out.insert(p.identifier.clone(), value);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(format!("invalid dispatch: {}", problems.join("; ")))
    }
}

/// The `orderNo` of batch `index` of a dispatch: the same on every attempt and every
/// re-processing, unique across projects and dispatches.
pub fn order_no(project: ProjectId, dispatch_id: &str, index: usize) -> OrderNo {
    let mut h = Sha256::new();
    h.update(project.to_be_bytes());
    h.update((dispatch_id.len() as u64).to_be_bytes());
    h.update(dispatch_id.as_bytes());
    h.update((index as u64).to_be_bytes());
    OrderNo::new(hex::encode(&h.finalize()[..16]))
}

/// One batch to send.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedBatch {
    pub index: usize,
    pub order_no: OrderNo,
    pub users: Vec<UserData>,
}

fn is_empty(v: &Value) -> bool {
    matches!(v, Value::Null) || v.as_str().is_some_and(str::is_empty)
}

/// Maps a user's attributes to the touchpoint's identifiers (protocol §1.1).
pub fn dynamic_data(tp: &Touchpoint, user: &DispatchUser) -> Map<String, Value> {
    tp.spec
        .user_attributes
        .iter()
        .map(|a| {
            let value = user
                .attributes
                .get(&a.attribute)
                .filter(|v| !is_empty(v))
                .or(a.default.as_ref())
                .cloned()
                .unwrap_or(Value::Null);
            (a.identifier.clone(), value)
        })
        .collect()
}

/// Renders text parameters' `{{identifier}}` placeholders with one user's dynamicData.
pub fn render_for_user(
    tp: &Touchpoint,
    tem: &Map<String, Value>,
    dynamic: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = tem.clone();
    for p in tp
        .spec
        .template_params
        .iter()
        .filter(|p| p.param_type == ParamType::Text)
    {
        let Some(Value::String(text)) = tem.get(&p.identifier) else {
            continue;
        };
        if !text.contains("{{") {
            continue;
        }
        let mut rendered = String::with_capacity(text.len());
        for segment in segments(text) {
            match segment {
                Segment::Literal(s) => rendered.push_str(s),
                Segment::Placeholder(name) => match dynamic.get(name) {
                    Some(Value::String(s)) => rendered.push_str(s),
                    Some(Value::Null) | None => {}
                    Some(other) => rendered.push_str(&other.to_string()),
                },
            }
        }
        out.insert(p.identifier.clone(), Value::String(rendered));
    }
    out
}

/// Splits a valid dispatch into batches of the touchpoint's batch size, each user mapped and
/// rendered.
pub fn plan(d: &Dispatch, tp: &Touchpoint, tem: &Map<String, Value>) -> Vec<PlannedBatch> {
    (0..batch_count(d, tp))
        .map(|index| plan_batch(d, tp, tem, index))
        .collect()
}

/// How many batches the dispatch makes at the touchpoint's batch size.
pub fn batch_count(d: &Dispatch, tp: &Touchpoint) -> usize {
    batches_of(d, usize::from(tp.spec.batch_size))
}

/// How many batches the dispatch makes at `batch_size` users each.
pub fn batches_of(d: &Dispatch, batch_size: usize) -> usize {
    d.users.len().div_ceil(batch_size.max(1))
}

/// The users of batch `index` at `batch_size` users per batch.
pub fn batch_users(d: &Dispatch, batch_size: usize, index: usize) -> &[DispatchUser] {
    d.users
        .chunks(batch_size.max(1))
        .nth(index)
        .unwrap_or_default()
}

/// Batch `index` of [`plan`] alone, so a sender can map and render each batch when it is
/// about to go out instead of holding every user's rendered data for the whole dispatch.
pub fn plan_batch(
    d: &Dispatch,
    tp: &Touchpoint,
    tem: &Map<String, Value>,
    index: usize,
) -> PlannedBatch {
    plan_batch_sized(d, tp, tem, usize::from(tp.spec.batch_size), index)
}

/// [`plan_batch`] at the batch size the dispatch was opened with (which the touchpoint may
/// have changed since).
pub fn plan_batch_sized(
    d: &Dispatch,
    tp: &Touchpoint,
    tem: &Map<String, Value>,
    batch_size: usize,
    index: usize,
) -> PlannedBatch {
    PlannedBatch {
        index,
        order_no: order_no(d.project_id, &d.dispatch_id, index),
        users: batch_users(d, batch_size, index)
            .iter()
            .map(|u| {
                let dynamic = dynamic_data(tp, u);
                let tem_data = render_for_user(tp, tem, &dynamic);
                UserData {
                    gid: u.gid,
                    dynamic_data: dynamic,
                    tem_data,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass reading of a message's text answers exactly what reading the whole value
    /// answers, for well-formed messages and for every way of being malformed or invalid.
    #[test]
    fn reading_the_text_once_answers_what_the_value_reading_answers() {
        let ok = r#"{"dispatchId":" d-1 ","projectId":1,"spaceId":"s","campaignId":"c",
            "strategyId":"st","touchpointId":"tp_1","templateValues":{"title":"Hi"},
            "users":[{"gid":1,"attributes":{"name":"A"}},{"gid":2}]}"#;
        let cases = [
            ok.to_owned(),
            ok.replace(r#""strategyId":"st","#, ""),
            ok.replace(r#""strategyId":"st""#, r#""strategyId":null"#),
            ok.replace(r#""templateValues":{"title":"Hi"},"#, ""),
            ok.replace(r#""tp_1","#, r#""tp_1","extra":true,"#),
            ok.replace(r#""tp_1","#, r#""tp_1","extra":1,"extra":2,"#),
            ok.replace(r#""projectId":1"#, r#""projectId":1.0"#),
            ok.replace(r#""gid":2"#, r#""gid":2.0"#),
            ok.replace(r#""gid":2"#, r#""gid":1"#),
            ok.replace(r#""gid":2"#, r#""gid":-2"#),
            ok.replace(r#""gid":2"#, r#""gid":"2""#),
            ok.replace(r#"{"gid":2}"#, r#"{"gid":2,"attributes":[1]}"#),
            ok.replace(r#"{"name":"A"}"#, r#"{"name":"A","name":"B"}"#),
            ok.replace(r#""spaceId":"s","#, ""),
            ok.replace(r#""spaceId":"s""#, r#""spaceId":"  ""#),
            ok.replace(r#""strategyId":"st""#, r#""strategyId":7"#),
            ok.replace(r#"{"title":"Hi"}"#, r#""x""#),
            ok.replace(r#""dispatchId":" d-1 ","#, ""),
            ok.replace(r#"[{"gid":1,"attributes":{"name":"A"}},{"gid":2}]"#, "[]"),
            ok.replace(r#""users":"#, r#""users":{"a":"#)
                .replace("}]}", "}]}}"),
            "[]".to_owned(),
            r#"["d-1",1,"s","c",null,"tp_1",null,[{"gid":1}]]"#.to_owned(),
            ok.replace(r#"{"gid":2}"#, "[2]"),
            ok.replace(r#"{"gid":2}"#, r#"{"gid":2,"gid":3}"#),
            ok.replace(r#"{"gid":2}"#, r#"{"gid":2,"extra":1}"#),
            ok.replace(r#"{"gid":2}"#, r#"{"attributes":null}"#),
            "not json".to_owned(),
            format!("{ok} trailing"),
        ];
        for text in &cases {
            let by_value = crate::json::parse_strict_str(text)
                .map_err(|e| Malformed(format!("not JSON: {e}")))
                .and_then(|v| read_dispatch(&v));
            assert_eq!(read_dispatch_text(text), by_value, "{text}");
        }
        let (d, problems) = read_dispatch_text(ok).unwrap();
        assert!(problems.is_empty());
        assert_eq!(d.dispatch_id, "d-1", "trimmed like the value reading");
        assert_eq!(d.users[0].attributes["name"], "A");
    }
    use crate::input::{UrlPolicy, parse_touchpoint};
    use serde_json::json;

    fn touchpoint(batch: u16) -> Touchpoint {
        let body = json!({
            "name": "券中心", "kind": "benefit", "url": "https://x.example.com/t", "batchSize": batch,
            "userAttributes": [
                {"attribute": "usr_phone", "identifier": "phone", "displayName": "p"},
                {"attribute": "usr_name", "identifier": "name", "displayName": "n", "default": "会员"}
            ],
            "templateParams": [
                {"identifier": "title", "displayName": "t", "type": "text", "required": true},
                {"identifier": "startDate", "displayName": "d", "type": "date", "required": true},
                {"identifier": "amount", "displayName": "a", "type": "number", "default": 10},
                {"identifier": "jump", "displayName": "j", "type": "enum", "required": true,
                 "enum": {"source": "manual", "options": [{"code": "JUMP_H5", "name": "h5"}]}},
                {"identifier": "tags", "displayName": "g", "type": "enum",
                 "enum": {"multiple": true, "source": "manual", "options": [{"code": "A", "name": "a"}, {"code": "B", "name": "b"}]}}
            ]
        });
        let input = parse_touchpoint(
            &body,
            &UrlPolicy {
                allow_plain_http: false,
            },
            false,
        )
        .unwrap();
        Touchpoint {
            id: "tp_1".into(),
            project_id: 1,
            spec: input.spec,
            token: None,
            rotation: None,
            paused: None,
            enabled: true,
            space_ids: vec!["space-a".into()],
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn message(users: Value) -> Value {
        json!({
            "dispatchId": "cmp-42/node-7/2026-11-29T10:00:00Z/0001", "projectId": 1, "spaceId": "space-a",
            "campaignId": "cmp-42", "strategyId": "node-7", "touchpointId": "tp_1",
            "templateValues": {"title": "Hello {{name}}, {{phone}}", "startDate": "2026-12-01", "amount": "100", "jump": "JUMP_H5"},
            "users": users
        })
    }

    #[test]
    fn plans_mapped_rendered_batches_with_stable_order_numbers() {
        let tp = touchpoint(2);
        let users = json!([
            {"gid": 1, "attributes": {"usr_name": "Alice", "usr_phone": "13000000001"}},
            {"gid": 2, "attributes": {"usr_name": "", "usr_phone": 13000000002_i64}},
            {"gid": 3}
        ]);
        let (d, problems) = read_dispatch(&message(users)).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let tem = resolve_template(&d, Some(&tp)).unwrap();
        assert_eq!(
            tem["amount"],
            json!(100),
            "numeric strings are sent as numbers"
        );
        assert_eq!(tem["tags"], Value::Null);
        let batches = plan(&d, &tp, &tem);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].users.len(), 2);
        let u = &batches[0].users;
        assert_eq!(u[0].tem_data["title"], "Hello Alice, 13000000001");
        assert_eq!(
            u[1].dynamic_data["name"], "会员",
            "empty values take the default"
        );
        assert_eq!(u[1].tem_data["title"], "Hello 会员, 13000000002");
        assert_eq!(
            batches[1].users[0].dynamic_data["phone"],
            Value::Null,
            "the key is always present"
        );
        assert_eq!(batches[0].order_no, order_no(1, &d.dispatch_id, 0));
        assert_eq!(batches[0].order_no.len(), 32);
        assert!(
            batches[0]
                .order_no
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(batches[0].order_no, batches[1].order_no);
        assert_ne!(order_no(1, "a", 0), order_no(2, "a", 0));
        assert_ne!(order_no(1, "a1", 0), order_no(1, "a", 10));
    }

    #[test]
    fn refuses_what_the_touchpoint_does_not_allow() {
        let tp = touchpoint(500);
        let (d, _) = read_dispatch(&message(json!([{"gid": 1}]))).unwrap();
        assert!(
            resolve_template(&d, None)
                .unwrap_err()
                .contains("does not exist")
        );
        let mut off = tp.clone();
        off.enabled = false;
        assert!(
            resolve_template(&d, Some(&off))
                .unwrap_err()
                .contains("disabled")
        );
        let mut elsewhere = tp.clone();
        elsewhere.space_ids = vec!["space-b".into()];
        assert!(
            resolve_template(&d, Some(&elsewhere))
                .unwrap_err()
                .contains("not authorized")
        );
        for (key, value, needle) in [
            ("startDate", json!("2026-13-01"), "startDate"),
            ("amount", json!("lots"), "amount"),
            ("jump", json!("NOPE"), "jump"),
            ("tags", json!(["A", "C"]), "tags"),
            ("title", Value::Null, "title is required"),
            ("unknown", json!(1), "unknown is not a parameter"),
        ] {
            let mut m = message(json!([{"gid": 1}]));
            m["templateValues"][key] = value;
            let (d, _) = read_dispatch(&m).unwrap();
            let err = resolve_template(&d, Some(&tp)).unwrap_err();
            assert!(err.contains(needle), "{key}: {err}");
        }
    }

    #[test]
    fn envelope_problems_are_malformed_and_content_problems_invalid() {
        assert!(read_dispatch(&json!([])).is_err());
        assert!(read_dispatch(&json!({"dispatchId": "d", "projectId": "1", "users": []})).is_err());
        assert!(read_dispatch(&message(json!([{"gid": "1"}]))).is_err());
        assert!(read_dispatch(&message(json!([{"gid": 1.5}]))).is_err());
        let (d, problems) =
            read_dispatch(&message(json!([{"gid": 1}, {"gid": 1}, {"gid": 2}]))).unwrap();
        assert_eq!(d.users.len(), 2, "each gid once");
        assert!(problems[0].contains("more than once"));
        let (d, problems) = read_dispatch(&message(json!([{"gid": -7}, {"gid": 3}]))).unwrap();
        assert_eq!(d.users.len(), 2, "every user is named, so each can fail");
        assert_eq!(problems, ["gid must not be negative (got -7)"]);
        let (_, problems) = read_dispatch(&message(json!([]))).unwrap();
        assert!(problems[0].contains("at least one"));
        let many: Vec<Value> = (0..10_001).map(|g| json!({"gid": g})).collect();
        let (_, problems) = read_dispatch(&message(Value::Array(many))).unwrap();
        assert!(problems[0].contains("at most 10000"));
        let mut m = message(json!([{"gid": 1}]));
        m.as_object_mut().unwrap().remove("touchpointId");
        let (_, problems) = read_dispatch(&m).unwrap();
        assert!(problems[0].contains("touchpointId"));
    }
}
