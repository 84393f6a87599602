//! Property tests for everything that reads outside input: the receipt parser, the dispatch
//! parser, the template renderer and touchpoint validation. Each must never panic, whatever it
//! is given, and what is written by the rules must read back as written.

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use touchpoint::dispatch::{Dispatch, DispatchUser, read_dispatch, render_for_user};
use touchpoint::input::parse_touchpoint;
use touchpoint::json::parse_strict;
use touchpoint::protocol::{ReceiptReading, UserStatus, read_receipt, settle_sync};
use touchpoint::template::{Segment, segments};
use touchpoint::view::TouchpointView;
use touchpoint::{Kind, Touchpoint, UrlPolicy};

const LAX: UrlPolicy = UrlPolicy {
    allow_plain_http: true,
};

/// Characters that make trouble: quotes, braces, escapes, NUL and other controls, CJK,
/// combining marks, emoji, a lone surrogate's replacement.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => prop::sample::select(vec![
            '{', '}', '"', '\\', '\0', '\n', '\t', '\u{7f}', ' ', '$', '.', '-', '_', '券', '中',
            '\u{301}', '😀', '\u{fffd}', '\u{200b}',
        ]),
        1 => any::<char>(),
    ]
}

fn nasty_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(nasty_char(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        nasty_string(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    3 => prop::sample::select(vec![
                        "gid", "status", "errorMsg", "code", "message", "orderNo",
                        "sendStatusList", "users", "dispatchId", "projectId", "spaceId",
                        "campaignId", "touchpointId", "templateValues", "attributes", "name",
                        "kind", "url", "batchSize", "receipt", "userAttributes",
                        "templateParams", "enum", "options", "type", "identifier",
                    ])
                    .prop_map(str::to_owned),
                    1 => nasty_string(6),
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn status_strategy() -> impl Strategy<Value = UserStatus> {
    prop_oneof![
        Just(UserStatus::Succeeded),
        nasty_string(20)
            .prop_filter("a reason is not empty", |r| !r.is_empty())
            .prop_map(UserStatus::failed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_receipt_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256), list in any::<bool>()) {
        let _ = read_receipt(&bytes, list);
    }

    #[test]
    fn the_receipt_parser_never_panics_on_json(v in any_json(), list in any::<bool>(), batch in prop::collection::vec(any::<i64>(), 0..20)) {
        let reading = read_receipt(v.to_string().as_bytes(), list);
        let (statuses, _) = settle_sync(&batch, reading);
        prop_assert_eq!(statuses.len(), batch.len(), "every user of the batch gets one status");
    }

    /// A receipt written by the protocol reads back as written, and settling it gives every gid
    /// of the batch exactly its status (missing ones fail, foreign ones are reported).
    #[test]
    fn receipts_read_back_as_written(entries in prop::collection::hash_map(any::<i64>(), status_strategy(), 0..30), extra in prop::collection::vec(any::<i64>(), 0..5)) {
        let list: Vec<Value> = entries.iter().map(|(gid, s)| json!({
            "gid": gid, "status": s.code(), "errorMsg": s.reason(),
        })).collect();
        let body = json!({"code": 0, "message": "", "orderNo": "o", "sendStatusList": list});
        let ReceiptReading::Statuses(read) = read_receipt(body.to_string().as_bytes(), true) else {
            panic!("a well-formed receipt was refused: {body}");
        };
        // Reasons longer than the cap are cut; these are short, so they come back whole.
        let expected: HashMap<i64, UserStatus> = entries.clone();
        prop_assert_eq!(&read, &expected);
        let mut batch: Vec<i64> = entries.keys().copied().collect();
        batch.extend(extra.iter().filter(|g| !entries.contains_key(g)));
        batch.sort_unstable();
        batch.dedup();
        let (statuses, unknown) = settle_sync(&batch, ReceiptReading::Statuses(read));
        prop_assert!(unknown.is_empty());
        prop_assert_eq!(statuses.len(), batch.len());
        for (gid, status) in batch.iter().zip(&statuses) {
            match entries.get(gid) {
                Some(s) => prop_assert_eq!(s, status),
                None => prop_assert_eq!(status, &UserStatus::failed("no status returned")),
            }
        }
    }

    #[test]
    fn the_dispatch_parser_never_panics(v in any_json()) {
        if let Ok((d, _)) = read_dispatch(&v) {
            prop_assert!(!d.dispatch_id.is_empty());
        }
    }

    #[test]
    fn the_strict_json_reader_never_panics_and_agrees_with_serde_json(bytes in prop::collection::vec(any::<u8>(), 0..128), v in any_json()) {
        let _ = parse_strict(&bytes);
        let text = v.to_string();
        // (Compared with serde_json's own reading: its float parsing is not exact round trip.)
        prop_assert_eq!(parse_strict(text.as_bytes()).unwrap(), serde_json::from_str::<Value>(&text).unwrap());
    }

    /// A dispatch as the campaign system writes it reads back unchanged and without problems.
    #[test]
    fn dispatches_read_back_as_written(
        id in nasty_string(40).prop_filter("an id", |s| !s.trim().is_empty() && s.trim() == s && !s.chars().any(char::is_control)),
        project in any::<i64>(),
        gids in prop::collection::hash_set(0..i64::MAX, 1..50),
        name in nasty_string(20),
        title in nasty_string(30),
    ) {
        let users: Vec<DispatchUser> = gids.iter().map(|g| {
            let mut attributes = Map::new();
            attributes.insert("usr_name".into(), Value::String(format!("{name}{g}")));
            DispatchUser { gid: *g, attributes }
        }).collect();
        let mut template_values = Map::new();
        template_values.insert("title".into(), Value::String(title));
        let d = Dispatch {
            dispatch_id: id.into(),
            project_id: project,
            space_id: "space-a".into(),
            campaign_id: "cmp".into(),
            strategy_id: None,
            touchpoint_id: "tp_1".into(),
            template_values,
            users,
        };
        let (read, problems) = read_dispatch(&serde_json::to_value(&d).unwrap()).unwrap();
        prop_assert!(problems.is_empty(), "{:?}", problems);
        prop_assert_eq!(read, d);
    }

    #[test]
    fn segments_never_panic_and_keep_every_literal_byte(text in nasty_string(60)) {
        let mut rebuilt = String::new();
        for s in segments(&text) {
            match s {
                Segment::Literal(l) => rebuilt.push_str(l),
                Segment::Placeholder(p) => {
                    prop_assert!(!p.contains("}}"));
                    rebuilt.push_str("{{");
                    rebuilt.push_str(p);
                    rebuilt.push_str("}}");
                }
            }
        }
        // Placeholders lose only the spaces trimmed inside their braces.
        let squeeze = |s: &str| s.replace(' ', "");
        prop_assert_eq!(squeeze(&rebuilt), squeeze(&text));
    }

    /// Rendering puts each user's value where its placeholder was and leaves literals alone.
    #[test]
    fn rendering_substitutes_each_placeholder_with_the_users_value(
        parts in prop::collection::vec(prop_oneof![
            nasty_string(10).prop_filter("no braces", |s| !s.contains('{') && !s.contains('}')).prop_map(|s| (false, s)),
            prop::sample::select(vec!["name", "phone"]).prop_map(|s| (true, s.to_owned())),
        ], 0..8),
        name in nasty_string(12),
        phone in nasty_string(12),
    ) {
        let tp = touchpoint_with_title();
        let text: String = parts.iter().map(|(p, s)| if *p { format!("{{{{{s}}}}}") } else { s.clone() }).collect();
        let expected: String = parts.iter().map(|(p, s)| match (p, s.as_str()) {
            (true, "name") => name.clone(),
            (true, _) => phone.clone(),
            (false, s) => s.to_owned(),
        }).collect();
        let mut tem = Map::new();
        tem.insert("title".into(), Value::String(text));
        let mut dynamic = Map::new();
        dynamic.insert("name".into(), Value::String(name));
        dynamic.insert("phone".into(), Value::String(phone));
        let out = render_for_user(&tp, &tem, &dynamic);
        prop_assert_eq!(out["title"].as_str().unwrap(), expected);
    }

    #[test]
    fn touchpoint_validation_never_panics(v in any_json(), replace in any::<bool>()) {
        let _ = parse_touchpoint(&v, &LAX, replace);
    }

    /// A touchpoint as the admin GETs it can be PUT back unchanged.
    #[test]
    fn a_valid_touchpoint_reads_back_from_its_own_view(
        name in prop::collection::vec(prop_oneof![prop::char::range('a', 'z'), Just('券'), Just('中')], 1..=15),
        batch in 1u16..=500,
        attrs in prop::collection::btree_set(prop::collection::vec(prop::char::range('a', 'z'), 1..8), 1..6),
        kind in prop::sample::select(vec!["notification", "benefit", "other"]),
        timeout in 5u32..=10_080,
        asynchronous in any::<bool>(),
    ) {
        let attributes: Vec<Value> = attrs.iter().map(|a| {
            let a: String = a.iter().collect();
            json!({"attribute": format!("usr_{a}"), "identifier": a, "displayName": a.to_uppercase()})
        }).collect();
        let first: String = attrs.iter().next().unwrap().iter().collect();
        let receipt = if asynchronous {
            json!({"mode": "async", "receiptUrl": "https://r.example.com/receipt", "timeoutMinutes": timeout})
        } else {
            json!({"mode": "sync"})
        };
        let body = json!({
            "name": name.iter().collect::<String>(), "kind": kind, "url": "https://r.example.com/touch",
            "batchSize": batch, "receipt": receipt, "userAttributes": attributes,
            "templateParams": [
                {"identifier": "title", "displayName": "标题", "type": "text", "required": true, "default": format!("Hi {{{{{first}}}}}")},
                {"identifier": "jump", "displayName": "跳转", "type": "enum", "required": false,
                 "enum": {"multiple": false, "source": "manual", "options": [{"code": "A", "name": "a"}]}}
            ]
        });
        let input = parse_touchpoint(&body, &LAX, false).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let tp = Touchpoint {
            id: "tp_1".into(), project_id: 1, spec: input.spec.clone(), token: None, rotation: None, paused: None, enabled: true,
            space_ids: vec![], version: 3, created_at: 0, updated_at: 0,
        };
        let view = serde_json::to_value(TouchpointView::from(&tp)).unwrap();
        let again = parse_touchpoint(&view, &LAX, true).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(again.spec, input.spec);
        prop_assert_eq!(again.version, Some(3));
    }
}

fn touchpoint_with_title() -> Touchpoint {
    let body = json!({
        "name": "t", "kind": Kind::Notification.as_str(), "url": "https://r.example.com/touch",
        "userAttributes": [
            {"attribute": "usr_name", "identifier": "name", "displayName": "n"},
            {"attribute": "usr_phone", "identifier": "phone", "displayName": "p"}
        ],
        "templateParams": [{"identifier": "title", "displayName": "t", "type": "text", "required": true}]
    });
    let spec = parse_touchpoint(&body, &LAX, false).unwrap().spec;
    Touchpoint {
        id: "tp_1".into(),
        project_id: 1,
        spec,
        token: None,
        rotation: None,
        paused: None,
        enabled: true,
        space_ids: vec![],
        version: 1,
        created_at: 0,
        updated_at: 0,
    }
}
