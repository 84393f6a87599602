//! Pausing and resuming by hand, and the `health` every touchpoint answer carries.

use crate::common::*;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn an_admin_pauses_and_resumes_a_touchpoint_and_its_health_says_so() {
    let api = Api::new();
    let tp = api.create(coupon()).await;
    let id = id_of(&tp);
    assert_eq!(tp["health"], json!({"state": "healthy", "manual": false}));
    let pause = format!("/v1/touchpoints/{id}/pause");
    let resume = format!("/v1/touchpoints/{id}/resume");
    // Admins only; the body's rules.
    let r = api.call(Method::POST, &pause, Some(CAMPAIGN), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for bad in [
        json!({"reason": ""}),
        json!({"reason": "x".repeat(201)}),
        json!({"reason": 5}),
        json!({"why": "x"}),
        json!({"version": 0}),
        json!([1]),
    ] {
        let r = api.post(&pause, bad.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.body
        );
    }
    let r = api.post(&pause, json!({"version": 7})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let r = api
        .post(
            &pause,
            json!({"reason": "SMS gateway maintenance", "version": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let health = &r.body["health"];
    assert_eq!(health["state"], "paused");
    assert_eq!(health["manual"], true);
    assert_eq!(health["reason"], "SMS gateway maintenance");
    assert!(health["since"].is_string());
    assert_eq!(r.body["enabled"], true, "a pause is not a disable");
    assert_eq!(r.body["version"], 2);
    // Pausing again keeps the first pause.
    let again = api.call(Method::POST, &pause, Some(ADMIN), None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["version"], 2);
    assert_eq!(again.body["health"], *health);
    // Listed with its health; a fetched touchpoint can be sent back as it is.
    let list = api.get("/v1/touchpoints").await;
    assert_eq!(list.body["items"][0]["health"], *health);

    // A test send while paused says why nothing went.
    let test = api
        .post(
            &format!("/v1/touchpoints/{id}/test"),
            json!({"users": [{"gid": 1, "attributes": {"usr_phone": "1"}}],
                   "templateValues": {"title": "t", "startDate": "2026-12-01", "jump": "NO_JUMP"}}),
        )
        .await;
    assert_eq!(test.status, StatusCode::OK, "{}", test.body);
    assert_eq!(test.body["ok"], false);
    assert!(
        test.body["error"]
            .as_str()
            .unwrap()
            .contains("paused by an admin"),
        "{}",
        test.body
    );

    let r = api.post(&resume, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["health"]["state"], "healthy");
    assert_eq!(r.body["version"], 3);
    // Nothing to resume: nothing changes, nothing is recorded.
    let r = api.post(&resume, json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["version"], 3);

    let log = api.get(&format!("/v1/audit?touchpointId={id}")).await;
    let actions: Vec<&str> = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["touchpoint.resume", "touchpoint.pause", "touchpoint.create"]
    );
    let paused: &Value = &log.body["items"][1]["changes"][0];
    assert_eq!(paused["field"], "paused");
    assert_eq!(paused["after"]["reason"], "SMS gateway maintenance");
    assert!(paused.get("before").is_none());
}
