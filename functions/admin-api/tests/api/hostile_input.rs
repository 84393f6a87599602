//! Hostile input to the admin API and its authorization matrix.
//!
//! Every response passes through [`Api::send`], which fails on a 500 or a token in the body.

use crate::common::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use touchpoint_dispatcher::Handled;

async fn raw(api: &Api, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {ADMIN}"));
    if !content_type.is_empty() {
        req = req.header("content-type", content_type);
    }
    api.send(req.body(Body::from(body)).unwrap()).await
}

/// A valid body with one change.
fn with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut b = coupon();
    change(&mut b);
    b.to_string().into_bytes()
}

fn params(n: usize) -> Value {
    json!((0..n)
        .map(|i| json!({"identifier": format!("p{i}"), "displayName": "p", "type": "text", "required": false}))
        .collect::<Vec<_>>())
}

fn attributes(n: usize) -> Value {
    json!(
        (0..n)
            .map(|i| json!({"attribute": format!("a{i}"), "displayName": "a"}))
            .collect::<Vec<_>>()
    )
}

fn options(n: usize) -> Value {
    json!({"multiple": false, "source": "manual",
           "options": (0..n).map(|i| json!({"code": format!("C{i}"), "name": "c"})).collect::<Vec<_>>()})
}

/// (what, content type, body, expected status, text the answer must contain)
type Case = (&'static str, &'static str, Vec<u8>, u16, &'static str);

fn hostile_touchpoint_bodies() -> Vec<Case> {
    const J: &str = "application/json";
    let valid = coupon().to_string();
    let mut cases: Vec<Case> = vec![
        // The body as a whole.
        (
            "truncated JSON",
            J,
            b"{\"name\": ".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "invalid UTF-8",
            J,
            b"{\"name\": \"\xff\xfe\"}".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "lone surrogate escape",
            J,
            br#"{"name": "\ud800"}"#.to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "byte order mark",
            J,
            [b"\xef\xbb\xbf".as_slice(), valid.as_bytes()].concat(),
            400,
            "not valid JSON",
        ),
        (
            "two documents",
            J,
            format!("{valid}{valid}").into_bytes(),
            400,
            "not valid JSON",
        ),
        (
            "trailing garbage",
            J,
            format!("{valid} x").into_bytes(),
            400,
            "not valid JSON",
        ),
        ("array", J, b"[1,2]".to_vec(), 422, "must be an object"),
        (
            "string",
            J,
            b"\"touchpoint\"".to_vec(),
            422,
            "must be an object",
        ),
        ("number", J, b"42".to_vec(), 422, "must be an object"),
        ("null", J, b"null".to_vec(), 422, "must be an object"),
        ("empty object", J, b"{}".to_vec(), 422, "name"),
        (
            "10,000 nested arrays",
            J,
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            400,
            "recursion limit",
        ),
        (
            "200 nested objects",
            J,
            format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200)).into_bytes(),
            400,
            "recursion limit",
        ),
        (
            "deep nesting in a default",
            J,
            with(|b| {
                b["userAttributes"][0]["default"] =
                    serde_json::from_str(&format!("{}{}", "[".repeat(100), "]".repeat(100)))
                        .unwrap()
            }),
            422,
            "userAttributes[0].default",
        ),
        (
            "duplicate key at the top",
            J,
            valid
                .replacen("{\"batchSize\"", "{\"batchSize\":1,\"batchSize\"", 1)
                .into_bytes(),
            400,
            "duplicate key \\\"batchSize\\\"",
        ),
        (
            "duplicate key inside a parameter",
            J,
            valid
                .replacen(
                    "{\"displayName\":\"标题\"",
                    "{\"displayName\":\"x\",\"displayName\":\"标题\"",
                    1,
                )
                .into_bytes(),
            400,
            "duplicate key \\\"displayName\\\"",
        ),
        (
            "text/plain",
            "text/plain",
            valid.clone().into_bytes(),
            415,
            "application/json",
        ),
        (
            "no content type",
            "",
            valid.clone().into_bytes(),
            415,
            "application/json",
        ),
        (
            "form encoded",
            "application/x-www-form-urlencoded",
            b"name=x&kind=benefit".to_vec(),
            415,
            "application/json",
        ),
        (
            "10 MiB string",
            J,
            with(|b| b["description"] = json!("x".repeat(10 * 1024 * 1024))),
            413,
            "larger than",
        ),
        (
            "unknown field",
            J,
            with(|b| b["isAdmin"] = json!(true)),
            422,
            "isAdmin",
        ),
        (
            "unknown field in an attribute",
            J,
            with(|b| b["userAttributes"][0]["sql"] = json!("drop")),
            422,
            "userAttributes[0].sql",
        ),
        // Names.
        (
            "NUL byte in the name",
            J,
            with(|b| b["name"] = json!("券\u{0}中心")),
            422,
            "name",
        ),
        (
            "control character in the name",
            J,
            with(|b| b["name"] = json!("券\u{1b}[31m")),
            422,
            "name",
        ),
        (
            "16-character name",
            J,
            with(|b| b["name"] = json!("一二三四五六七八九十一二三四五六")),
            422,
            "at most 15",
        ),
        (
            "blank name",
            J,
            with(|b| b["name"] = json!("   ")),
            422,
            "name",
        ),
        (
            "name as a number",
            J,
            with(|b| b["name"] = json!(12345)),
            422,
            "name",
        ),
        (
            "name as an object",
            J,
            with(|b| b["name"] = json!({"zh": "券"})),
            422,
            "name",
        ),
        (
            "missing kind",
            J,
            with(|b| {
                b.as_object_mut().unwrap().remove("kind");
            }),
            422,
            "kind",
        ),
        (
            "unknown kind",
            J,
            with(|b| b["kind"] = json!("sms'; DROP TABLE")),
            422,
            "kind",
        ),
        // Numbers.
        (
            "batch size as a string",
            J,
            with(|b| b["batchSize"] = json!("500")),
            422,
            "batchSize",
        ),
        (
            "negative batch size",
            J,
            with(|b| b["batchSize"] = json!(-1)),
            422,
            "batchSize",
        ),
        (
            "batch size 0",
            J,
            with(|b| b["batchSize"] = json!(0)),
            422,
            "batchSize",
        ),
        (
            "batch size 501",
            J,
            with(|b| b["batchSize"] = json!(501)),
            422,
            "batchSize",
        ),
        (
            "fractional batch size",
            J,
            with(|b| b["batchSize"] = json!(1.5)),
            422,
            "batchSize",
        ),
        (
            "batch size 1e30",
            J,
            valid
                .replacen("\"batchSize\":500", "\"batchSize\":1e30", 1)
                .into_bytes(),
            422,
            "batchSize",
        ),
        (
            "batch size past u64",
            J,
            valid
                .replacen(
                    "\"batchSize\":500",
                    "\"batchSize\":184467440737095516160",
                    1,
                )
                .into_bytes(),
            422,
            "batchSize",
        ),
        (
            "negative receipt timeout",
            J,
            with(|b| b["receipt"]["timeoutMinutes"] = json!(-5)),
            422,
            "receipt.timeoutMinutes",
        ),
        (
            "huge receipt timeout",
            J,
            with(|b| b["receipt"]["timeoutMinutes"] = json!(u64::MAX)),
            422,
            "receipt.timeoutMinutes",
        ),
        (
            "request timeout 0",
            J,
            with(|b| b["requestTimeoutSeconds"] = json!(0)),
            422,
            "requestTimeoutSeconds",
        ),
        (
            "concurrency 1,000,000",
            J,
            with(|b| b["maxConcurrency"] = json!(1_000_000)),
            422,
            "maxConcurrency",
        ),
        (
            "number default that is text",
            J,
            with(|b| b["templateParams"][2]["default"] = json!("ten")),
            422,
            "templateParams[2].default",
        ),
        (
            "impossible date default",
            J,
            with(|b| b["templateParams"][1]["default"] = json!("2026-13-45")),
            422,
            "templateParams[1].default",
        ),
        // URLs and the token.
        (
            "missing URL",
            J,
            with(|b| {
                b.as_object_mut().unwrap().remove("url");
            }),
            422,
            "url",
        ),
        (
            "javascript URL",
            J,
            with(|b| b["url"] = json!("javascript:alert(1)")),
            422,
            "url",
        ),
        (
            "file URL",
            J,
            with(|b| b["url"] = json!("file:///etc/passwd")),
            422,
            "url",
        ),
        (
            "gopher URL",
            J,
            with(|b| b["url"] = json!("gopher://127.0.0.1:6379/_FLUSHALL")),
            422,
            "url",
        ),
        (
            "relative URL",
            J,
            with(|b| b["url"] = json!("/touch")),
            422,
            "url",
        ),
        (
            "URL with credentials",
            J,
            with(|b| b["url"] = json!("https://user:pass@coupons.example.com/touch")),
            422,
            "credentials",
        ),
        (
            "3,000-byte URL",
            J,
            with(|b| b["url"] = json!(format!("https://x.example.com/{}", "a".repeat(3_000)))),
            422,
            "url",
        ),
        (
            "plain http where https is required",
            J,
            with(|b| b["url"] = json!("http://coupons.example.com/touch")),
            422,
            "https",
        ),
        (
            "receipt URL with a fragment",
            J,
            with(|b| b["receipt"]["receiptUrl"] = json!("https://r.example.com/x#frag")),
            422,
            "receipt.receiptUrl",
        ),
        (
            "token as a number",
            J,
            with(|b| b["token"] = json!(123456)),
            422,
            "token",
        ),
        (
            "300-character token",
            J,
            with(|b| b["token"] = json!(format!("{SECRET}{}", "k".repeat(300)))),
            422,
            "token",
        ),
        (
            "token with a newline",
            J,
            with(|b| b["token"] = json!(format!("{SECRET}\nX-Injected: 1"))),
            422,
            "token",
        ),
        (
            "empty token",
            J,
            with(|b| b["token"] = json!("")),
            422,
            "token",
        ),
        (
            "whsec token that is not base64",
            J,
            with(|b| b["token"] = json!("whsec_%%%")),
            422,
            "token",
        ),
        // Receipts.
        (
            "unknown receipt mode",
            J,
            with(|b| b["receipt"]["mode"] = json!("psychic")),
            422,
            "receipt",
        ),
        (
            "async receipt without a URL",
            J,
            with(|b| {
                b["receipt"].as_object_mut().unwrap().remove("receiptUrl");
            }),
            422,
            "receipt.receiptUrl",
        ),
        // Parameters and their caps.
        (
            "no user attributes",
            J,
            with(|b| b["userAttributes"] = json!([])),
            422,
            "userAttributes",
        ),
        (
            "user attributes as an object",
            J,
            with(|b| b["userAttributes"] = json!({"a": 1})),
            422,
            "userAttributes",
        ),
        (
            "51 user attributes",
            J,
            with(|b| b["userAttributes"] = attributes(51)),
            422,
            "at most 50",
        ),
        (
            "10,000 user attributes",
            J,
            with(|b| b["userAttributes"] = attributes(10_000)),
            422,
            "at most 50",
        ),
        (
            "51 template parameters",
            J,
            with(|b| b["templateParams"] = params(51)),
            422,
            "at most 50",
        ),
        (
            "10,000 template parameters",
            J,
            with(|b| b["templateParams"] = params(10_000)),
            422,
            "at most 50",
        ),
        (
            "101 enum options",
            J,
            with(|b| b["templateParams"][3]["enum"] = options(101)),
            422,
            "at most 100",
        ),
        (
            "10,000 enum options",
            J,
            with(|b| b["templateParams"][3]["enum"] = options(10_000)),
            422,
            "at most 100",
        ),
        (
            "identifier with a space",
            J,
            with(|b| b["userAttributes"][0]["identifier"] = json!("my phone")),
            422,
            "userAttributes[0].identifier",
        ),
        (
            "identifier with a quote",
            J,
            with(|b| b["templateParams"][0]["identifier"] = json!("t\"itle")),
            422,
            "templateParams[0].identifier",
        ),
        (
            "duplicate identifiers",
            J,
            with(|b| b["userAttributes"][1]["identifier"] = json!("phone")),
            422,
            "duplicate identifier",
        ),
        (
            "unknown parameter type",
            J,
            with(|b| b["templateParams"][0]["type"] = json!("script")),
            422,
            "templateParams[0].type",
        ),
        (
            "placeholder naming no attribute",
            J,
            with(|b| b["templateParams"][0]["default"] = json!("Hi {{password}}")),
            422,
            "password",
        ),
        (
            "enum without options",
            J,
            with(|b| b["templateParams"][3]["enum"]["options"] = json!([])),
            422,
            "templateParams[3].enum",
        ),
        (
            "duplicate enum codes",
            J,
            with(|b| b["templateParams"][3]["enum"]["options"][1]["code"] = json!("JUMP_H5")),
            422,
            "duplicate code",
        ),
        (
            "10,000-character display name",
            J,
            with(|b| b["templateParams"][0]["displayName"] = json!("名".repeat(10_000))),
            422,
            "templateParams[0].displayName",
        ),
        (
            "required as a string",
            J,
            with(|b| b["templateParams"][0]["required"] = json!("yes")),
            422,
            "templateParams[0].required",
        ),
    ];
    // Required fields set to null (optional ones read null as absent).
    for field in ["name", "kind", "url", "userAttributes"] {
        cases.push((
            "a field set to null",
            J,
            with(|b| b[field] = Value::Null),
            422,
            field,
        ));
    }
    cases
}

#[tokio::test]
async fn hostile_touchpoint_bodies_get_a_clear_4xx_and_store_nothing() {
    let api = Api::new();
    let cases = hostile_touchpoint_bodies();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    for (what, content_type, body, status, needle) in &cases {
        let r = raw(
            &api,
            Method::POST,
            "/v1/touchpoints",
            content_type,
            body.clone(),
        )
        .await;
        let text = r.body.to_string();
        assert_eq!(r.status.as_u16(), *status, "{what}: {text}");
        assert!(!r.error_code().is_empty(), "{what}: {text}");
        assert!(
            text.contains(needle),
            "{what}: the answer does not mention {needle:?}: {}",
            &text[..text.len().min(600)]
        );
    }
    let list = api.get("/v1/touchpoints").await;
    assert_eq!(list.body["items"], json!([]), "a hostile body was stored");

    // The same bodies as a replacement of an existing (disabled) touchpoint change nothing.
    let id = id_of(&api.create(coupon()).await);
    api.disable(&id).await;
    let before = api.get(&format!("/v1/touchpoints/{id}")).await.body;
    for (what, content_type, body, _, _) in &cases {
        let r = raw(
            &api,
            Method::PUT,
            &format!("/v1/touchpoints/{id}"),
            content_type,
            body.clone(),
        )
        .await;
        assert!(r.status.is_client_error(), "{what}: {}", r.status);
    }
    assert_eq!(api.get(&format!("/v1/touchpoints/{id}")).await.body, before);
    eprintln!(
        "{} hostile touchpoint bodies refused on create and on replace",
        cases.len()
    );
}

#[tokio::test]
async fn hostile_bodies_on_the_other_write_routes_are_refused() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    let spaces = format!("/v1/touchpoints/{id}/spaces");
    let campaign = format!("/v1/touchpoints/{id}/campaigns/c1");
    let cases: Vec<(String, Vec<u8>, u16)> = vec![
        (spaces.clone(), br#"{"spaceIds": "space-a"}"#.to_vec(), 422),
        (
            spaces.clone(),
            br#"{"spaceIds": ["a\u0000b"]}"#.to_vec(),
            422,
        ),
        (spaces.clone(), br#"{"spaceIds": [1, 2]}"#.to_vec(), 422),
        (
            spaces.clone(),
            json!({"spaceIds": (0..10_000).map(|i| format!("s{i}")).collect::<Vec<_>>()})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            spaces.clone(),
            br#"{"spaceIds": [], "spaceIds": ["x"]}"#.to_vec(),
            400,
        ),
        (campaign.clone(), br#"{"state": "exploded"}"#.to_vec(), 422),
        (
            campaign.clone(),
            br#"{"state": "running", "name": 5}"#.to_vec(),
            422,
        ),
        (
            campaign.clone(),
            br#"{"state": "draft", "state": "running"}"#.to_vec(),
            400,
        ),
        (
            format!("/v1/touchpoints/{id}/test"),
            br#"{"users": "all"}"#.to_vec(),
            422,
        ),
        // A user written as an array is not a user object (a derived reader would take it).
        (
            format!("/v1/touchpoints/{id}/test"),
            br#"{"users": [[1]]}"#.to_vec(),
            422,
        ),
        (spaces.clone(), br#"[["a"], 1]"#.to_vec(), 422),
        (
            format!("/v1/touchpoints/{id}/test"),
            json!({"users": (0..10_000).map(|g| json!({"gid": g})).collect::<Vec<_>>()})
                .to_string()
                .into_bytes(),
            422,
        ),
    ];
    for (path, body, status) in cases {
        let method = if path.ends_with("/test") {
            Method::POST
        } else {
            Method::PUT
        };
        let r = raw(&api, method, &path, "application/json", body).await;
        assert_eq!(r.status.as_u16(), status, "{path}: {}", r.body);
    }
    let tp = api.get(&format!("/v1/touchpoints/{id}")).await.body;
    assert_eq!(tp["spaceIds"], json!([]));
    assert_eq!(tp["version"], 1);
    let refs = api
        .get(&format!("/v1/touchpoints/{id}/campaigns"))
        .await
        .body;
    assert_eq!(refs["items"], json!([]));
}

fn dispatch_body(touchpoint: &str, users: Value) -> Value {
    json!({"dispatchId": "d-1", "projectId": 1, "spaceId": "space-a", "campaignId": "c1",
           "touchpointId": touchpoint, "templateValues": {"title": "Hi", "startDate": "2026-12-01", "jump": "JUMP_H5"},
           "users": users})
}

/// Over HTTP, a dispatch that could only end in every user failed is refused with the reason
/// and nothing is queued: the campaign system can fix it (over SQS nobody could be told).
#[tokio::test]
async fn the_http_intake_refuses_a_dispatch_it_could_only_fail() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    let users = |n: i64| json!((0..n).map(|g| json!({"gid": g})).collect::<Vec<_>>());
    let mut missing = dispatch_body(&id, users(3));
    missing.as_object_mut().unwrap().remove("spaceId");
    let mut values = dispatch_body(&id, users(2));
    values["templateValues"] = json!("x");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "10,001 users",
            dispatch_body(&id, users(10_001)),
            "at most 10000",
        ),
        (
            "negative gids",
            dispatch_body(&id, json!([{"gid": -1}, {"gid": 2}])),
            "must not be negative",
        ),
        (
            "duplicate gids",
            dispatch_body(&id, json!([{"gid": 5}, {"gid": 5}])),
            "more than once",
        ),
        (
            "no users",
            dispatch_body(&id, json!([])),
            "at least one user",
        ),
        ("no spaceId", missing, "spaceId"),
        (
            "attributes as a list",
            dispatch_body(&id, json!([{"gid": 1, "attributes": [1]}])),
            "attributes must be an object",
        ),
        ("template values as a string", values, "templateValues"),
    ];
    for (what, body, reason) in cases {
        let r = api
            .call(Method::POST, "/v1/dispatches", Some(CAMPAIGN), Some(body))
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            r.body
        );
        assert_eq!(r.error_code(), "invalid_dispatch", "{what}");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{what}: {message}");
        let read = api
            .call(Method::GET, "/v1/dispatches/d-1", Some(CAMPAIGN), None)
            .await;
        assert_eq!(read.status, StatusCode::NOT_FOUND, "{what}: nothing queued");
    }
    // A gid written as 3.0 is the integer 3 (JSON Schema's integer).
    let r = api
        .call(
            Method::POST,
            "/v1/dispatches",
            Some(CAMPAIGN),
            Some(dispatch_body(&id, json!([{"gid": 3.0}]))),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
}

/// Hostile dispatches: refused at intake when unreadable; otherwise every user they name
/// ends in a recorded failure with the reason, and the message is done (no retry loop).
#[tokio::test]
async fn hostile_dispatches_end_in_a_recorded_failure_or_a_refusal_never_a_retry() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    api.put(
        &format!("/v1/touchpoints/{id}/spaces"),
        json!({"spaceIds": ["space-a"]}),
    )
    .await;
    let foreign = api
        .call(
            Method::POST,
            "/v1/touchpoints",
            Some(ADMIN_2),
            Some(named("外部")),
        )
        .await;
    let foreign = id_of(&foreign.body);
    let users = |n: i64| json!((0..n).map(|g| json!({"gid": g})).collect::<Vec<_>>());

    // Unreadable: nobody can be told per user.
    let unreadable: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not JSON", b"users: everyone".to_vec(), 400),
        (
            "duplicate keys",
            br#"{"dispatchId":"a","dispatchId":"b","projectId":1,"users":[]}"#.to_vec(),
            400,
        ),
        ("an array", b"[]".to_vec(), 422),
        (
            "no dispatchId",
            json!({"projectId": 1, "users": users(1)})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "projectId as a string",
            json!({"dispatchId": "x", "projectId": "1", "users": users(1)})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "users as an object",
            json!({"dispatchId": "x", "projectId": 1, "users": {"gid": 1}})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "gid as a string",
            dispatch_body(&id, json!([{"gid": "1"}]))
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "gid past i64",
            dispatch_body(&id, json!([{"gid": u64::MAX}]))
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "fractional gid",
            dispatch_body(&id, json!([{"gid": 1.5}]))
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "a user that is a number",
            dispatch_body(&id, json!([7])).to_string().into_bytes(),
            422,
        ),
    ];
    for (what, body, status) in &unreadable {
        let r = api
            .send(
                Request::post("/v1/dispatches")
                    .header("authorization", format!("Bearer {CAMPAIGN}"))
                    .header("content-type", "application/json")
                    .body(Body::from(body.clone()))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status.as_u16(), *status, "{what}: {}", r.body);
        if let Ok(v) = touchpoint::json::parse_strict(body) {
            let handled = api.dispatcher.handle(&v).await.unwrap();
            assert!(
                matches!(handled, Handled::Malformed(_)),
                "{what}: {handled:?}"
            );
        }
    }

    // Readable but invalid: each user fails with the reason; the message is done.
    let mut missing = dispatch_body(&id, users(3));
    missing.as_object_mut().unwrap().remove("spaceId");
    let invalid: Vec<(&str, Value, &str)> = vec![
        (
            "10,001 users",
            dispatch_body(&id, users(10_001)),
            "at most 10000",
        ),
        (
            "negative gids",
            dispatch_body(&id, json!([{"gid": -1}, {"gid": 2}])),
            "must not be negative",
        ),
        (
            "duplicate gids",
            dispatch_body(&id, json!([{"gid": 5}, {"gid": 5}, {"gid": 6}])),
            "more than once",
        ),
        (
            "no users",
            dispatch_body(&id, json!([])),
            "at least one user",
        ),
        (
            "unknown touchpoint",
            dispatch_body("tp_01JDX3ZZZZZZZZZZZZZZZZZZZZ", users(3)),
            "does not exist",
        ),
        (
            "another project's touchpoint",
            dispatch_body(&foreign, users(3)),
            "does not exist",
        ),
        ("no spaceId", missing, "spaceId"),
        (
            "attributes as a list",
            dispatch_body(&id, json!([{"gid": 1, "attributes": [1]}])),
            "attributes must be an object",
        ),
        (
            "template values as a string",
            {
                let mut d = dispatch_body(&id, users(2));
                d["templateValues"] = json!("x");
                d
            },
            "templateValues",
        ),
        (
            "a template value of the wrong type",
            {
                let mut d = dispatch_body(&id, users(2));
                d["templateValues"]["startDate"] = json!(20261201);
                d
            },
            "startDate",
        ),
        (
            "an unknown template value",
            {
                let mut d = dispatch_body(&id, users(2));
                d["templateValues"]["evil"] = json!(1);
                d
            },
            "evil",
        ),
    ];
    for (n, (what, mut body, reason)) in invalid.into_iter().enumerate() {
        let dispatch_id = format!("hostile-{n}");
        body["dispatchId"] = json!(dispatch_id);
        let named_users = body["users"].as_array().map_or(0, |u| {
            u.iter()
                .filter_map(|u| u["gid"].as_i64())
                .collect::<std::collections::HashSet<_>>()
                .len()
        });
        let handled = api.dispatcher.handle(&body).await.unwrap();
        assert_eq!(handled, Handled::Done, "{what}: no retry");
        let again = api.dispatcher.handle(&body).await.unwrap();
        assert_eq!(again, Handled::Done, "{what}: a redelivery is done at once");
        let d = api
            .call(
                Method::GET,
                &format!("/v1/dispatches/{dispatch_id}"),
                Some(CAMPAIGN),
                None,
            )
            .await;
        assert_eq!(d.status, StatusCode::OK, "{what}: {}", d.body);
        assert_eq!(d.body["state"], "rejected", "{what}: {}", d.body);
        assert!(
            d.body["rejected"].as_str().unwrap_or("").contains(reason),
            "{what}: {}",
            d.body["rejected"]
        );
        assert_eq!(
            d.body["counts"]["failed"], named_users,
            "{what}: every user fails"
        );
        assert_eq!(d.body["counts"]["pending"], 0, "{what}");
    }
}

/// Who may call what: every route × every caller, in one table. Role checks come before
/// lookups (403 says nothing about what exists); another project's ids are 404.
#[tokio::test]
async fn the_authorization_matrix() {
    const CALLERS: [Option<&str>; 8] = [
        None,
        Some("not-a-key-of-this-service"),
        Some(ADMIN),
        Some(OPERATOR_A),
        Some(CAMPAIGN),
        Some(ADMIN_2),
        Some(OPERATOR_2),
        Some(CAMPAIGN_2),
    ];
    //  none, bad key, admin, operator, campaign, foreign admin, foreign operator, foreign campaign
    let table: Vec<(Method, &str, Option<Value>, [u16; 8])> = vec![
        (
            Method::GET,
            "/healthz",
            None,
            [200, 200, 200, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/v1/openapi.json",
            None,
            [200, 200, 200, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/v1/touchpoints",
            Some(named("新的")),
            [401, 401, 201, 403, 403, 201, 403, 403],
        ),
        (
            Method::GET,
            "/v1/touchpoints",
            None,
            [401, 401, 200, 403, 403, 200, 403, 403],
        ),
        (
            Method::GET,
            "/v1/touchpoints/{id}",
            None,
            [401, 401, 200, 403, 403, 404, 403, 403],
        ),
        (
            Method::PUT,
            "/v1/touchpoints/{id}",
            Some({
                let mut b = coupon();
                b["version"] = json!(2);
                b
            }),
            [401, 401, 409, 403, 403, 404, 403, 403],
        ),
        (
            Method::DELETE,
            "/v1/touchpoints/{id}",
            None,
            [401, 401, 409, 403, 403, 404, 403, 403],
        ),
        (
            Method::POST,
            "/v1/touchpoints/{id}/enable",
            None,
            [401, 401, 200, 403, 403, 404, 403, 403],
        ),
        (
            Method::POST,
            "/v1/touchpoints/{id}/disable",
            None,
            [401, 401, 200, 403, 403, 404, 403, 403],
        ),
        (
            Method::PUT,
            "/v1/touchpoints/{id}/spaces",
            Some(json!({"spaceIds": ["space-b"]})),
            [401, 401, 200, 403, 403, 404, 403, 403],
        ),
        (
            Method::GET,
            "/v1/touchpoints/{id}/campaigns",
            None,
            [401, 401, 200, 403, 200, 404, 403, 404],
        ),
        (
            Method::PUT,
            "/v1/touchpoints/{id}/campaigns/c2",
            Some(json!({"state": "draft"})),
            [401, 401, 200, 403, 200, 404, 403, 404],
        ),
        (
            Method::DELETE,
            "/v1/touchpoints/{id}/campaigns/c1",
            None,
            [401, 401, 204, 403, 204, 404, 403, 404],
        ),
        (
            Method::GET,
            "/v1/spaces/space-a/touchpoints",
            None,
            [401, 401, 200, 200, 403, 200, 200, 403],
        ),
        (
            Method::GET,
            "/v1/spaces/space-b/touchpoints",
            None,
            [401, 401, 200, 403, 403, 200, 403, 403],
        ),
        (
            Method::POST,
            "/v1/touchpoints/{id}/test",
            Some(
                json!({"users": [{"gid": 1}], "templateValues": {"title": "t", "startDate": "2026-12-01", "jump": "JUMP_H5"}}),
            ),
            [401, 401, 200, 403, 403, 404, 403, 403],
        ),
        (
            Method::GET,
            "/v1/touchpoints/{id}/stats",
            None,
            [401, 401, 200, 403, 403, 404, 403, 403],
        ),
        (
            Method::GET,
            "/v1/touchpoints/{id}/params/jump/options",
            None,
            [401, 401, 200, 200, 403, 404, 404, 404],
        ),
        (
            Method::POST,
            "/v1/dispatches",
            Some(dispatch_body("{id}", json!([{"gid": 9}]))),
            [401, 401, 202, 403, 202, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/dispatches/{dispatch}",
            None,
            [401, 401, 200, 403, 200, 404, 403, 404],
        ),
        (
            Method::GET,
            "/v1/batches/{orderNo}",
            None,
            [401, 401, 200, 403, 200, 404, 403, 404],
        ),
        (
            Method::GET,
            "/v1/campaigns/c1/stats",
            None,
            [401, 401, 200, 403, 200, 200, 403, 200],
        ),
    ];
    let mut checked = 0;
    for (method, template, body, expected) in &table {
        assert_eq!(CALLERS.len(), expected.len(), "{method} {template}");
        for (caller, want) in CALLERS.iter().zip(expected) {
            // A fresh service per cell: what one caller changes cannot decide another's answer.
            let api = Api::new();
            let mut tp = coupon();
            tp["url"] = json!("https://127.0.0.1:9/touch");
            let id = id_of(&api.create(tp).await);
            api.put(
                &format!("/v1/touchpoints/{id}/spaces"),
                json!({"spaceIds": ["space-a"]}),
            )
            .await;
            api.campaign(&id, "c1", "draft").await;
            // A dispatch the project owns, refused (space-b is not authorized) so it records a batch.
            let mut d = dispatch_body(&id, json!([{"gid": 1}, {"gid": 2}]));
            d["dispatchId"] = json!("owned-1");
            d["spaceId"] = json!("space-b");
            assert_eq!(api.dispatcher.handle(&d).await.unwrap(), Handled::Done);
            let owned = api
                .call(Method::GET, "/v1/dispatches/owned-1", Some(ADMIN), None)
                .await;
            let order_no = owned.body["batches"][0]["orderNo"]
                .as_str()
                .unwrap()
                .to_owned();

            let path = template
                .replace("{id}", &id)
                .replace("{dispatch}", "owned-1")
                .replace("{orderNo}", &order_no);
            let body = body
                .as_ref()
                .map(|b| serde_json::from_str(&b.to_string().replace("{id}", &id)).unwrap());
            let r = api.call(method.clone(), &path, *caller, body).await;
            assert_eq!(
                r.status.as_u16(),
                *want,
                "{method} {template} as {caller:?}: {}",
                r.body
            );
            let foreign = matches!(*caller, Some(ADMIN_2 | OPERATOR_2 | CAMPAIGN_2));
            if foreign {
                let text = r.body.to_string();
                assert!(
                    !text.contains(&id) && !text.contains(&order_no) && !text.contains("owned-1"),
                    "{method} {template} as {caller:?} leaked another project's data: {text}"
                );
            }
            checked += 1;
        }
    }
    eprintln!(
        "authorization matrix: {} routes × {} callers = {checked} cells",
        table.len(),
        CALLERS.len()
    );
}
