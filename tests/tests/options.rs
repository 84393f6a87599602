//! Enum options from the content system's API (protocol §4), against real upstreams on
//! 127.0.0.1 and a controllable clock; and dispatch validation with the same cache.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use support::{ManualClock, Receiver, Reply};
use touchpoint::delivery::DeliveryReports;
use touchpoint::model::Touchpoint;
use touchpoint::{Touchpoints, UrlPolicy};
use touchpoint_dispatcher::{Dispatcher, Handled};
use touchpoint_embedded::SqliteStore;
use touchpoint_outbound::Outbound;
use touchpoint_receiver::options::{EnumOptions, OptionsError};
use touchpoint_services::{Services, Settings};

const MINUTE: i64 = 60_000;

fn options_answer(n: usize) -> Value {
    let args: Vec<Value> = (0..n)
        .map(|i| json!({"code": format!("M{i}"), "description": format!("素材 {i}")}))
        .collect();
    json!({"code": 0, "enumArgs": args})
}

struct Rig {
    clock: Arc<ManualClock>,
    touchpoints: Touchpoints,
    store: SqliteStore,
    dispatcher: Arc<Dispatcher>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(allow_private: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let clock = Arc::new(ManualClock::at(1_795_946_400_000));
        let services = Services::embedded(
            &store,
            Outbound::new(allow_private).unwrap(),
            clock.clone(),
            Settings {
                urls: UrlPolicy {
                    allow_plain_http: true,
                },
                ..Settings::default()
            },
        );
        let (touchpoints, dispatcher) = (services.touchpoints, services.dispatcher);
        Rig {
            clock,
            touchpoints,
            store,
            dispatcher,
            _dir: dir,
        }
    }

    fn options(&self) -> Arc<EnumOptions> {
        self.dispatcher.options()
    }

    async fn touchpoint(&self, name: &str, options_url: &str, touch_url: &str) -> Touchpoint {
        let tp = self
            .touchpoints
            .create(
                1,
                &json!({
                    "name": name, "kind": "benefit", "url": touch_url,
                    "userAttributes": [{"attribute": "a", "displayName": "a"}],
                    "templateParams": [
                        {"identifier": "material", "displayName": "素材", "type": "enum", "required": true,
                         "enum": {"multiple": true, "source": "api", "optionsUrl": options_url}},
                        {"identifier": "jump", "displayName": "跳转", "type": "enum",
                         "enum": {"source": "manual", "options": [{"code": "H5", "name": "h5"}]}}
                    ]
                }),
            )
            .await
            .unwrap();
        self.touchpoints
            .set_spaces(
                1,
                &tp.id,
                vec!["s"].into_iter().map(String::from).collect(),
                None,
            )
            .await
            .unwrap()
    }
}

/// An upstream that answers with `answer(call number)` and counts calls.
async fn upstream(
    answer: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> (Receiver, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let rx = Receiver::start(move |_, _| answer(counted.fetch_add(1, Ordering::SeqCst) + 1)).await;
    (rx, calls)
}

#[tokio::test]
async fn manual_options_need_no_upstream() {
    let rig = Rig::new(true);
    let tp = rig
        .touchpoint("manual", "http://127.0.0.1:9/none", "http://127.0.0.1:9/t")
        .await;
    let view = rig
        .options()
        .options(&tp, &tp.spec.template_params[1])
        .await
        .unwrap();
    assert_eq!(view.source, "manual");
    assert_eq!(view.options[0].code, "H5");
}

#[tokio::test]
async fn api_options_are_fetched_once_per_five_minutes_and_served_stale_when_a_refresh_fails() {
    let (rx, calls) = upstream(|n| {
        if n == 1 {
            Reply::Json(200, options_answer(3))
        } else {
            Reply::Json(500, json!({}))
        }
    })
    .await;
    let rig = Rig::new(true);
    let tp = rig
        .touchpoint("api", &rx.url(), "http://127.0.0.1:9/t")
        .await;
    let param = &tp.spec.template_params[0];
    for _ in 0..10 {
        let view = rig.options().options(&tp, param).await.unwrap();
        assert_eq!(view.options.len(), 3);
        assert!(!view.stale);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "ten reads within 5 minutes, one upstream call"
    );
    let request = &rx.seen()[0].body;
    assert_eq!(
        request,
        &json!({"projectId": 1, "paramDescription": "素材", "paramName": "material"})
    );

    rig.clock.advance(5 * MINUTE);
    let view = rig.options().options(&tp, param).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "refreshed after 5 minutes");
    assert!(
        view.stale,
        "the refresh failed: the last good list, marked stale"
    );
    assert_eq!(view.options.len(), 3);
    assert!(view.error.unwrap().contains("HTTP 500"));
}

#[tokio::test]
async fn long_lists_are_cut_at_100_and_cascades_keep_two_levels() {
    let (many, _) = upstream(|_| Reply::Json(200, options_answer(150))).await;
    let (cascade, _) = upstream(|_| {
        Reply::Json(
            200,
            json!({"code": 0, "enumArgs": [
                {"code": "SPRING", "description": "春季", "childEnumArgs": [{"code": "S1", "description": "海报"}, {"code": "S2", "description": "视频"}]},
                {"code": "PLAIN", "description": "单个"}
            ]}),
        )
    })
    .await;
    let rig = Rig::new(true);
    let tp = rig
        .touchpoint("many", &many.url(), "http://127.0.0.1:9/t")
        .await;
    let view = rig
        .options()
        .options(&tp, &tp.spec.template_params[0])
        .await
        .unwrap();
    assert_eq!((view.options.len(), view.truncated), (100, true));
    let tp = rig
        .touchpoint("cascade", &cascade.url(), "http://127.0.0.1:9/t")
        .await;
    let view = rig
        .options()
        .options(&tp, &tp.spec.template_params[0])
        .await
        .unwrap();
    assert_eq!(view.options[0].code, "SPRING");
    assert_eq!(
        view.options[0]
            .children
            .iter()
            .map(|c| c.code.as_str())
            .collect::<Vec<_>>(),
        ["S1", "S2"]
    );
    assert!(view.options[1].children.is_empty());
}

#[tokio::test]
async fn upstream_refusals_and_internal_urls_are_errors_without_a_cached_list() {
    let (refusing, _) =
        upstream(|_| Reply::Json(200, json!({"code": 403, "message": "no access"}))).await;
    let rig = Rig::new(true);
    let tp = rig
        .touchpoint("refusing", &refusing.url(), "http://127.0.0.1:9/t")
        .await;
    match rig
        .options()
        .options(&tp, &tp.spec.template_params[0])
        .await
    {
        Err(OptionsError::Upstream(m)) => {
            assert!(m.contains("code 403") && m.contains("no access"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // With the SSRF guard on, an options URL on loopback is refused before any connection.
    let (internal, calls) = upstream(|_| Reply::Json(200, options_answer(2))).await;
    let guarded = Rig::new(false);
    let tp = guarded
        .touchpoint("internal", &internal.url(), "http://127.0.0.1:9/t")
        .await;
    match guarded
        .options()
        .options(&tp, &tp.spec.template_params[0])
        .await
    {
        Err(OptionsError::Upstream(m)) => assert!(m.contains("refused"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dispatches_are_checked_against_the_fetched_codes_and_accepted_when_none_were_ever_fetched()
{
    let (rx, _) = upstream(|_| Reply::Json(200, options_answer(3))).await;
    let receiver = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let rig = Rig::new(true);
    let tp = rig.touchpoint("checked", &rx.url(), &receiver.url()).await;
    let dispatch = |id: &str, tp: &str, codes: Value| {
        json!({"dispatchId": id, "projectId": 1, "spaceId": "s", "campaignId": "c", "touchpointId": tp,
               "templateValues": {"material": codes}, "users": [{"gid": 1}]})
    };
    assert_eq!(
        rig.dispatcher
            .handle(&dispatch("ok", &tp.id, json!(["M0", "M2"])))
            .await
            .unwrap(),
        Handled::Done
    );
    assert!(
        rig.store
            .dispatch(1, &("ok").into())
            .await
            .unwrap()
            .unwrap()
            .rejected
            .is_none()
    );
    rig.dispatcher
        .handle(&dispatch("bad", &tp.id, json!(["M9"])))
        .await
        .unwrap();
    let rejected = rig
        .store
        .dispatch(1, &("bad").into())
        .await
        .unwrap()
        .unwrap()
        .rejected
        .unwrap();
    assert!(
        rejected.contains("unknown option code(s): M9"),
        "{rejected}"
    );
    assert_eq!(receiver.requests(), 1);

    // An options API that never answered: the codes are accepted (and logged).
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/options")
    };
    let tp = rig
        .touchpoint("unverified", &unreachable, &receiver.url())
        .await;
    rig.dispatcher
        .handle(&dispatch("trusting", &tp.id, json!(["ANY"])))
        .await
        .unwrap();
    assert!(
        rig.store
            .dispatch(1, &("trusting").into())
            .await
            .unwrap()
            .unwrap()
            .rejected
            .is_none()
    );
    assert_eq!(receiver.requests(), 2);
}
