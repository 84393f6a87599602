//! A project's notification settings, and the notifications an admin's pause and resume put
//! into the outbox.

use crate::common::*;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use touchpoint::notify::EventType;

const PATH: &str = "/v1/notifications";
const HOOK_TOKEN: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn settings(events: Value) -> Value {
    json!({"url": "https://ops.example.com/hooks", "token": "SECRET-tok-notify", "events": events})
}

#[tokio::test]
async fn settings_are_checked_kept_per_project_audited_and_never_show_the_token() {
    let api = Api::new();
    let r = api.get(PATH).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "none yet: {}", r.body);
    // Only admins.
    for key in [CAMPAIGN, OPERATOR_A] {
        let r = api
            .call(
                Method::PUT,
                PATH,
                Some(key),
                Some(settings(json!(["touchpoint.paused"]))),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    // Every rule at once: the token is required the first time.
    let r = api
        .put(
            PATH,
            json!({"url": "ftp://x", "events": ["touchpoint.paused", "nope"], "extra": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let mut paths = r.error_paths();
    paths.sort();
    assert_eq!(paths, ["events[1]", "extra", "token", "url"]);
    for bad in [
        json!({"url": "https://ops.example.com", "token": "t", "events": []}),
        json!({"url": "https://ops.example.com", "token": "whsec_%%", "events": ["receipt.timeout"]}),
        json!({"url": "https://user:pw@ops.example.com", "token": "t", "events": ["receipt.timeout"]}),
        json!({"url": "https://ops.example.com", "token": "t", "events": "receipt.timeout"}),
        json!({"url": "http://ops.example.com", "token": "t", "events": ["receipt.timeout"]}),
        json!([]),
    ] {
        let r = api.put(PATH, bad.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.body
        );
    }
    let all: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
    let r = api.put(PATH, settings(json!(all))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["url"], "https://ops.example.com/hooks");
    assert_eq!(r.body["tokenSet"], true);
    assert_eq!(r.body["events"].as_array().unwrap().len(), 5);
    assert!(r.body.get("token").is_none(), "{}", r.body);
    // Without the token: the current one is kept; events are kept once each.
    let r = api
        .put(
            PATH,
            json!({"url": "https://ops.example.com/v2", "events": ["receipt.timeout", "receipt.timeout"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["events"], json!(["receipt.timeout"]));
    let kept = api.store.notification_config_for_test(1).await.unwrap();
    assert_eq!(
        kept.token.expose(),
        "SECRET-tok-notify",
        "the token is kept"
    );
    // Another project sees none of it.
    let r = api.call(Method::GET, PATH, Some(ADMIN_2), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Audited: the token only as changed.
    let r = api.get("/v1/audit").await;
    let items = r.body["items"].as_array().unwrap().clone();
    let actions: Vec<&str> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["notifications.put", "notifications.put"],
        "{}",
        r.body
    );
    let first = &items[1]["changes"];
    assert!(
        first
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["field"] == "token" && c["after"] == "changed"),
        "{first}"
    );
    assert!(!r.body.to_string().contains("SECRET-tok-notify"));
    // Removed: gone, and recorded; a second removal finds nothing.
    let r = api.call(Method::DELETE, PATH, Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.call(Method::DELETE, PATH, Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(api.get(PATH).await.status, StatusCode::NOT_FOUND);
    let r = api.get("/v1/audit").await;
    assert_eq!(r.body["items"][0]["action"], "notifications.delete");
}

/// What the outbox holds now: (type, data) of each notification.
async fn outbox(api: &Api) -> Vec<(String, Value)> {
    api.store
        .due_notifications(i64::MAX / 2, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, n)| (n.event.as_str().to_owned(), n.data))
        .collect()
}

#[tokio::test]
async fn an_admins_pause_and_resume_are_notified_when_the_project_subscribes() {
    let api = Api::new();
    let tp = api.create(coupon()).await;
    let id = id_of(&tp);
    // Not subscribed: nothing is kept.
    assert_eq!(
        api.post(&format!("/v1/touchpoints/{id}/pause"), json!({}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.post(&format!("/v1/touchpoints/{id}/resume"), json!({}))
            .await
            .status,
        StatusCode::OK
    );
    assert!(outbox(&api).await.is_empty());
    let r = api
        .put(
            PATH,
            json!({"url": "https://ops.example.com/hooks", "token": HOOK_TOKEN, "events": ["touchpoint.paused", "touchpoint.resumed"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api
        .post(
            &format!("/v1/touchpoints/{id}/pause"),
            json!({"reason": "receiver upgrade"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .post(&format!("/v1/touchpoints/{id}/resume"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let kept = outbox(&api).await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    let paused = kept.iter().find(|(t, _)| t == "touchpoint.paused").unwrap();
    assert_eq!(paused.1["touchpointId"], id.as_str());
    assert_eq!(paused.1["manual"], true);
    assert_eq!(paused.1["reason"], "receiver upgrade");
    assert!(paused.1["actor"].as_str().unwrap().starts_with("key-"));
    let resumed = kept
        .iter()
        .find(|(t, _)| t == "touchpoint.resumed")
        .unwrap();
    assert_eq!(resumed.1["pausedSince"], paused.1["since"]);
}
