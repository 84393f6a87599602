//! The SQLite store's own guarantees: the guards it enforces at the moment of the write, and
//! durability across reopening the same data directory.

use serde_json::json;
use touchpoint::model::*;
use touchpoint::ports::{ListFilter, StoreError, TouchpointStore, UpdateGuard};
use touchpoint_embedded::SqliteStore;

fn touchpoint(id: &str, name: &str) -> Touchpoint {
    Touchpoint {
        id: id.into(),
        project_id: 1,
        spec: TouchpointSpec {
            name: name.into(),
            kind: Kind::Notification,
            description: None,
            url: "https://sms.example.com/touch".into(),
            batch_size: 100,
            receipt: Receipt::Sync,
            user_attributes: vec![UserAttribute {
                attribute: "usr_phone".into(),
                identifier: "phone".into(),
                display_name: "手机号".into(),
                default: Some(json!("")),
            }],
            template_params: vec![TemplateParam {
                identifier: "title".into(),
                display_name: "标题".into(),
                param_type: ParamType::Text,
                required: true,
                default: None,
                enum_spec: None,
            }],
            request_timeout_seconds: None,
            max_concurrency: None,
            max_requests_per_second: None,
        },
        token: Some(Token::new("abc123")),
        enabled: true,
        space_ids: vec!["space-a".into()],
        version: 1,
        created_at: 1,
        updated_at: 1,
    }
}

fn running(id: &str) -> CampaignRef {
    CampaignRef {
        campaign_id: id.into(),
        name: "双十一".into(),
        state: CampaignState::Running,
        updated_at: 2,
    }
}

#[tokio::test]
async fn guards_hold_at_the_moment_of_the_write() {
    let store = SqliteStore::in_memory().unwrap();
    let tp = touchpoint("tp_1", "sms");
    store.insert(&tp).await.unwrap();

    // A live campaign arrives after the use case looked: the disabling write still refuses.
    store
        .put_campaign(1, &("tp_1").into(), &running("cmp-42"))
        .await
        .unwrap();
    let mut off = tp.clone();
    off.enabled = false;
    off.version = 2;
    match store
        .update(&off, 1, UpdateGuard::NoBlockingCampaigns)
        .await
    {
        Err(StoreError::InUse(refs)) => assert_eq!(refs[0].campaign_id, "cmp-42"),
        other => panic!("expected InUse, got {other:?}"),
    }
    // Edits need a disabled touchpoint at write time.
    assert!(matches!(
        store.update(&off, 1, UpdateGuard::MustBeDisabled).await,
        Err(StoreError::Enabled)
    ));
    // A stale version loses.
    assert!(matches!(
        store.update(&off, 7, UpdateGuard::None).await,
        Err(StoreError::VersionConflict { current: 1 })
    ));
    store
        .delete_campaign(1, &("tp_1").into(), "cmp-42")
        .await
        .unwrap();
    store
        .update(&off, 1, UpdateGuard::NoBlockingCampaigns)
        .await
        .unwrap();
    // Once disabled, a live campaign cannot attach.
    assert!(matches!(
        store
            .put_campaign(1, &("tp_1").into(), &running("cmp-43"))
            .await,
        Err(StoreError::Disabled)
    ));
    // Deleting checks the version, and removes the references too.
    assert!(matches!(
        store.delete(1, &("tp_1").into(), 1).await,
        Err(StoreError::VersionConflict { current: 2 })
    ));
    store.delete(1, &("tp_1").into(), 2).await.unwrap();
    assert!(store.get(1, &("tp_1").into()).await.unwrap().is_none());
    assert!(
        store
            .campaigns(1, &("tp_1").into())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn names_are_unique_per_project() {
    let store = SqliteStore::in_memory().unwrap();
    store.insert(&touchpoint("tp_1", "sms")).await.unwrap();
    assert!(matches!(
        store.insert(&touchpoint("tp_2", "sms")).await,
        Err(StoreError::NameTaken(_))
    ));
    let mut other = touchpoint("tp_3", "sms");
    other.project_id = 2;
    store.insert(&other).await.unwrap();
    assert!(
        store.get(1, &("tp_3").into()).await.unwrap().is_none(),
        "projects do not see each other"
    );
}

#[tokio::test]
async fn everything_survives_reopening_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let tp = touchpoint("tp_1", "sms");
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.insert(&tp).await.unwrap();
        store
            .put_campaign(1, &("tp_1").into(), &running("cmp-42"))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.get(1, &("tp_1").into()).await.unwrap(), Some(tp));
    assert_eq!(
        store.campaigns(1, &("tp_1").into()).await.unwrap(),
        vec![running("cmp-42")]
    );
    let listed = store.list_for_space(1, "space-a").await.unwrap();
    assert_eq!(listed.len(), 1);
    let page = store
        .list(
            1,
            &ListFilter {
                limit: 10,
                name_contains: Some("SM".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 1, "name search ignores ASCII case");
}

#[tokio::test]
async fn the_intake_knows_a_dispatch_from_submission_to_dead_letter() {
    use touchpoint::delivery::{DispatchIntake, Submission};
    let store = SqliteStore::in_memory().unwrap();
    assert_eq!(store.submitted(1, &("d1").into()).await.unwrap(), None);
    assert!(
        store
            .submit(1, &("d1").into(), "{}".into(), 1_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .submit(1, &("d1").into(), "{}".into(), 2_000)
            .await
            .unwrap(),
        "once"
    );
    assert_eq!(
        store.submitted(1, &("d1").into()).await.unwrap(),
        Some(Submission {
            received_at: 1_000,
            dead_letter_reason: None
        })
    );
    assert_eq!(
        store.submitted(2, &("d1").into()).await.unwrap(),
        None,
        "per project"
    );
    let message = store.receive(1_000, 60_000).await.unwrap().unwrap();
    store.dead_letter(message.id, "not JSON").await.unwrap();
    assert_eq!(
        store
            .submitted(1, &("d1").into())
            .await
            .unwrap()
            .unwrap()
            .dead_letter_reason
            .as_deref(),
        Some("not JSON")
    );
}

#[tokio::test]
async fn many_messages_are_received_at_once_earliest_first_each_hidden_and_counted() {
    use touchpoint::delivery::DispatchIntake;
    let store = SqliteStore::in_memory().unwrap();
    for (i, at) in [(1, 3_000), (2, 1_000), (3, 2_000), (4, 9_000)] {
        let body = format!("{{\"n\":{i}}}");
        assert!(
            store
                .submit(1, &format!("d{i}").as_str().into(), body, at)
                .await
                .unwrap()
        );
    }
    let bodies = |m: &[touchpoint_embedded::QueuedDispatch]| -> Vec<String> {
        m.iter().map(|m| m.body.clone()).collect()
    };
    // At 5 s, three are visible; two are asked for: the earliest two.
    let first = store.receive_many(5_000, 60_000, 2).await.unwrap();
    assert_eq!(bodies(&first), [r#"{"n":2}"#, r#"{"n":3}"#]);
    assert!(first.iter().all(|m| m.receives == 1));
    // Those are hidden now: the rest visible at 5 s is the third only.
    let second = store.receive_many(5_000, 60_000, 10).await.unwrap();
    assert_eq!(bodies(&second), [r#"{"n":1}"#]);
    assert!(
        store
            .receive_many(5_000, 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Once their visibility ran out they come back, counted twice (in the order they were
    // queued), after the fourth (due at 9 s, received for the first time).
    let again = store.receive_many(70_000, 60_000, 10).await.unwrap();
    assert_eq!(
        bodies(&again),
        [r#"{"n":4}"#, r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
    );
    assert_eq!(
        again.iter().map(|m| m.receives).collect::<Vec<_>>(),
        [1, 2, 2, 2]
    );
}

#[tokio::test]
async fn durability_chooses_what_a_commit_survives() {
    use touchpoint_embedded::Durability;
    let dir = tempfile::tempdir().unwrap();
    let normal = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(normal.synchronous().await.unwrap(), 1, "NORMAL by default");
    drop(normal);
    let full = SqliteStore::open_with(dir.path(), Durability::PowerLoss).unwrap();
    assert_eq!(full.synchronous().await.unwrap(), 2, "FULL when asked");
    assert_eq!(Durability::parse("power-loss"), Some(Durability::PowerLoss));
    assert_eq!(Durability::parse("process"), Some(Durability::Process));
    assert_eq!(Durability::parse("sometimes"), None);
}
