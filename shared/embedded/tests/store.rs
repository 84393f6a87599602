//! The SQLite store's own guarantees: the guards it enforces at the moment of the write, and
//! durability across reopening the same data directory.

use serde_json::json;
use touchpoint::audit::{Actor, AuditAction, AuditEntry, AuditFilter};
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
        rotation: None,
        paused: None,
        enabled: true,
        space_ids: vec!["space-a".into()],
        version: 1,
        created_at: 1,
        updated_at: 1,
    }
}

/// An entry for the store's own writes (what it says does not matter here).
fn audit() -> AuditEntry {
    AuditEntry::new(1, &Actor::system(), AuditAction::Edit, None, 1)
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
    store.insert(&tp, &audit()).await.unwrap();

    // A live campaign arrives after the use case looked: the disabling write still refuses.
    store
        .put_campaign(1, &("tp_1").into(), &running("cmp-42"), &audit())
        .await
        .unwrap();
    let mut off = tp.clone();
    off.enabled = false;
    off.version = 2;
    match store
        .update(&off, 1, UpdateGuard::NoBlockingCampaigns, &audit())
        .await
    {
        Err(StoreError::InUse(refs)) => assert_eq!(refs[0].campaign_id, "cmp-42"),
        other => panic!("expected InUse, got {other:?}"),
    }
    // Edits need a disabled touchpoint at write time.
    assert!(matches!(
        store
            .update(&off, 1, UpdateGuard::MustBeDisabled, &audit())
            .await,
        Err(StoreError::Enabled)
    ));
    // A stale version loses.
    assert!(matches!(
        store.update(&off, 7, UpdateGuard::None, &audit()).await,
        Err(StoreError::VersionConflict { current: 1 })
    ));
    store
        .delete_campaign(1, &("tp_1").into(), "cmp-42", &audit())
        .await
        .unwrap();
    store
        .update(&off, 1, UpdateGuard::NoBlockingCampaigns, &audit())
        .await
        .unwrap();
    // Once disabled, a live campaign cannot attach.
    assert!(matches!(
        store
            .put_campaign(1, &("tp_1").into(), &running("cmp-43"), &audit())
            .await,
        Err(StoreError::Disabled)
    ));
    // Deleting checks the version, and removes the references too.
    assert!(matches!(
        store.delete(1, &("tp_1").into(), 1, &audit()).await,
        Err(StoreError::VersionConflict { current: 2 })
    ));
    store
        .delete(1, &("tp_1").into(), 2, &audit())
        .await
        .unwrap();
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
async fn an_audit_entry_is_written_with_its_change_and_never_without_it() {
    let store = SqliteStore::in_memory().unwrap();
    let mut tp = touchpoint("tp_1", "sms");
    tp.rotation = Some(TokenRotation {
        previous: Some(Token::new("old-secret")),
        until: 5_000,
    });
    let entry = |at: i64, action: AuditAction, tp: &str| {
        AuditEntry::new(
            1,
            &Actor("key-0123abcd".into()),
            action,
            Some(&tp.into()),
            at,
        )
    };
    store
        .insert(&tp, &entry(10, AuditAction::Create, "tp_1"))
        .await
        .unwrap();
    // The rotation round-trips with the touchpoint.
    assert_eq!(
        store.get(1, &("tp_1").into()).await.unwrap(),
        Some(tp.clone())
    );
    let mut off = tp.clone();
    off.enabled = false;
    off.version = 2;
    // Refused writes leave no entry.
    assert!(
        store
            .update(
                &off,
                9,
                UpdateGuard::None,
                &entry(20, AuditAction::Disable, "tp_1")
            )
            .await
            .is_err()
    );
    assert!(
        store
            .insert(
                &touchpoint("tp_2", "sms"),
                &entry(21, AuditAction::Create, "tp_2")
            )
            .await
            .is_err()
    );
    store
        .update(
            &off,
            1,
            UpdateGuard::None,
            &entry(30, AuditAction::Disable, "tp_1"),
        )
        .await
        .unwrap();
    store
        .insert(
            &touchpoint("tp_3", "other"),
            &entry(40, AuditAction::Create, "tp_3"),
        )
        .await
        .unwrap();
    let list = |filter: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .audit_log(1, &filter)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.at, e.action, e.actor))
                .collect::<Vec<_>>()
        }
    };
    let all = list(AuditFilter {
        limit: 10,
        ..Default::default()
    })
    .await;
    let actor = || "key-0123abcd".to_owned();
    assert_eq!(
        all,
        [
            (40, AuditAction::Create, actor()),
            (30, AuditAction::Disable, actor()),
            (10, AuditAction::Create, actor())
        ],
        "newest first, nothing from the refused writes"
    );
    let of_tp1 = list(AuditFilter {
        touchpoint_id: Some("tp_1".into()),
        since: Some(20),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(of_tp1, [(30, AuditAction::Disable, actor())]);
    let first = store
        .audit_log(
            1,
            &AuditFilter {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let rest = list(AuditFilter {
        before_id: Some(first[0].id()),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(rest.len(), 2, "the page after the first");
    assert!(
        list(AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .len()
            == 3
            && store
                .audit_log(
                    2,
                    &AuditFilter {
                        limit: 10,
                        ..Default::default()
                    }
                )
                .await
                .unwrap()
                .is_empty(),
        "projects do not see each other's entries"
    );
}

#[tokio::test]
async fn names_are_unique_per_project() {
    let store = SqliteStore::in_memory().unwrap();
    store
        .insert(&touchpoint("tp_1", "sms"), &audit())
        .await
        .unwrap();
    assert!(matches!(
        store.insert(&touchpoint("tp_2", "sms"), &audit()).await,
        Err(StoreError::NameTaken(_))
    ));
    let mut other = touchpoint("tp_3", "sms");
    other.project_id = 2;
    store.insert(&other, &audit()).await.unwrap();
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
        store.insert(&tp, &audit()).await.unwrap();
        store
            .put_campaign(1, &("tp_1").into(), &running("cmp-42"), &audit())
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
