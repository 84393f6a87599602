//! The DynamoDB ledger against moto: claims, settlement counted once, poll leases, intake.

use crate::support;

use touchpoint::delivery::*;
use touchpoint::protocol::UserStatus;
use touchpoint_aws::{DynamoDelivery, SchedulerReceipts};

fn meta() -> DispatchMeta {
    DispatchMeta {
        project_id: 1,
        dispatch_id: "d1".into(),
        space_id: "s".into(),
        campaign_id: "c".into(),
        strategy_id: None,
        touchpoint_id: "tp_1".into(),
        touchpoint_kind: None,
    }
}

fn ok(gids: &[i64]) -> Vec<UserResult> {
    gids.iter()
        .map(|g| UserResult {
            gid: *g,
            status: UserStatus::Succeeded,
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn claims_and_records_keep_one_outcome_per_batch() {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let ledger = DynamoDelivery::new(&clients, &names);
    let m = meta();
    assert!(ledger.open_dispatch(&m, 2, 10, 1_000).await.unwrap().new);
    let again = ledger.open_dispatch(&m, 2, 30, 1_000).await.unwrap();
    assert!(!again.new, "opened once");
    assert_eq!(
        again.batch_size, 10,
        "with the batch size it was opened with"
    );
    let progress = touchpoint::delivery::Progress {
        frontier: 1,
        open: vec![0],
        abandoned: None,
    };
    let looked_at_0 = Advance {
        batches: 2,
        looked: &[0],
        finished: &[],
        abandoned: None,
        settled: &[],
    };
    assert_eq!(
        ledger.checkpoint(&m, &looked_at_0, 2_000).await.unwrap(),
        progress
    );
    assert_eq!(
        ledger
            .open_dispatch(&m, 2, 10, 3_000)
            .await
            .unwrap()
            .progress,
        progress,
        "a redelivery resumes where the last one stopped"
    );
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &("o1").into(), 2, 1_000, 5_000)
            .await
            .unwrap(),
        Claim::Send {
            attempt: 1,
            sent_at: 1_000,
            counted: 1
        }
    );
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &("o1").into(), 2, 2_000, 6_000)
            .await
            .unwrap(),
        Claim::NotBefore(5_000),
        "leased"
    );
    let retry = AttemptRecord {
        meta: m.clone(),
        order_no: "o1".into(),
        batch_index: 0,
        sent_at: 1_000,
        attempt: 1,
        http_status: Some(503),
        error: Some("HTTP 503".into()),
        response_excerpt: None,
        at: 2_000,
        outcome: AttemptOutcome::Retry {
            next_attempt_at: 3_000,
        },
    };
    ledger.record_attempt(&retry).await.unwrap();
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &("o1").into(), 2, 2_500, 9_000)
            .await
            .unwrap(),
        Claim::NotBefore(3_000)
    );
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &("o1").into(), 2, 3_000, 9_000)
            .await
            .unwrap(),
        Claim::Send {
            attempt: 2,
            sent_at: 1_000,
            counted: 2
        },
        "the first send's time is kept"
    );
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &("o1").into(), 2, 9_000, 12_000)
            .await
            .unwrap(),
        Claim::Send {
            attempt: 3,
            sent_at: 1_000,
            counted: 2
        },
        "its sender died (the lease ran out): taken again, the lost attempt not counted"
    );
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &("o1").into(), 2, 12_000, 15_000)
            .await
            .unwrap(),
        Claim::Send {
            attempt: 4,
            sent_at: 1_000,
            counted: 2
        },
        "a second lost attempt is not counted either"
    );
    let done = AttemptRecord {
        attempt: 2,
        http_status: Some(200),
        error: None,
        at: 3_500,
        outcome: AttemptOutcome::Final(vec![
            UserResult {
                gid: 2,
                status: UserStatus::failed("blocked by the gateway"),
            },
            ok(&[1])[0].clone(),
        ]),
        ..retry
    };
    let settled = ledger.record_attempt(&done).await.unwrap().unwrap();
    let AttemptOutcome::Final(written) = &done.outcome else {
        unreachable!()
    };
    assert_eq!((settled.index, &settled.results), (0, written));
    // Recorded again (a write that timed out after taking effect, tried again): the outcome
    // is handed back as it is stored, not lost and not changed.
    assert_eq!(
        ledger.record_attempt(&done).await.unwrap(),
        Some(settled.clone())
    );
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &("o1").into(), 2, 4_000, 9_000)
            .await
            .unwrap(),
        Claim::Settled(settled.clone()),
        "nothing to send; its outcome goes to the checkpoint"
    );
    let counted = Advance {
        batches: 2,
        looked: &[0],
        finished: &[0],
        abandoned: None,
        settled: std::slice::from_ref(&settled),
    };
    let after = ledger.checkpoint(&m, &counted, 4_000).await.unwrap();
    assert!(after.is_finished(0) && !after.is_finished(1));
    // A second delivery that found it settled too checkpoints it again: counted once.
    ledger.checkpoint(&m, &counted, 4_500).await.unwrap();
    let stats = ledger.stats(1, StatsScope::Campaign, "c").await.unwrap();
    assert_eq!(
        (stats.sent, stats.succeeded, stats.failed, stats.pending),
        (2, 1, 1, 0),
        "counted once"
    );
    let b = ledger.batch(1, &("o1").into()).await.unwrap().unwrap();
    assert_eq!((b.state, b.attempts), (BatchState::Final, 2));
    assert_eq!(
        &b.results, written,
        "results read back in order, reasons kept"
    );
    assert!(
        ledger.batch(2, &("o1").into()).await.unwrap().is_none(),
        "another project sees nothing"
    );
}

#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn accepted_batches_are_found_through_the_due_index_and_leased_once() {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let ledger = DynamoDelivery::new(&clients, &names);
    let m = meta();
    ledger.open_dispatch(&m, 3, 10, 1_000).await.unwrap();
    ledger
        .claim_batch(&m, 0, &("o2").into(), 3, 1_000, 5_000)
        .await
        .unwrap();
    let accepted = AttemptRecord {
        meta: m.clone(),
        order_no: "o2".into(),
        batch_index: 0,
        sent_at: 1_000,
        attempt: 1,
        http_status: Some(200),
        error: None,
        response_excerpt: None,
        at: 1_000,
        outcome: AttemptOutcome::Accepted {
            results: ok(&[1]),
            pending: vec![2, 3],
            receipt_url: "https://x.example.com/receipt".into(),
            deadline: 100_000,
            next_poll_at: 2_000,
        },
    };
    let first = ledger.record_attempt(&accepted).await.unwrap().unwrap();
    assert_eq!(first.results, ok(&[1]), "the users its answer settled");
    let advance = Advance {
        batches: 1,
        looked: &[0],
        finished: &[0],
        abandoned: None,
        settled: std::slice::from_ref(&first),
    };
    ledger.checkpoint(&m, &advance, 1_000).await.unwrap();
    // TTL keeps it until its receipt deadline plus the retention, whatever the retention.
    let items = clients
        .dynamodb
        .scan()
        .table_name(&names.delivery_table)
        .filter_expression("order_no = :o")
        .expression_attribute_values(
            ":o",
            aws_sdk_dynamodb::types::AttributeValue::S("o2".into()),
        )
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0]["expires_at"]
            .as_n()
            .unwrap()
            .parse::<i64>()
            .unwrap(),
        100_000 / 1000 + names.retention.as_secs() as i64
    );
    assert!(
        ledger
            .due_polls(Some((1, &("tp_1").into())), 1_500, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    let due = ledger
        .due_polls(Some((1, &("tp_1").into())), 2_000, 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].order_no.as_str(), "o2");
    assert_eq!(
        ledger.pending_receipts(1, &("tp_1").into()).await.unwrap(),
        2
    );
    let leased = ledger
        .lease_poll(1, &("o2").into(), 2_000, 60_000)
        .await
        .unwrap()
        .expect("leased");
    assert_eq!(
        (leased.pending, leased.receipt_url.as_str()),
        (vec![2, 3], "https://x.example.com/receipt"),
        "the lease hands out the batch; the index holds only a few small attributes"
    );
    assert!(
        ledger
            .lease_poll(1, &("o2").into(), 2_001, 60_000)
            .await
            .unwrap()
            .is_none(),
        "one round at a time"
    );
    let poll = PollRecord {
        project_id: 1,
        order_no: "o2".into(),
        at: 2_100,
        settled: ok(&[2, 3]),
        next_poll_at: 302_100,
        http_status: Some(200),
        error: None,
    };
    ledger.record_poll(&poll).await.unwrap();
    ledger.record_poll(&poll).await.unwrap();
    assert!(
        ledger
            .due_polls(Some((1, &("tp_1").into())), 999_999, 10)
            .await
            .unwrap()
            .is_empty(),
        "left the sparse index"
    );
    let stats = ledger
        .stats(1, StatsScope::Touchpoint, "tp_1")
        .await
        .unwrap();
    assert_eq!((stats.succeeded, stats.pending), (3, 0));
    assert_eq!(
        ledger
            .batch(1, &("o2").into())
            .await
            .unwrap()
            .unwrap()
            .state,
        BatchState::Final
    );
    // Found again by a late delivery: only the users its first answer settled go to the
    // checkpoint (the poller counted the others), and that checkpoint counts nothing twice.
    let Claim::Settled(again) = ledger
        .claim_batch(&m, 0, &("o2").into(), 3, 3_000, 9_000)
        .await
        .unwrap()
    else {
        panic!("a settled batch is not sent again")
    };
    assert_eq!(again, first);
    ledger
        .checkpoint(
            &m,
            &Advance {
                settled: std::slice::from_ref(&again),
                ..advance
            },
            3_000,
        )
        .await
        .unwrap();
    let stats = ledger
        .stats(1, StatsScope::Touchpoint, "tp_1")
        .await
        .unwrap();
    assert_eq!(stats.succeeded, 3, "counted once");
}

#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn intake_queues_a_dispatch_id_once_and_schedules_are_idempotent() {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let ledger = DynamoDelivery::new(&clients, &names);
    assert!(
        ledger
            .submit(1, &("d-1").into(), "{}".into(), 1_000)
            .await
            .unwrap()
    );
    assert!(
        !ledger
            .submit(1, &("d-1").into(), "{}".into(), 1_000)
            .await
            .unwrap()
    );
    assert!(
        ledger
            .submit(2, &("d-1").into(), "{}".into(), 1_000)
            .await
            .unwrap(),
        "ids are per project"
    );
    let queued = clients
        .sqs
        .get_queue_attributes()
        .queue_url(names.dispatch_queue_url.clone().unwrap())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let count = queued.attributes().unwrap()
        [&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages]
        .clone();
    assert_eq!(count, "2");

    let schedules = SchedulerReceipts::new(clients.scheduler.clone(), &names).unwrap();
    schedules.ensure(1, &("tp_1").into()).await.unwrap();
    schedules.ensure(1, &("tp_1").into()).await.unwrap();
    let listed = clients
        .scheduler
        .list_schedules()
        .group_name(names.schedule_group.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.schedules().len(), 1);
    schedules.remove(1, &("tp_1").into()).await.unwrap();
    schedules.remove(1, &("tp_1").into()).await.unwrap();
    let listed = clients
        .scheduler
        .list_schedules()
        .group_name(names.schedule_group.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert!(listed.schedules().is_empty());
}

#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn a_checkpoint_of_outcomes_from_many_hours_counts_them_all_in_several_writes() {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let ledger = DynamoDelivery::new(&clients, &names);
    let m = DispatchMeta {
        dispatch_id: "d-hours".into(),
        campaign_id: "c-hours".into(),
        ..meta()
    };
    // Nine one-user batches whose outcomes were recorded an hour apart (deliveries that died
    // before counting them): more hours than one transaction can hold.
    let hour = touchpoint::delivery::HOUR_MS;
    ledger.open_dispatch(&m, 9, 1, 1_000).await.unwrap();
    let mut settled = Vec::new();
    for i in 0..9usize {
        let order = touchpoint::dispatch::order_no(1, &m.dispatch_id, i);
        let at = i as i64 * hour + 5_000;
        ledger
            .claim_batch(&m, i, &order, 1, at - 1_000, at + 60_000)
            .await
            .unwrap();
        let record = AttemptRecord {
            meta: m.clone(),
            order_no: order,
            batch_index: i,
            sent_at: at - 1_000,
            attempt: 1,
            http_status: Some(200),
            error: None,
            response_excerpt: None,
            at,
            outcome: AttemptOutcome::Final(ok(&[i as i64])),
        };
        settled.push(ledger.record_attempt(&record).await.unwrap().unwrap());
    }
    let all: Vec<u32> = (0..9).collect();
    let progress = ledger
        .checkpoint(
            &m,
            &Advance {
                batches: 9,
                looked: &all,
                finished: &all,
                abandoned: None,
                settled: &settled,
            },
            10 * hour,
        )
        .await
        .unwrap();
    assert!(progress.is_complete(9), "{progress:?}");
    let stats = ledger
        .stats(1, StatsScope::Campaign, "c-hours")
        .await
        .unwrap();
    assert_eq!((stats.sent, stats.succeeded), (9, 9), "each counted once");
    let series = ledger
        .stats_series(1, StatsScope::Campaign, "c-hours", 0, 10 * hour)
        .await
        .unwrap();
    let succeeded: Vec<u64> = series.iter().map(|h| h.succeeded).collect();
    assert_eq!(succeeded, [1; 9], "one user in each hour: {series:?}");
    // The dispatch's counts come from its record, its batches a page at a time.
    let view = ledger.dispatch(1, &m.dispatch_id).await.unwrap().unwrap();
    assert_eq!(
        (
            view.succeeded,
            view.failed,
            view.batches_finished,
            view.batches
        ),
        (9, 0, 9, 9)
    );
    let page = ledger.batch_page(1, &m.dispatch_id, 3, 4).await.unwrap();
    let indices: Vec<i64> = page.iter().map(|b| b.batch_index).collect();
    assert_eq!(indices, [3, 4, 5, 6]);
    assert!(
        page.iter()
            .all(|b| b.results.is_empty() && b.succeeded == 1)
    );
    assert!(
        ledger
            .batch_page(1, &m.dispatch_id, 9, 4)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Opening a dispatch is one write; its users count as sent with its first checkpoint, once,
/// whichever instance checkpoints it and whatever that instance remembers of the record.
#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn users_count_as_sent_once_from_the_first_checkpoint_of_any_instance() {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let one = DynamoDelivery::new(&clients, &names);
    let two = DynamoDelivery::new(&clients, &names);
    let mut m = meta();
    m.dispatch_id = "d-sent".into();
    m.campaign_id = "c-sent".into();
    let sent = || async {
        let s = one.stats(1, StatsScope::Campaign, "c-sent").await.unwrap();
        (s.sent, s.pending)
    };
    assert!(one.open_dispatch(&m, 3, 1, 1_000).await.unwrap().new);
    // A redelivery on another instance: it reads the record as opened.
    assert!(!two.open_dispatch(&m, 3, 1, 1_100).await.unwrap().new);
    let looked = |i: &'static [u32]| Advance {
        batches: 3,
        looked: i,
        finished: &[],
        abandoned: None,
        settled: &[],
    };
    two.checkpoint(&m, &looked(&[0]), 2_000).await.unwrap();
    assert_eq!(sent().await, (3, 3), "counted by the first checkpoint");
    // The first instance still remembers the record as opened, with its users not yet
    // counted: its write is refused, it reads the record again and counts nothing more.
    let progress = one.checkpoint(&m, &looked(&[1]), 2_100).await.unwrap();
    assert_eq!(sent().await, (3, 3), "counted once");
    assert_eq!(
        progress.frontier, 2,
        "both deliveries' progress kept: {progress:?}"
    );
    // An instance that never saw it reads it.
    let three = DynamoDelivery::new(&clients, &names);
    three.checkpoint(&m, &looked(&[2]), 2_200).await.unwrap();
    assert_eq!(sent().await, (3, 3));
}

/// The one-user dispatches an instance checkpoints at once share one transaction, their
/// counters moved once by their sum (two campaigns on one touchpoint: each counter item named
/// once); one whose record another instance wrote since is taken out of the group and written
/// alone. Every user is counted once.
#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn one_user_dispatches_checkpointed_together_share_a_transaction_and_count_once() {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let one = DynamoDelivery::new(&clients, &names);
    let two = DynamoDelivery::new(&clients, &names);
    let metas: Vec<DispatchMeta> = (0..10)
        .map(|i| {
            let mut m = meta();
            m.dispatch_id = format!("g-{i}").as_str().into();
            m.campaign_id = if i % 2 == 0 {
                "c-grouped-a"
            } else {
                "c-grouped-b"
            }
            .into();
            m.touchpoint_id = "tp_grouped".into();
            m
        })
        .collect();
    let mut settled = Vec::new();
    for m in &metas {
        assert!(one.open_dispatch(m, 1, 10, 1_000).await.unwrap().by_claim);
        let order = touchpoint::dispatch::order_no(1, &m.dispatch_id, 0);
        one.claim_opening(m, &order, 10, 2_000, 60_000)
            .await
            .unwrap();
        let record = AttemptRecord {
            meta: m.clone(),
            order_no: order,
            batch_index: 0,
            sent_at: 2_000,
            attempt: 1,
            http_status: Some(200),
            error: None,
            response_excerpt: None,
            at: 3_000,
            outcome: AttemptOutcome::Final(ok(&[7])),
        };
        settled.push(one.record_attempt(&record).await.unwrap().unwrap());
    }
    // Another instance checkpoints the first dispatch (a redelivery that looked at its batch):
    // this instance's memory of that record is stale.
    let first = touchpoint::dispatch::order_no(1, &metas[0].dispatch_id, 0);
    assert!(matches!(
        two.claim_opening(&metas[0], &first, 10, 1_500, 61_500)
            .await
            .unwrap(),
        Claim::Settled(_)
    ));
    let looked = Advance {
        batches: 1,
        looked: &[0],
        finished: &[],
        abandoned: None,
        settled: &[],
    };
    two.checkpoint(&metas[0], &looked, 2_500).await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for (m, s) in metas.iter().cloned().zip(settled) {
        let ledger = one.clone();
        set.spawn(async move {
            let finished = [0u32];
            let advance = Advance {
                batches: 1,
                looked: &finished,
                finished: &finished,
                abandoned: None,
                settled: std::slice::from_ref(&s),
            };
            ledger.checkpoint(&m, &advance, 4_000).await.unwrap()
        });
    }
    while let Some(progress) = set.join_next().await {
        assert!(progress.unwrap().is_finished(0));
    }
    let (transactions, grouped) = one.grouped_checkpoints();
    assert_eq!(transactions, 1, "one transaction for the nine in step");
    assert_eq!(
        grouped, 9,
        "the stale one written alone ({transactions}, {grouped})"
    );
    for (scope, key, users) in [
        (StatsScope::Campaign, "c-grouped-a", 5),
        (StatsScope::Campaign, "c-grouped-b", 5),
        (StatsScope::Touchpoint, "tp_grouped", 10),
    ] {
        let s = one.stats(1, scope, key).await.unwrap();
        assert_eq!((s.sent, s.succeeded, s.failed), (users, users, 0), "{key}");
    }
}

/// A claim handed back unsent ends at once: the next claim takes the batch without waiting for
/// the lease, and the handed-back claim uses none of its attempts; a stale hand-back (the batch
/// is another attempt's now) changes nothing.
#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn a_claim_handed_back_unsent_is_taken_again_at_once_without_using_an_attempt() {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let ledger = DynamoDelivery::new(&clients, &names);
    let m = meta();
    ledger.open_dispatch(&m, 2, 10, 1_000).await.unwrap();
    let order: touchpoint::ids::OrderNo = "o-back".into();
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &order, 2, 1_000, 121_000)
            .await
            .unwrap(),
        Claim::Send {
            attempt: 1,
            sent_at: 1_000,
            counted: 1
        }
    );
    ledger.hand_back(&m, &order, 1, 1_500).await.unwrap();
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &order, 2, 1_600, 121_600)
            .await
            .unwrap(),
        Claim::Send {
            attempt: 2,
            sent_at: 1_000,
            counted: 1
        },
        "taken at once, its attempts untouched"
    );
    // The first attempt's late hand-back leaves the second attempt's claim alone.
    ledger.hand_back(&m, &order, 1, 1_700).await.unwrap();
    assert_eq!(
        ledger
            .claim_batch(&m, 0, &order, 2, 1_800, 121_800)
            .await
            .unwrap(),
        Claim::NotBefore(121_600)
    );
}

/// A one-user dispatch is opened by its only batch's claim: nothing is written before it, one
/// conditional write records both, a redelivery's claim sends nothing twice, and the dispatch's
/// view, batches, receipt polls and counters read from that one item.
#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn a_one_user_dispatch_is_opened_by_its_claim_in_one_write() {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let ledger = DynamoDelivery::new(&clients, &names);
    let other = DynamoDelivery::new(&clients, &names);
    let mut m = meta();
    m.dispatch_id = "one-user".into();
    m.campaign_id = "c-one-user".into();
    m.touchpoint_id = "tp_one_user".into();
    let order = touchpoint::dispatch::order_no(1, &m.dispatch_id, 0);
    let items = || async {
        clients
            .dynamodb
            .scan()
            .table_name(&names.delivery_table)
            .filter_expression("dispatch_id = :d OR begins_with(pk, :p)")
            .expression_attribute_values(
                ":d",
                aws_sdk_dynamodb::types::AttributeValue::S("one-user".into()),
            )
            .expression_attribute_values(
                ":p",
                aws_sdk_dynamodb::types::AttributeValue::S("P#1#D#one-user".into()),
            )
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default()
    };
    let opened = ledger.open_dispatch(&m, 1, 10, 1_000).await.unwrap();
    assert!(opened.by_claim && opened.new, "{opened:?}");
    assert!(items().await.is_empty(), "nothing written before the claim");
    assert_eq!(ledger.dispatch(1, &m.dispatch_id).await.unwrap(), None);

    let claim = ledger
        .claim_opening(&m, &order, 10, 2_000, 60_000)
        .await
        .unwrap();
    assert_eq!(
        claim,
        Claim::Send {
            attempt: 1,
            sent_at: 2_000,
            counted: 1
        }
    );
    let written = items().await;
    assert_eq!(written.len(), 1, "one item: {written:?}");
    let view = other.dispatch(1, &m.dispatch_id).await.unwrap().unwrap();
    assert_eq!(
        (view.users, view.batches, view.batch_size, view.received_at),
        (1, 1, 10, 2_000)
    );
    assert_eq!(
        (view.succeeded, view.failed, view.batches_finished),
        (0, 0, 0)
    );
    // A redelivery, on another instance, while the first sender holds the claim.
    assert!(
        other
            .open_dispatch(&m, 1, 10, 2_500)
            .await
            .unwrap()
            .by_claim
    );
    assert_eq!(
        other
            .claim_opening(&m, &order, 10, 2_500, 62_500)
            .await
            .unwrap(),
        Claim::NotBefore(60_000),
        "not sent twice"
    );

    let accepted = AttemptRecord {
        meta: m.clone(),
        order_no: order.clone(),
        batch_index: 0,
        sent_at: 2_000,
        attempt: 1,
        http_status: Some(200),
        error: None,
        response_excerpt: None,
        at: 3_000,
        outcome: AttemptOutcome::Accepted {
            results: Vec::new(),
            pending: vec![7],
            receipt_url: "https://x.example.com/receipt".into(),
            deadline: 400_000,
            next_poll_at: 4_000,
        },
    };
    let settled = ledger.record_attempt(&accepted).await.unwrap().unwrap();
    let advance = Advance {
        batches: 1,
        looked: &[0],
        finished: &[0],
        abandoned: None,
        settled: std::slice::from_ref(&settled),
    };
    assert!(
        ledger
            .checkpoint(&m, &advance, 3_000)
            .await
            .unwrap()
            .is_finished(0)
    );
    let stats = || async {
        other
            .stats(1, StatsScope::Campaign, "c-one-user")
            .await
            .unwrap()
    };
    let s = stats().await;
    assert_eq!((s.sent, s.succeeded, s.pending), (1, 0, 1), "{s:?}");
    // The receipt comes through the poller, which moves this very item.
    let due = other
        .due_polls(Some((1, &m.touchpoint_id)), 4_000, 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    other
        .lease_poll(1, &order, 4_000, 60_000)
        .await
        .unwrap()
        .expect("leased");
    other
        .record_poll(&PollRecord {
            project_id: 1,
            order_no: order.clone(),
            at: 4_100,
            settled: ok(&[7]),
            next_poll_at: 304_100,
            http_status: Some(200),
            error: None,
        })
        .await
        .unwrap();
    let view = ledger.dispatch(1, &m.dispatch_id).await.unwrap().unwrap();
    assert_eq!(
        (view.succeeded, view.failed, view.batches_finished),
        (1, 0, 1)
    );
    let s = stats().await;
    assert_eq!((s.sent, s.succeeded, s.pending), (1, 1, 0), "{s:?}");
    // A later delivery finds it final, and its checkpoint counts nothing twice.
    let again = other
        .claim_opening(&m, &order, 10, 90_000, 150_000)
        .await
        .unwrap();
    let handed: Vec<Settled> = match again {
        Claim::Settled(s) => vec![s],
        Claim::Done => Vec::new(),
        other => panic!("{other:?}"),
    };
    other
        .checkpoint(
            &m,
            &Advance {
                batches: 1,
                looked: &[0],
                finished: &[0],
                abandoned: None,
                settled: &handed,
            },
            90_000,
        )
        .await
        .unwrap();
    let s = stats().await;
    assert_eq!((s.sent, s.succeeded, s.pending), (1, 1, 0), "{s:?}");
    let pages = other.dispatch_batches(1, &m.dispatch_id).await.unwrap();
    assert_eq!(pages.len(), 1);
    assert_eq!(
        (pages[0].order_no.as_str(), pages[0].state),
        (order.as_str(), BatchState::Final)
    );
    assert_eq!(items().await.len(), 1, "still one item");
}

/// A refused one-user dispatch stays refused: a later delivery (its touchpoint fixed since)
/// opens it with its only batch's claim, which reads no dispatch record first, and finds that
/// batch done. And a refusal that comes after another delivery claimed the batch changes
/// nothing: that delivery gives the user its outcome.
#[tokio::test]
#[ignore = "needs the moto server: run infra/test.sh"]
async fn a_refused_one_user_dispatch_is_never_sent_by_a_later_delivery() {
    let clients = support::clients().await;
    let names = support::provision(&clients).await;
    let ledger = DynamoDelivery::new(&clients, &names);
    let mut m = meta();
    m.dispatch_id = "refused-one".into();
    m.campaign_id = "c-refused-one".into();
    let order = touchpoint::dispatch::order_no(1, &m.dispatch_id, 0);
    ledger
        .reject_dispatch(&m, &[7], "touchpoint tp_1 is disabled", 1_000)
        .await
        .unwrap();
    assert!(
        ledger
            .open_dispatch(&m, 1, 10, 2_000)
            .await
            .unwrap()
            .by_claim
    );
    assert_eq!(
        ledger
            .claim_opening(&m, &order, 10, 2_000, 60_000)
            .await
            .unwrap(),
        Claim::Done,
        "not sent"
    );
    ledger
        .checkpoint(
            &m,
            &Advance {
                batches: 1,
                looked: &[0],
                finished: &[0],
                abandoned: None,
                settled: &[],
            },
            2_000,
        )
        .await
        .unwrap();
    let view = ledger.dispatch(1, &m.dispatch_id).await.unwrap().unwrap();
    assert_eq!(
        (view.rejected.as_deref(), view.failed, view.batches),
        (Some("touchpoint tp_1 is disabled"), 1, 0)
    );
    let s = ledger
        .stats(1, StatsScope::Campaign, "c-refused-one")
        .await
        .unwrap();
    assert_eq!((s.sent, s.succeeded, s.failed), (1, 0, 1), "{s:?}");

    // Claimed first, refused after: the refusal writes and counts nothing.
    let mut late = meta();
    late.dispatch_id = "refused-late".into();
    late.campaign_id = "c-refused-late".into();
    let first = touchpoint::dispatch::order_no(1, &late.dispatch_id, 0);
    assert!(matches!(
        ledger
            .claim_opening(&late, &first, 10, 3_000, 60_000)
            .await
            .unwrap(),
        Claim::Send { attempt: 1, .. }
    ));
    ledger
        .reject_dispatch(&late, &[8], "touchpoint tp_1 is disabled", 3_100)
        .await
        .unwrap();
    let view = ledger
        .dispatch(1, &late.dispatch_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((view.rejected, view.batches, view.failed), (None, 1, 0));
    let s = ledger
        .stats(1, StatsScope::Campaign, "c-refused-late")
        .await
        .unwrap();
    assert_eq!((s.sent, s.failed), (0, 0), "{s:?}");
}
