//! The DynamoDB touchpoint store against moto: the same rules the SQLite store keeps.

use crate::support;

use std::sync::Arc;

use serde_json::json;
use touchpoint::ports::{ListFilter, StoreError, TouchpointStore, UpdateGuard};
use touchpoint::{DomainError, SystemClock, Touchpoints, UrlPolicy};
use touchpoint_aws::DynamoTouchpoints;

async fn service() -> (Touchpoints, Arc<DynamoTouchpoints>) {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let store = Arc::new(DynamoTouchpoints::new(
        clients.dynamodb.clone(),
        names.touchpoints_table,
    ));
    let touchpoints = Touchpoints::new(
        store.clone(),
        Arc::new(SystemClock),
        UrlPolicy {
            allow_plain_http: true,
        },
    );
    (touchpoints, store)
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
            .update(&off, a.version, UpdateGuard::NoBlockingCampaigns)
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
        store.update(&a, a.version - 1, UpdateGuard::None).await,
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
