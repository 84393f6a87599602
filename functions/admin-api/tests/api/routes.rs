//! The admin API driven through its Router, on a real (in-memory) SQLite store.
//!
//! Every response of every test passes through [`Api::send`], which fails the test if a
//! response body ever contains a touchpoint token.

use crate::common::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

#[tokio::test]
async fn created_touchpoint_is_enabled_authorized_nowhere_and_hides_its_token() {
    let api = Api::new();
    let tp = api.create(coupon()).await;
    assert_eq!(tp["enabled"], true);
    assert_eq!(tp["spaceIds"], json!([]));
    assert_eq!(tp["tokenSet"], true);
    assert!(tp.get("token").is_none());
    assert_eq!(tp["version"], 1);
    assert_eq!(tp["projectId"], 1);
    assert_eq!(tp["receipt"], coupon()["receipt"]);
    assert_eq!(tp["templateParams"], coupon()["templateParams"]);
    let fetched = api.get(&format!("/v1/touchpoints/{}", id_of(&tp))).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, tp);
}

#[tokio::test]
async fn name_is_at_most_15_characters_counted_in_unicode() {
    let api = Api::new();
    for (name, ok) in [
        ("一二三四五六七八九十一二三四五", true),
        ("一二三四五六七八九十一二三四五六", false),
        ("abcdefghijklmno", true),
        ("abcdefghijklmnop", false),
        ("", false),
        ("   ", false),
    ] {
        let r = api.post("/v1/touchpoints", named(name)).await;
        if ok {
            assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.body);
        } else {
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
            assert_eq!(r.error_paths(), ["name"], "{name}");
        }
    }
}

#[tokio::test]
async fn duplicate_name_in_a_project_conflicts_but_not_across_projects() {
    let api = Api::new();
    api.create(coupon()).await;
    let r = api.post("/v1/touchpoints", coupon()).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_code(), "name_taken");
    assert_eq!(r.error_paths(), ["name"]);
    let other = api
        .call(
            Method::POST,
            "/v1/touchpoints",
            Some(ADMIN_2),
            Some(coupon()),
        )
        .await;
    assert_eq!(other.status, StatusCode::CREATED);
}

#[tokio::test]
async fn batch_size_must_be_1_to_500() {
    let api = Api::new();
    for (i, (n, ok)) in [(0, false), (1, true), (500, true), (501, false)]
        .into_iter()
        .enumerate()
    {
        let mut body = named(&format!("batch {i}"));
        body["batchSize"] = json!(n);
        let r = api.post("/v1/touchpoints", body).await;
        if ok {
            assert_eq!(r.status, StatusCode::CREATED, "{n}");
            assert_eq!(r.body["batchSize"], n);
        } else {
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{n}");
            assert_eq!(r.error_paths(), ["batchSize"]);
        }
    }
}

#[tokio::test]
async fn each_parameter_rule_is_reported_at_its_path() {
    let api = Api::new();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "no user attribute",
            Box::new(|b| b["userAttributes"] = json!([])),
            "userAttributes",
        ),
        (
            "no template parameter",
            Box::new(|b| b["templateParams"] = json!([])),
            "templateParams",
        ),
        (
            "duplicate user attribute identifier",
            Box::new(|b| b["userAttributes"][1]["identifier"] = json!("phone")),
            "userAttributes[1].identifier",
        ),
        (
            "identifier shared across lists",
            Box::new(|b| b["templateParams"][0]["identifier"] = json!("phone")),
            "templateParams[0].identifier",
        ),
        (
            "duplicate template identifier",
            Box::new(|b| b["templateParams"][2]["identifier"] = json!("title")),
            "templateParams[2].identifier",
        ),
        (
            "enum with no options",
            Box::new(|b| b["templateParams"][3]["enum"]["options"] = json!([])),
            "templateParams[3].enum.options",
        ),
        (
            "enum API URL that is not a URL",
            Box::new(|b| b["templateParams"][4]["enum"]["optionsUrl"] = json!("cms/options")),
            "templateParams[4].enum.optionsUrl",
        ),
        (
            "async without receipt URL",
            Box::new(|b| b["receipt"] = json!({"mode": "async", "timeoutMinutes": 60})),
            "receipt.receiptUrl",
        ),
        (
            "receipt timeout out of range",
            Box::new(|b| b["receipt"]["timeoutMinutes"] = json!(4)),
            "receipt.timeoutMinutes",
        ),
        (
            "plain http when not allowed",
            Box::new(|b| b["url"] = json!("http://coupons.example.com/touch")),
            "url",
        ),
        (
            "unknown kind",
            Box::new(|b| b["kind"] = json!("sms")),
            "kind",
        ),
        (
            "text placeholder naming no attribute",
            Box::new(|b| b["templateParams"][0]["default"] = json!("Hi {{nickname}}")),
            "templateParams[0].default",
        ),
    ];
    for (what, edit, path) in cases {
        let mut body = coupon();
        edit(&mut body);
        let r = api.post("/v1/touchpoints", body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            r.body
        );
        assert_eq!(r.error_code(), "validation_failed", "{what}");
        assert_eq!(r.error_paths(), [path], "{what}");
    }
    // Nothing of the refused requests was stored.
    let list = api.get("/v1/touchpoints").await;
    assert_eq!(list.body["items"], json!([]));
}

#[tokio::test]
async fn all_broken_rules_come_back_together() {
    let api = Api::new();
    let mut body = coupon();
    body["name"] = json!("");
    body["batchSize"] = json!(0);
    body["userAttributes"] = json!([]);
    body["templateParams"][3]["enum"]["options"] = json!([]);
    let r = api.post("/v1/touchpoints", body).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.error_paths(),
        [
            "name",
            "batchSize",
            "userAttributes",
            "templateParams[3].enum.options"
        ]
    );
}

async fn disabled(api: &Api) -> (String, u64) {
    let tp = api.create(coupon()).await;
    let id = id_of(&tp);
    let r = api.disable(&id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    (id, r.body["version"].as_u64().unwrap())
}

#[tokio::test]
async fn editing_needs_a_disabled_touchpoint_the_same_kind_and_the_current_version() {
    let api = Api::new();
    let tp = api.create(coupon()).await;
    let id = id_of(&tp);
    let path = format!("/v1/touchpoints/{id}");
    let mut edit = coupon();
    edit["version"] = json!(1);
    edit["batchSize"] = json!(50);

    let r = api.put(&path, edit.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "edit while enabled");
    assert_eq!(r.error_code(), "touchpoint_enabled");

    let r = api.disable(&id).await;
    let version = r.body["version"].as_u64().unwrap();
    assert_eq!(version, 2);

    let mut kind_change = edit.clone();
    kind_change["kind"] = json!("notification");
    kind_change["version"] = json!(version);
    let r = api.put(&path, kind_change).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_paths(), ["kind"]);

    let r = api.put(&path, edit.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "stale version");
    assert_eq!(r.error_code(), "version_conflict");
    assert_eq!(r.body["error"]["currentVersion"], 2);

    let mut missing = edit.clone();
    missing.as_object_mut().unwrap().remove("version");
    let r = api.put(&path, missing).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_paths(), ["version"]);

    edit["version"] = json!(version);
    let r = api.put(&path, edit.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["batchSize"], 50);
    assert_eq!(r.body["version"], 3);
    assert_eq!(r.body["enabled"], false);

    // The same edit again is now stale: two admins cannot overwrite each other silently.
    let r = api.put(&path, edit).await;
    assert_eq!(r.error_code(), "version_conflict");
}

#[tokio::test]
async fn token_is_kept_when_absent_cleared_by_null_and_replaced_by_a_string() {
    let api = Api::new();
    let (id, mut version) = disabled(&api).await;
    let path = format!("/v1/touchpoints/{id}");
    let mut edit = coupon();
    edit.as_object_mut().unwrap().remove("token");
    for (token, want) in [
        (None, true),
        (Some(Value::Null), false),
        (Some(json!(format!("{SECRET}-new"))), true),
    ] {
        match token {
            None => {
                edit.as_object_mut().unwrap().remove("token");
            }
            Some(t) => edit["token"] = t,
        }
        edit["version"] = json!(version);
        let r = api.put(&path, edit.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["tokenSet"], want);
        version = r.body["version"].as_u64().unwrap();
    }
}

#[tokio::test]
async fn disabling_is_refused_while_a_live_campaign_uses_the_touchpoint() {
    let api = Api::new();
    for state in [
        "running",
        "paused",
        "not_started",
        "pending_publish",
        "in_approval",
    ] {
        let tp = api.create(named(&state[..state.len().min(15)])).await;
        let id = id_of(&tp);
        assert_eq!(
            api.campaign(&id, "cmp-1", "ended").await.status,
            StatusCode::OK
        );
        let r = api.campaign(&id, "cmp-42", state).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let r = api.disable(&id).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{state}");
        assert_eq!(r.error_code(), "touchpoint_in_use");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("活动 cmp-42"), "{message}");
        assert!(
            !message.contains("cmp-1 "),
            "ended campaigns do not block: {message}"
        );
        assert_eq!(r.body["error"]["campaigns"][0]["campaignId"], "cmp-42");
        assert_eq!(r.body["error"]["campaigns"][0]["state"], state);
        assert_eq!(r.body["error"]["campaigns"].as_array().unwrap().len(), 1);
        let still = api.get(&format!("/v1/touchpoints/{id}")).await;
        assert_eq!(still.body["enabled"], true);
    }
}

#[tokio::test]
async fn ended_and_draft_campaigns_do_not_block_disabling() {
    let api = Api::new();
    let tp = api.create(coupon()).await;
    let id = id_of(&tp);
    api.campaign(&id, "cmp-ended", "ended").await;
    api.campaign(&id, "cmp-draft", "draft").await;
    // A campaign that was running and has ended no longer blocks.
    api.campaign(&id, "cmp-was-running", "running").await;
    assert_eq!(api.disable(&id).await.status, StatusCode::CONFLICT);
    api.campaign(&id, "cmp-was-running", "ended").await;
    let r = api.disable(&id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["enabled"], false);

    let refs = api.get(&format!("/v1/touchpoints/{id}/campaigns")).await;
    assert_eq!(refs.body["items"].as_array().unwrap().len(), 3);
    // A disabled touchpoint cannot be picked by a live campaign.
    let r = api.campaign(&id, "cmp-new", "running").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_code(), "touchpoint_disabled");
    // Removing a reference.
    let r = api
        .call(
            Method::DELETE,
            &format!("/v1/touchpoints/{id}/campaigns/cmp-draft"),
            Some(CAMPAIGN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .call(
            Method::DELETE,
            &format!("/v1/touchpoints/{id}/campaigns/cmp-draft"),
            Some(CAMPAIGN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn campaign_references_are_validated() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    let r = api.campaign(&id, "cmp-1", "finished").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_paths(), ["state"]);
}

#[tokio::test]
async fn deleting_needs_a_disabled_touchpoint() {
    let api = Api::new();
    let tp = api.create(coupon()).await;
    let id = id_of(&tp);
    let path = format!("/v1/touchpoints/{id}");
    let r = api.call(Method::DELETE, &path, Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_code(), "touchpoint_enabled");
    let version = api.disable(&id).await.body["version"].as_u64().unwrap();
    let r = api
        .call(
            Method::DELETE,
            &format!("{path}?version={}", version - 1),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.error_code(), "version_conflict");
    let r = api.call(Method::DELETE, &path, Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(api.get(&path).await.status, StatusCode::NOT_FOUND);
    // The name is free again.
    api.create(coupon()).await;
}

#[tokio::test]
async fn enable_and_disable_check_a_version_when_given() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    let r = api
        .call(
            Method::POST,
            &format!("/v1/touchpoints/{id}/disable"),
            Some(ADMIN),
            Some(json!({"version": 7})),
        )
        .await;
    assert_eq!(r.error_code(), "version_conflict");
    let r = api
        .call(
            Method::POST,
            &format!("/v1/touchpoints/{id}/disable"),
            Some(ADMIN),
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .call(
            Method::POST,
            &format!("/v1/touchpoints/{id}/enable"),
            Some(ADMIN),
            Some(json!({"version": 2})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["enabled"], true);
    assert_eq!(r.body["version"], 3);
}

#[tokio::test]
async fn operators_see_only_enabled_touchpoints_authorized_for_their_space() {
    let api = Api::new();
    let shown = id_of(&api.create(named("shown")).await);
    let other_space = id_of(&api.create(named("other space")).await);
    let off = id_of(&api.create(named("disabled")).await);
    api.create(named("unauthorized")).await;
    for (id, spaces) in [
        (&shown, json!(["space-a", "space-b", "space-a"])),
        (&other_space, json!(["space-b"])),
        (&off, json!(["space-a"])),
    ] {
        let r = api
            .put(
                &format!("/v1/touchpoints/{id}/spaces"),
                json!({"spaceIds": spaces}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    api.disable(&off).await;
    let tp = api.get(&format!("/v1/touchpoints/{shown}")).await;
    assert_eq!(tp.body["spaceIds"], json!(["space-a", "space-b"]));

    let r = api
        .call(
            Method::GET,
            "/v1/spaces/space-a/touchpoints",
            Some(OPERATOR_A),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item["id"], shown.as_str());
    assert!(item.get("url").is_none(), "operators do not see the URL");
    let inputs: Vec<&str> = item["templateParams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["input"].as_str().unwrap())
        .collect();
    assert_eq!(
        inputs,
        [
            "text-input",
            "date-picker",
            "number-input",
            "select",
            "multi-select"
        ]
    );
    assert_eq!(item["templateParams"][3]["options"][0]["code"], "JUMP_H5");
    assert_eq!(
        item["templateParams"][4]["optionsPath"],
        format!("/v1/touchpoints/{shown}/params/material/options")
    );
    assert_eq!(
        item["templateParams"][0]["insertableAttributes"][1]["identifier"],
        "name"
    );

    let r = api
        .call(
            Method::GET,
            "/v1/spaces/space-b/touchpoints",
            Some(OPERATOR_A),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Authorizing no space hides it again.
    api.put(
        &format!("/v1/touchpoints/{shown}/spaces"),
        json!({"spaceIds": []}),
    )
    .await;
    let r = api
        .call(
            Method::GET,
            "/v1/spaces/space-a/touchpoints",
            Some(OPERATOR_A),
            None,
        )
        .await;
    assert_eq!(r.body["items"], json!([]));
}

#[tokio::test]
async fn space_ids_are_validated() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    let path = format!("/v1/touchpoints/{id}/spaces");
    let r = api.put(&path, json!({"spaceIds": ["ok", "", "a/b"]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_paths(), ["spaceIds[1]", "spaceIds[2]"]);
    // A wrong type is named at its path.
    let r = api.put(&path, json!({"spaceIds": ["ok", 3]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_paths(), ["spaceIds[1]"]);
    let r = api.put(&path, json!({"spaces": ["a"]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn listing_pages_with_a_cursor_and_filters() {
    let api = Api::new();
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut body = named(&format!("coupon {i}"));
        if i % 2 == 1 {
            body["kind"] = json!("notification");
            body["name"] = json!(format!("短信 {i}"));
        }
        ids.push(id_of(&api.create(body).await));
    }
    api.disable(&ids[0]).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/touchpoints?limit=3&cursor={c}"),
            None => "/v1/touchpoints?limit=3".into(),
        };
        let r = api.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        pages += 1;
        for item in r.body["items"].as_array().unwrap() {
            seen.push(id_of(item));
        }
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every touchpoint once, in creation order");

    let count = |r: &Reply| r.body["items"].as_array().unwrap().len();
    assert_eq!(
        count(&api.get("/v1/touchpoints?kind=notification").await),
        3
    );
    assert_eq!(count(&api.get("/v1/touchpoints?enabled=false").await), 1);
    assert_eq!(count(&api.get("/v1/touchpoints?q=短信").await), 3);
    assert_eq!(
        count(&api.get("/v1/touchpoints?q=COUPON&enabled=true").await),
        3
    );

    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "kind=sms",
        "enabled=maybe",
        "cursor=nonsense",
    ] {
        let r = api.get(&format!("/v1/touchpoints?{bad}")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[tokio::test]
async fn another_projects_touchpoint_is_not_found_on_every_route() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/touchpoints/{id}"), None),
        (
            Method::PUT,
            format!("/v1/touchpoints/{id}"),
            Some({
                let mut b = coupon();
                b["version"] = json!(1);
                b
            }),
        ),
        (Method::DELETE, format!("/v1/touchpoints/{id}"), None),
        (Method::POST, format!("/v1/touchpoints/{id}/enable"), None),
        (Method::POST, format!("/v1/touchpoints/{id}/disable"), None),
        (
            Method::PUT,
            format!("/v1/touchpoints/{id}/spaces"),
            Some(json!({"spaceIds": ["x"]})),
        ),
        (Method::GET, format!("/v1/touchpoints/{id}/campaigns"), None),
        (
            Method::PUT,
            format!("/v1/touchpoints/{id}/campaigns/c1"),
            Some(json!({"state": "running"})),
        ),
        (
            Method::DELETE,
            format!("/v1/touchpoints/{id}/campaigns/c1"),
            None,
        ),
    ];
    for (method, path, body) in routes {
        let r = api.call(method.clone(), &path, Some(ADMIN_2), body).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            r.body
        );
        assert_eq!(r.error_code(), "not_found");
    }
    // And nothing changed for its owner.
    let tp = api.get(&format!("/v1/touchpoints/{id}")).await;
    assert_eq!(tp.body["version"], 1);
    assert_eq!(tp.body["enabled"], true);
    let list = api
        .call(Method::GET, "/v1/touchpoints", Some(ADMIN_2), None)
        .await;
    assert_eq!(list.body["items"], json!([]));
}

#[tokio::test]
async fn roles_are_enforced() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    let r = api
        .call(
            Method::POST,
            "/v1/touchpoints",
            Some(OPERATOR_A),
            Some(coupon()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "operator creating");
    assert_eq!(r.error_code(), "forbidden");
    for (key, method, path) in [
        (OPERATOR_A, Method::GET, format!("/v1/touchpoints/{id}")),
        (
            OPERATOR_A,
            Method::POST,
            format!("/v1/touchpoints/{id}/disable"),
        ),
        (CAMPAIGN, Method::GET, "/v1/touchpoints".to_owned()),
        (
            CAMPAIGN,
            Method::POST,
            format!("/v1/touchpoints/{id}/disable"),
        ),
        (
            CAMPAIGN,
            Method::GET,
            "/v1/spaces/space-a/touchpoints".to_owned(),
        ),
        (
            OPERATOR_A,
            Method::PUT,
            format!("/v1/touchpoints/{id}/campaigns/c"),
        ),
    ] {
        let body = (method != Method::GET).then(|| json!({"state": "running"}));
        let r = api.call(method.clone(), &path, Some(key), body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{key} {method} {path}");
    }
    let r = api.get(&format!("/v1/touchpoints/{id}")).await;
    assert_eq!(r.body["enabled"], true);
}

#[tokio::test]
async fn missing_or_unknown_keys_are_unauthorized() {
    let api = Api::new();
    for key in [None, Some("not-a-key-of-this-service"), Some("")] {
        let r = api.call(Method::GET, "/v1/touchpoints", key, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(r.error_code(), "unauthorized");
    }
    let req = Request::get("/v1/touchpoints")
        .header("authorization", format!("Basic {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(api.send(req).await.status, StatusCode::UNAUTHORIZED);
    // Health and the API description need no key.
    assert_eq!(
        api.call(Method::GET, "/healthz", None, None).await.status,
        StatusCode::OK
    );
}

async fn raw(api: &Api, content_type: &str, body: Vec<u8>) -> Reply {
    let req = Request::post("/v1/touchpoints")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap();
    api.send(req).await
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_refused_without_storing_anything() {
    let api = Api::new();
    let r = raw(&api, "application/json", b"{\"name\": ".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code(), "malformed_request");
    let r = raw(&api, "application/json", b"\xff\xfe".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = raw(&api, "application/json", b"[1,2]".to_vec()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = raw(&api, "text/plain", coupon().to_string().into_bytes()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let mut big = coupon();
    big["description"] = json!("x".repeat(2 * 1024 * 1024));
    let r = raw(&api, "application/json", big.to_string().into_bytes()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error_code(), "body_too_large");
    assert!(r.body.to_string().contains("1048576"), "{}", r.body);

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = raw(&api, "application/json", deep.into_bytes()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let list = api.get("/v1/touchpoints").await;
    assert_eq!(list.body["items"], json!([]));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let api = Api::new();
    let r = api.get("/v1/nothing-here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");
    let r = api
        .call(Method::PATCH, "/v1/touchpoints", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.error_code(), "method_not_allowed");
    let r = api.get("/v1/touchpoints/tp_not-an-id").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let api = Api::new();
    let doc = api.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            operations += 1;
            let concrete = path
                .replace("{id}", "tp_01JDX3ZZZZZZZZZZZZZZZZZZZZ")
                .replace("{campaignId}", "c1")
                .replace("{spaceId}", "space-a")
                .replace("{dispatchId}", "d1")
                .replace("{identifier}", "jump")
                .replace("{orderNo}", "0123456789abcdef0123456789abcdef");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = api.call(method.clone(), &concrete, Some(ADMIN), None).await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(
                r.body["error"]["message"], "no such route",
                "{method} {path} is documented but not routed"
            );
        }
    }
    assert_eq!(operations, 28, "the API's surface");
    let schemas = &doc.body["components"]["schemas"];
    // Two types of one name would share one schema: the service's health and a receiver's.
    assert!(schemas["Health"]["properties"]["status"].is_object());
    assert!(schemas["ReceiverHealth"]["properties"]["state"].is_object());
    let input = &schemas["TouchpointInput"];
    assert_eq!(input["additionalProperties"], false);
    assert_eq!(input["properties"]["name"]["maxLength"], 15);
    assert_eq!(input["properties"]["batchSize"]["maximum"], 500);
    assert_eq!(input["properties"]["batchSize"]["default"], 500);
    assert_eq!(input["properties"]["userAttributes"]["maxItems"], 50);
    assert_eq!(
        schemas["TouchpointReplace"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| *r == "version")
            .count(),
        1
    );
    // Roles as security, and every answer a route can give.
    let create = &doc.body["paths"]["/v1/touchpoints"]["post"];
    assert_eq!(create["security"], json!([{"bearer": ["admin"]}]));
    let statuses: Vec<&String> = create["responses"].as_object().unwrap().keys().collect();
    assert_eq!(
        statuses,
        [
            "201", "400", "401", "403", "409", "413", "415", "422", "500"
        ]
    );
    let health = &doc.body["paths"]["/healthz"]["get"];
    assert!(health.get("security").is_none());
    assert_eq!(
        health["responses"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["200"]
    );
    // The listing's success rates take the page's ids, as many as the domain allows.
    let ids = &doc.body["paths"]["/v1/stats/touchpoints"]["get"]["parameters"][0];
    assert_eq!(
        (&ids["name"], &ids["required"]),
        (&json!("ids"), &json!(true))
    );
    let bound = format!(
        "{{0,{}}}$",
        touchpoint::reporting::MAX_WINDOW_TOUCHPOINTS - 1
    );
    assert!(
        ids["schema"]["pattern"].as_str().unwrap().ends_with(&bound),
        "{ids}"
    );
    // Responses are typed, not stubs.
    let dispatch = &schemas["DispatchReport"]["properties"];
    assert!(dispatch["counts"].is_object() && dispatch["batches"]["items"].is_object());
}

#[tokio::test]
async fn enum_options_are_readable_by_admins_and_operators_of_an_authorized_space() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    let path = format!("/v1/touchpoints/{id}/params/jump/options");
    let r = api.get(&path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["source"], "manual");
    assert_eq!(r.body["options"][1]["code"], "NO_JUMP");
    let r = api.call(Method::GET, &path, Some(OPERATOR_A), None).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "not authorized for space-a yet"
    );
    api.put(
        &format!("/v1/touchpoints/{id}/spaces"),
        json!({"spaceIds": ["space-a"]}),
    )
    .await;
    let r = api.call(Method::GET, &path, Some(OPERATOR_A), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .get(&format!("/v1/touchpoints/{id}/params/nope/options"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .get(&format!("/v1/touchpoints/{id}/params/title/options"))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_code(), "not_enum");
    let r = api.call(Method::GET, &path, Some(ADMIN_2), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_submitted_dispatch_reads_as_queued_until_the_dispatcher_opens_it() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    let r = api
        .call(Method::GET, "/v1/dispatches/d-q", Some(CAMPAIGN), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "not submitted yet");
    let body = json!({"dispatchId": "d-q", "projectId": 1, "spaceId": "space-a", "campaignId": "c1",
                      "touchpointId": id, "users": [{"gid": 1}]});
    let r = api
        .call(Method::POST, "/v1/dispatches", Some(CAMPAIGN), Some(body))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let r = api
        .call(Method::GET, "/v1/dispatches/d-q", Some(CAMPAIGN), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["state"], "queued");
    assert_eq!(r.body["dispatchId"], "d-q");
    assert!(r.body["receivedAt"].as_str().unwrap().ends_with('Z'));
    // Another project does not see it.
    let r = api
        .call(Method::GET, "/v1/dispatches/d-q", Some(CAMPAIGN_2), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_dispatch_may_be_larger_than_other_bodies_up_to_its_own_limit() {
    let api = Api::new();
    let id = id_of(&api.create(coupon()).await);
    // 10,000 users with 5 attributes of 20 characters: about 1.6 MB.
    let users: Vec<Value> = (0..10_000)
        .map(|g| {
            let a = |k: usize| format!("{g:08}-attribute-{k}");
            json!({"gid": g, "attributes": {"a1": a(1), "a2": a(2), "a3": a(3), "a4": a(4), "a5": a(5)}})
        })
        .collect();
    let mut body = json!({"dispatchId": "d-wide", "projectId": 1, "spaceId": "space-a",
                          "campaignId": "c1", "touchpointId": id, "users": users});
    assert!(body.to_string().len() > 1_500_000);
    let r = api
        .call(
            Method::POST,
            "/v1/dispatches",
            Some(CAMPAIGN),
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    body["dispatchId"] = json!("d-huge");
    body["campaignId"] = json!("c".repeat(touchpoint::dispatch::MAX_DISPATCH_BYTES));
    let r = api
        .call(Method::POST, "/v1/dispatches", Some(CAMPAIGN), Some(body))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body.to_string().contains("4194304"), "{}", r.body);
}

#[tokio::test]
async fn the_console_is_served_at_the_root_without_a_key_under_a_strict_policy() {
    let api = Api::new();
    for (path, content_type, marker) in [
        ("/", "text/html", "<dialog id=\"dialog\""),
        ("/console/main.js", "text/javascript", "import "),
        ("/console/state.js", "text/javascript", "sessionStorage"),
        ("/console/i18n.js", "text/javascript", "自定义触点管理"),
        ("/console/app.css", "text/css", ":focus-visible"),
    ] {
        let response = api
            .app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let header = |n: &str| {
            response
                .headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(header("x-content-type-options"), "nosniff");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&bytes).contains(marker), "{path}");
    }
    let missing = api
        .call(Method::GET, "/console/../lib.rs", None, None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let missing = api.call(Method::GET, "/console/nope.js", None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "not_found");
    // Every file of the console's source directory is served (a module left out of the
    // binary would break the page's imports).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    let mut served = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name == "index.html" {
            continue;
        }
        let r = api
            .app
            .clone()
            .oneshot(
                Request::get(format!("/console/{name}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name} is not served");
        served += 1;
    }
    assert!(served >= 3, "{served}");
}
