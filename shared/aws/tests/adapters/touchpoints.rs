//! The DynamoDB touchpoint store against moto: the same rules the SQLite store keeps.

use crate::support;

use std::sync::Arc;

use serde_json::json;
use touchpoint::audit::{Actor, AuditAction, AuditEntry};
use touchpoint::ports::{ListFilter, StoreError, TouchpointStore, UpdateGuard};
use touchpoint::{DomainError, SystemClock, Touchpoints, UrlPolicy};
use touchpoint_aws::DynamoTouchpoints;

async fn service() -> (Touchpoints, Arc<DynamoTouchpoints>) {
    let (tp, store, _, _) = service_on().await;
    (tp, store)
}

async fn service_on() -> (
    Touchpoints,
    Arc<DynamoTouchpoints>,
    touchpoint_aws::Clients,
    touchpoint_aws::AwsNames,
) {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let store = Arc::new(DynamoTouchpoints::new(clients.dynamodb.clone(), &names));
    let touchpoints = Touchpoints::new(
        store.clone(),
        Arc::new(SystemClock),
        UrlPolicy {
            allow_plain_http: true,
        },
    );
    (touchpoints, store, clients, names)
}

fn no_audit() -> AuditEntry {
    AuditEntry::new(1, &Actor::system(), AuditAction::Edit, None, 1)
}

fn body(name: &str, kind: &str) -> serde_json::Value {
    json!({
        "name": name, "kind": kind, "url": "https://sms.example.com/touch", "token": "abc123",
        "userAttributes": [{"attribute": "usr_phone", "identifier": "phone", "displayName": "手机号"}],
        "templateParams": [{"identifier": "title", "displayName": "标题", "type": "text", "required": true}]
    })
}

#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn touchpoints_are_stored_listed_and_unique_by_name() {
    let (tp, store) = service().await;
    let a = tp.create(1, &body("短信", "notification")).await.unwrap();
    let got = tp.get(1, &a.id).await.unwrap();
    assert_eq!(got, a, "round trip, token included");
    assert!(matches!(
        tp.create(1, &body("短信", "benefit")).await,
        Err(DomainError::NameTaken(_))
    ));
    tp.create(2, &body("短信", "benefit")).await.unwrap();
    assert!(
        store.get(2, &a.id).await.unwrap().is_none(),
        "projects are apart"
    );
    let mut ids = vec![a.id.clone()];
    for i in 0..4 {
        ids.push(
            tp.create(1, &body(&format!("券 {i}"), "benefit"))
                .await
                .unwrap()
                .id,
        );
    }
    let page = store
        .list(
            1,
            &ListFilter {
                limit: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        ids[..3]
    );
    let rest = store
        .list(
            1,
            &ListFilter {
                limit: 10,
                after_id: Some(ids[2].to_string()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    let benefit = store
        .list(
            1,
            &ListFilter {
                limit: 10,
                kind: Some(touchpoint::Kind::Benefit),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(benefit.len(), 4);
    let named = store
        .list(
            1,
            &ListFilter {
                limit: 10,
                name_contains: Some("券 2".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(named.len(), 1);
}

#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn lifecycle_guards_hold_at_write_time() {
    let (tp, store) = service().await;
    let a = tp.create(1, &body("券中心", "benefit")).await.unwrap();
    let a = tp
        .set_spaces(
            1,
            &a.id,
            vec!["space-a", "space-b"]
                .into_iter()
                .map(String::from)
                .collect(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(tp.for_space(1, "space-a").await.unwrap().len(), 1);

    tp.put_campaign(
        1,
        &a.id,
        "cmp-42",
        touchpoint::CampaignState::Running,
        Some("双十一"),
    )
    .await
    .unwrap();
    match tp.disable(1, &a.id, None).await {
        Err(DomainError::InUse(refs)) => assert_eq!(refs[0].campaign_id, "cmp-42"),
        other => panic!("{other:?}"),
    }
    // Even if the use case had not looked, the write itself refuses.
    let mut off = a.clone();
    off.enabled = false;
    off.version = a.version + 1;
    assert!(matches!(
        store
            .update(
                &off,
                a.version,
                UpdateGuard::NoBlockingCampaigns,
                &no_audit()
            )
            .await,
        Err(StoreError::InUse(_))
    ));
    tp.put_campaign(1, &a.id, "cmp-42", touchpoint::CampaignState::Ended, None)
        .await
        .unwrap();
    let a = tp.disable(1, &a.id, None).await.unwrap();
    assert!(!a.enabled);
    assert!(
        tp.for_space(1, "space-a").await.unwrap().is_empty(),
        "disabled: hidden from operators"
    );
    assert!(matches!(
        tp.put_campaign(1, &a.id, "cmp-43", touchpoint::CampaignState::Running, None)
            .await,
        Err(DomainError::TouchpointDisabled)
    ));
    assert!(matches!(
        store
            .update(&a, a.version - 1, UpdateGuard::None, &no_audit())
            .await,
        Err(StoreError::VersionConflict { .. })
    ));

    let mut edit = body("券中心2", "benefit");
    edit["version"] = json!(a.version);
    let edited = tp.update(1, &a.id, &edit).await.unwrap();
    assert_eq!(edited.spec.name, "券中心2");
    tp.create(1, &body("券中心", "benefit"))
        .await
        .expect("the old name is free again");

    tp.delete(1, &a.id, None).await.unwrap();
    assert!(tp.get(1, &a.id).await.is_err());
    assert!(tp.for_space(1, "space-b").await.unwrap().is_empty());
    tp.create(1, &body("券中心2", "benefit"))
        .await
        .expect("a deleted touchpoint frees its name");
}

#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn every_change_is_audited_in_its_own_transaction_and_no_token_is_stored_in_the_log() {
    let (tp, _store, clients, names) = service_on().await;
    let admin = tp.by(Actor("key-0a1b2c3d".into()));
    let campaigns = tp.by(Actor("campaign-system".into()));
    let a = admin
        .create(1, &body("审计", "notification"))
        .await
        .unwrap();
    let a = admin
        .set_spaces(1, &a.id, vec!["space-a".into()], None)
        .await
        .unwrap();
    campaigns
        .put_campaign(
            1,
            &a.id,
            "cmp-1",
            touchpoint::CampaignState::Running,
            Some("双十二"),
        )
        .await
        .unwrap();
    // A refused change writes no entry.
    assert!(admin.disable(1, &a.id, None).await.is_err());
    campaigns
        .put_campaign(1, &a.id, "cmp-1", touchpoint::CampaignState::Ended, None)
        .await
        .unwrap();
    let a = admin
        .rotate_token(
            1,
            &a.id,
            &json!({"token": "rotated-secret", "overlapHours": 2}),
        )
        .await
        .unwrap();
    let rotation = a.rotation.clone().expect("in its overlap");
    assert_eq!(
        rotation.previous.as_ref().map(|t| t.expose()),
        Some("abc123")
    );
    assert_eq!(
        tp.get(1, &a.id).await.unwrap().rotation,
        Some(rotation),
        "the rotation is stored"
    );
    // An admin's pause is stored with the touchpoint.
    admin
        .pause(1, &a.id, &json!({"reason": "维护"}))
        .await
        .unwrap();
    let paused = tp.get(1, &a.id).await.unwrap().paused.expect("stored");
    assert_eq!(paused.reason.as_deref(), Some("维护"));
    admin.resume(1, &a.id, None, None).await.unwrap();
    assert!(tp.get(1, &a.id).await.unwrap().paused.is_none());
    admin.disable(1, &a.id, None).await.unwrap();
    admin.delete(1, &a.id, None).await.unwrap();

    let page = tp
        .audit_log(
            1,
            &touchpoint::service::AuditParams {
                touchpoint_id: Some(a.id.to_string()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let seen: Vec<(&str, &str)> = page
        .items
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("touchpoint.delete", "key-0a1b2c3d"),
            ("touchpoint.disable", "key-0a1b2c3d"),
            ("touchpoint.resume", "key-0a1b2c3d"),
            ("touchpoint.pause", "key-0a1b2c3d"),
            ("touchpoint.token.rotate", "key-0a1b2c3d"),
            ("campaign.put", "campaign-system"),
            ("campaign.put", "campaign-system"),
            ("touchpoint.spaces", "key-0a1b2c3d"),
            ("touchpoint.create", "key-0a1b2c3d"),
        ]
    );
    let rotate = &page.items[4];
    let token_change = rotate.changes.iter().find(|c| c.field == "token").unwrap();
    assert_eq!(token_change.after, Some(json!("changed")));
    assert!(
        rotate
            .changes
            .iter()
            .any(|c| c.field == "tokenOverlapUntil")
    );
    let ended = &page.items[5];
    assert_eq!(ended.target.as_deref(), Some("cmp-1"));
    let state = ended.changes.iter().find(|c| c.field == "state").unwrap();
    assert_eq!(state.before, Some(json!("running")));
    assert_eq!(state.after, Some(json!("ended")));

    // Paged by cursor, and bounded by time.
    let first = tp
        .audit_log(
            1,
            &touchpoint::service::AuditParams {
                limit: Some("3".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 3);
    let second = tp
        .audit_log(
            1,
            &touchpoint::service::AuditParams {
                limit: Some("10".into()),
                cursor: first.next_cursor.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(second.items.len(), 6);
    assert!(second.next_cursor.is_none());
    assert!(
        tp.audit_log(
            1,
            &touchpoint::service::AuditParams {
                since: Some("2999-01-01T00:00:00Z".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .items
        .is_empty()
    );

    // The entries expire with the delivery records, and hold no token.
    let items = clients
        .dynamodb
        .scan()
        .table_name(&names.delivery_table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    let audit: Vec<_> = items
        .iter()
        .filter(|i| i["pk"].as_s().is_ok_and(|pk| pk == "AUDIT#1"))
        .collect();
    assert_eq!(audit.len(), 9);
    for item in audit {
        let text = format!("{item:?}");
        assert!(
            !text.contains("abc123") && !text.contains("rotated-secret"),
            "{text}"
        );
        let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
        let at: i64 = item["at"].as_n().unwrap().parse().unwrap();
        assert_eq!(expires, at / 1000 + names.retention.as_secs() as i64);
    }
}
