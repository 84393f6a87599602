//! Token rotation and the audit log, through the Router.

use crate::common::*;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The audit log's name for an API key.
fn key_id(key: &str) -> String {
    format!("key-{}", hex::encode(&Sha256::digest(key.as_bytes())[..4]))
}

fn rfc3339_ms(s: &str) -> i64 {
    touchpoint::clock::parse_rfc3339(s).unwrap_or_else(|| panic!("not a time: {s}"))
}

fn now_ms() -> i64 {
    use touchpoint::clock::Clock;
    touchpoint::SystemClock.now_ms()
}

#[tokio::test]
async fn a_token_rotates_while_enabled_with_an_overlap_and_never_comes_back() {
    let api = Api::new();
    let tp = api.create(coupon()).await;
    let id = id_of(&tp);
    let path = format!("/v1/touchpoints/{id}/token/rotate");
    // Only admins; the rules of the body, all at once.
    let r = api
        .call(
            Method::POST,
            &path,
            Some(CAMPAIGN),
            Some(json!({"token": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .post(
            &path,
            json!({"overlapHours": 169, "version": 0, "extra": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(paths, ["extra", "overlapHours", "token", "version"]);
    for bad in [
        json!({"token": ""}),
        json!({"token": "whsec_%%%"}),
        json!({"token": 5}),
        json!({"token": "ok", "overlapHours": -1}),
        json!({"token": "ok", "overlapHours": "24"}),
        json!([]),
    ] {
        let r = api.post(&path, bad.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.body
        );
    }
    let r = api
        .post(
            &path,
            json!({"token": format!("{SECRET}-new"), "version": 9}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = api
        .post(
            "/v1/touchpoints/tp_01JDX3ZZZZZZZZZZZZZZZZZZZZ/token/rotate",
            json!({"token": "whatever-token"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Enabled, and rotated: the default overlap is 24 hours.
    let before = now_ms();
    let r = api
        .post(
            &path,
            json!({"token": format!("{SECRET}-new"), "version": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["enabled"], true);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.body["tokenSet"], true);
    let until = rfc3339_ms(r.body["tokenOverlapUntil"].as_str().unwrap());
    let day = 24 * 3_600_000;
    assert!(
        until >= before + day - 1_000 && until <= now_ms() + day,
        "{}",
        r.body
    );
    // A fetched touchpoint can be sent back as it is (the overlap is read-only).
    let off = api.disable(&id).await;
    assert_eq!(off.status, StatusCode::OK);
    let mut edit = off.body.clone();
    edit["description"] = json!("edited");
    let r = api.put(&format!("/v1/touchpoints/{id}"), edit).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["tokenOverlapUntil"], off.body["tokenOverlapUntil"],
        "kept: no token in the edit"
    );
    // An edit that writes a token ends the overlap; so does a rotation with none.
    let mut edit = r.body.clone();
    edit["token"] = json!(format!("{SECRET}-edited"));
    let r = api.put(&format!("/v1/touchpoints/{id}"), edit).await;
    assert!(r.body.get("tokenOverlapUntil").is_none(), "{}", r.body);
    let r = api
        .post(
            &path,
            json!({"token": format!("{SECRET}-third"), "overlapHours": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.get("tokenOverlapUntil").is_none(), "{}", r.body);
    // A fractional overlap is honoured to the second.
    let r = api
        .post(
            &path,
            json!({"token": format!("{SECRET}-fourth"), "overlapHours": 0.5}),
        )
        .await;
    let until = rfc3339_ms(r.body["tokenOverlapUntil"].as_str().unwrap());
    assert!((until - now_ms() - 1_800_000).abs() < 5_000, "{}", r.body);
}

#[tokio::test]
async fn the_audit_log_names_who_changed_what_and_pages_newest_first() {
    let api = Api::new();
    let tp = api.create(coupon()).await;
    let id = id_of(&tp);
    api.put(
        &format!("/v1/touchpoints/{id}/spaces"),
        json!({"spaceIds": ["space-a"]}),
    )
    .await;
    assert_eq!(
        api.campaign(&id, "cmp-1", "running").await.status,
        StatusCode::OK
    );
    // Refused: no entry.
    assert_eq!(api.disable(&id).await.status, StatusCode::CONFLICT);
    assert_eq!(
        api.campaign(&id, "cmp-1", "ended").await.status,
        StatusCode::OK
    );
    api.post(
        &format!("/v1/touchpoints/{id}/token/rotate"),
        json!({"token": format!("{SECRET}-rotated")}),
    )
    .await;
    assert_eq!(api.disable(&id).await.status, StatusCode::OK);
    let mut edit = api.get(&format!("/v1/touchpoints/{id}")).await.body;
    edit["url"] = json!("https://coupons.example.com/v2/touch");
    edit["token"] = json!(format!("{SECRET}-edited"));
    assert_eq!(
        api.put(&format!("/v1/touchpoints/{id}"), edit).await.status,
        StatusCode::OK
    );
    let other = api.create(named("另一个")).await;
    let r = api
        .call(
            Method::DELETE,
            &format!("/v1/touchpoints/{}", id_of(&other)),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "enabled: refused, not audited"
    );

    let log = api.get(&format!("/v1/audit?touchpointId={id}")).await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.body);
    let entries = log.body["items"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    let (admin, campaign) = (key_id(ADMIN), key_id(CAMPAIGN));
    assert_eq!(
        seen,
        [
            ("touchpoint.edit", admin.as_str()),
            ("touchpoint.disable", admin.as_str()),
            ("touchpoint.token.rotate", admin.as_str()),
            ("campaign.put", campaign.as_str()),
            ("campaign.put", campaign.as_str()),
            ("touchpoint.spaces", admin.as_str()),
            ("touchpoint.create", admin.as_str()),
        ]
    );
    let change = |entry: &Value, field: &str| {
        entry["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["field"] == field)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let edit = &entries[0];
    assert_eq!(
        change(edit, "url"),
        json!({"field": "url", "before": "https://coupons.example.com/touch", "after": "https://coupons.example.com/v2/touch"})
    );
    assert_eq!(
        change(edit, "token"),
        json!({"field": "token", "after": "changed"})
    );
    assert!(
        change(edit, "tokenOverlapUntil")["before"].is_string(),
        "the edit ended the overlap"
    );
    assert_eq!(
        change(&entries[1], "enabled"),
        json!({"field": "enabled", "before": true, "after": false})
    );
    assert_eq!(entries[3]["target"], "cmp-1");
    assert_eq!(
        change(&entries[3], "state"),
        json!({"field": "state", "before": "running", "after": "ended"})
    );
    assert_eq!(
        change(&entries[5], "spaceIds"),
        json!({"field": "spaceIds", "before": [], "after": ["space-a"]})
    );
    let created = &entries[6];
    assert_eq!(change(created, "name")["after"], "券中心");
    assert!(change(created, "name").get("before").is_none());
    assert_eq!(
        change(created, "token"),
        json!({"field": "token", "after": "changed"})
    );
    let at = rfc3339_ms(created["at"].as_str().unwrap());
    assert!((now_ms() - at).abs() < 60_000);

    // The whole project's log pages newest first, by cursor.
    let first = api.get("/v1/audit?limit=5").await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 5);
    assert_eq!(first.body["items"][0]["action"], "touchpoint.create");
    assert_eq!(first.body["items"][0]["touchpointId"], id_of(&other));
    let cursor = first.body["nextCursor"].as_str().unwrap();
    let second = api.get(&format!("/v1/audit?limit=5&cursor={cursor}")).await;
    assert_eq!(second.body["items"].as_array().unwrap().len(), 3);
    assert_eq!(second.body["nextCursor"], Value::Null);
    let ids: Vec<&Value> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second.body["items"].as_array().unwrap())
        .map(|e| &e["id"])
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.as_str().cmp(&a.as_str()));
    sorted.dedup();
    assert_eq!(ids, sorted, "newest first, none twice");
    // Bounded by time.
    let later = api.get("/v1/audit?since=2999-01-01T00:00:00Z").await;
    assert_eq!(later.body["items"], json!([]));

    // Bad queries are named; other roles and projects see nothing.
    let r = api
        .get("/v1/audit?since=yesterday&limit=0&cursor=bm9wZQ&touchpointId=nope")
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(paths, ["cursor", "limit", "since", "touchpointId"]);
    for key in [CAMPAIGN, OPERATOR_A] {
        let r = api.call(Method::GET, "/v1/audit", Some(key), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    let r = api
        .call(Method::GET, "/v1/audit", Some(ADMIN_2), None)
        .await;
    assert_eq!(r.body["items"], json!([]));
}
