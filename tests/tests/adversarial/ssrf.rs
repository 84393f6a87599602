//! The SSRF guard, attacked from every place a URL leaves the service: the touch URL, the
//! async receipt URL, the enum-options URL and test send. Each hostile destination must be
//! refused at connection time (or at registration), never reach the receiver listening on
//! 127.0.0.1, and end in a final, explained outcome.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{ManualClock, Receiver, Reply};
use serde_json::{Value, json};
use touchpoint::delivery::DeliveryReports;
use touchpoint::protocol::UserData;
use touchpoint::{Touchpoints, UrlPolicy};
use touchpoint_dispatcher::{Dispatcher, DispatcherConfig, Handled};
use touchpoint_embedded::SqliteStore;
use touchpoint_outbound::{Lookup, Outbound, SendError};
use touchpoint_receipt_poller::ReceiptPoller;
use touchpoint_receiver::{EnumOptions, TestSend};
use touchpoint_services::{Services, Settings};

const T0: i64 = 1_795_946_400_000;

/// Hosts that must never be reached, each with the receiver's port where it has one.
fn hostile_urls(port: u16) -> Vec<String> {
    let hosts = [
        // Loopback in every spelling.
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.0.0.2",
        "localhost",
        "LOCALHOST",
        "localhost.",
        "api.localhost",
        // Unicode that IDNA maps onto loopback: circled letters, ideographic full stops.
        "ⓛⓞⓒⓐⓛⓗⓞⓢⓣ",
        "127。0。0。1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "0.0.0.0",
        "0",
        "[::]",
        // Private, link-local and metadata services.
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.170.2",
        "100.100.100.200",
        "100.64.0.1",
        "192.0.0.192",
        "198.18.0.1",
        "[fd00:ec2::254]",
        "[fc00::1]",
        "[fe80::1]",
        "[fec0::1]",
        // IPv4 inside IPv6: mapped, NAT64 (well-known and local-use), 6to4.
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[64:ff9b::7f00:1]",
        "[64:ff9b::a9fe:a9fe]",
        "[64:ff9b:1::a00:1]",
        "[2002:7f00:1::1]",
        "[2002:a00:1::]",
        "[2002:a9fe:a9fe::]",
        // Multicast and broadcast.
        "224.0.0.1",
        "255.255.255.255",
        "[ff02::1]",
    ];
    let mut urls: Vec<String> = hosts
        .iter()
        .map(|h| format!("http://{h}:{port}/touch"))
        .collect();
    // Other services on loopback, by port.
    for p in [22, 80, 443, 2375, 3306, 6379, 9200, 11211] {
        urls.push(format!("http://127.0.0.1:{p}/"));
    }
    urls.extend([
        // Credentials and schemes.
        format!("http://user@127.0.0.1:{port}/touch"),
        format!("http://user:pass@127.0.0.1:{port}/touch"),
        "http://user:pass@example.com/touch".to_owned(),
        format!("ftp://127.0.0.1:{port}/"),
        "file:///etc/passwd".to_owned(),
        format!("gopher://127.0.0.1:{port}/_FLUSHALL"),
        format!("ws://127.0.0.1:{port}/"),
        "dict://127.0.0.1:11211/stat".to_owned(),
        "data:application/json,{}".to_owned(),
        "javascript:alert(1)".to_owned(),
    ]);
    urls
}

/// Answers what a hostile DNS server would: a fixed list, counting the questions.
struct Dns {
    answers: Vec<Vec<IpAddr>>,
    asked: AtomicUsize,
}

impl Dns {
    fn new(answers: &[&[&str]]) -> Arc<Dns> {
        Arc::new(Dns {
            answers: answers
                .iter()
                .map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect())
                .collect(),
            asked: AtomicUsize::new(0),
        })
    }
}

impl Lookup for Dns {
    fn lookup(
        &self,
        _host: String,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        let n = self.asked.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers[n % self.answers.len()].clone();
        Box::pin(async move { Ok(answer) })
    }
}

struct Rig {
    store: SqliteStore,
    touchpoints: Touchpoints,
    /// Reaches 127.0.0.1 (the receiver), to get batches to the receipt stage.
    open: Arc<Dispatcher>,
    guarded: Arc<Dispatcher>,
    guarded_test: TestSend,
    guarded_options: Arc<EnumOptions>,
    poller: Arc<ReceiptPoller>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let clock = Arc::new(ManualClock::at(T0));
        let services = |outbound: Outbound| {
            Services::embedded(
                &store,
                outbound,
                clock.clone(),
                Settings {
                    urls: UrlPolicy {
                        allow_plain_http: true,
                    },
                    ..Settings::default()
                }
                .with_dispatcher(DispatcherConfig {
                    request_timeout: Duration::from_secs(2),
                    ..DispatcherConfig::default()
                }),
            )
        };
        let open = services(Outbound::new(true).unwrap()).dispatcher;
        let guarded = services(Outbound::new(false).unwrap());
        Rig {
            store,
            touchpoints: guarded.touchpoints,
            open,
            guarded: guarded.dispatcher,
            guarded_test: guarded.test_send,
            guarded_options: guarded.options,
            poller: guarded.poller,
            clock,
            _dir: dir,
        }
    }

    /// Registers a touchpoint; `Err` with the reason when registration refuses a URL.
    async fn touchpoint(
        &self,
        name: &str,
        url: &str,
        receipt_url: &str,
        options_url: &str,
    ) -> Result<touchpoint::Touchpoint, String> {
        let tp = self
            .touchpoints
            .create(
                1,
                &json!({
                    "name": name, "kind": "benefit", "url": url, "token": "SECRET-tok-ssrf",
                    "batchSize": 10,
                    "receipt": {"mode": "async", "receiptUrl": receipt_url, "timeoutMinutes": 60},
                    "userAttributes": [{"attribute": "a", "displayName": "a"}],
                    "templateParams": [
                        {"identifier": "t", "displayName": "t", "type": "text"},
                        {"identifier": "e", "displayName": "e", "type": "enum",
                         "enum": {"multiple": false, "source": "api", "optionsUrl": options_url}}
                    ]
                }),
            )
            .await
            .map_err(|e| format!("{e:?}"))?;
        self.touchpoints
            .set_spaces(
                1,
                &tp.id,
                vec!["s"].into_iter().map(String::from).collect(),
                None,
            )
            .await
            .unwrap();
        Ok(self.touchpoints.get(1, &tp.id).await.unwrap())
    }
}

fn message(id: &str, tp: &str) -> Value {
    json!({"dispatchId": id, "projectId": 1, "spaceId": "s", "campaignId": "c", "touchpointId": tp,
           "users": [{"gid": 1}, {"gid": 2}]})
}

fn refused(e: &SendError) -> bool {
    !e.retryable() && e.to_string().contains("refused")
        || e.to_string().contains("not allowed")
        || e.to_string().contains("invalid URL")
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_destinations_are_refused_for_touch_receipt_options_and_test_send() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    // Accepts touches (async: statuses come later); counts every request.
    let rx = Receiver::start(|seen, _| {
        Reply::Json(
            200,
            json!({"code": 0, "message": "", "orderNo": seen.order_no, "sendStatusList": []}),
        )
    })
    .await;
    let urls = hostile_urls(rx.addr.port());
    assert!(urls.len() >= 25, "{} cases", urls.len());
    let rig = Rig::new();
    let guarded = Outbound::new(false).unwrap();
    let mut at_registration = 0;
    let mut tried = 0;
    for (i, url) in urls.iter().enumerate() {
        // 1. The client itself, before and at connection time.
        let err = guarded
            .post_json(url, b"{}".to_vec(), &[], Duration::from_secs(2))
            .await
            .expect_err(url);
        assert!(refused(&err), "{url}: {err}");
        tried += 1;

        // A touchpoint whose three URLs are all the hostile one.
        let tp = match rig.touchpoint(&format!("t{i}"), url, url, url).await {
            Ok(tp) => tp,
            Err(reason) => {
                // Refused by its form at registration (scheme, credentials): never stored.
                assert!(reason.contains("url"), "{url}: {reason}");
                at_registration += 1;
                continue;
            }
        };

        // 2. Touch: a final failure with the reason after one attempt, not retried.
        let id = format!("touch-{i}");
        assert_eq!(
            rig.guarded.handle(&message(&id, &tp.id)).await.unwrap(),
            Handled::Done,
            "{url}"
        );
        let batches = rig.store.dispatch_batches(1, &id.into()).await.unwrap();
        let b = rig
            .store
            .batch(1, &batches[0].order_no)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.attempts, 1, "{url}");
        assert_eq!(b.failed, 2, "{url}");
        assert!(
            b.results[0].status.reason().contains("refused"),
            "{url}: {:?}",
            b.results[0]
        );

        // 3. Test send: the report says why, nothing is sent.
        let users = vec![UserData {
            gid: 1,
            dynamic_data: Default::default(),
            tem_data: Default::default(),
        }];
        let report = rig.guarded_test.send(&tp, users, format!("{i:032x}")).await;
        assert!(!report.ok, "{url}");
        assert!(
            report.error.as_deref().unwrap_or("").contains("refused"),
            "{url}: {report:?}"
        );
        assert_eq!(report.http_status, None, "{url}: nothing was sent");

        // 4. Options URL.
        let param = &tp.spec.template_params[1];
        let err = rig.guarded_options.options(&tp, param).await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{url}: {err}");
        tried += 3;
    }
    // 5. Receipt URL: the touch goes to the receiver (an open dispatcher), the poll to the
    //    hostile URL through the guarded poller: the pending users fail at once with the reason.
    let mut receipts = 0;
    for (i, url) in urls.iter().enumerate() {
        let Ok(tp) = rig
            .touchpoint(
                &format!("r{i}"),
                &rx.url(),
                url,
                "https://cms.example.com/o",
            )
            .await
        else {
            continue;
        };
        let id = format!("receipt-{i}");
        assert_eq!(
            rig.open.handle(&message(&id, &tp.id)).await.unwrap(),
            Handled::Done
        );
        receipts += 1;
    }
    rig.clock.advance(6 * 60_000);
    rig.poller.round(None).await.unwrap();
    for (i, url) in urls.iter().enumerate() {
        let id = format!("receipt-{i}");
        let Some(b) = rig
            .store
            .dispatch_batches(1, &id.into())
            .await
            .unwrap()
            .pop()
        else {
            continue;
        };
        let b = rig.store.batch(1, &b.order_no).await.unwrap().unwrap();
        assert_eq!(b.failed, 2, "{url}: {b:?}");
        assert!(
            b.results[0].status.reason().contains("receipt URL refused"),
            "{url}: {:?}",
            b.results[0]
        );
    }
    tried += receipts;
    assert_eq!(
        rx.seen_at("/receipt").len(),
        0,
        "no receipt poll reached the receiver"
    );
    assert_eq!(
        rx.requests(),
        receipts,
        "only the open dispatcher's touches reached the receiver"
    );
    eprintln!(
        "SSRF: {} hostile URLs, {tried} refused requests (touch, test send, options, receipt, client), {at_registration} URLs already refused at registration",
        urls.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_name_resolution_is_checked_on_the_answer_that_is_used() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let rx = Receiver::start(|seen, _| Reply::all_ok(seen)).await;
    let port = rx.addr.port();
    let url = format!("http://hooks.example.com:{port}/touch");
    let post = |outbound: Outbound| {
        let url = url.clone();
        async move {
            outbound
                .post_json(&url, b"{}".to_vec(), &[], Duration::from_millis(500))
                .await
        }
    };

    // A name with one public and one private address is refused whole.
    for answer in [
        &["8.8.8.8", "127.0.0.1"][..],
        &["127.0.0.1", "8.8.8.8"],
        &["2606:4700::1111", "::1"],
        &["10.0.0.1"],
        &["::ffff:127.0.0.1"],
        &["64:ff9b::7f00:1"],
    ] {
        let dns = Dns::new(&[answer]);
        let err = post(Outbound::with_lookup(false, dns).unwrap())
            .await
            .unwrap_err();
        assert!(
            !err.retryable() && err.to_string().contains("non-public"),
            "{answer:?}: {err}"
        );
    }

    // DNS rebinding: the answer flips between a public and a private address on every
    // question. Each connection asks once and connects only to what it checked, so the
    // private answers are refused and the public ones never lead to 127.0.0.1.
    let dns = Dns::new(&[&["8.8.8.8"], &["127.0.0.1"]]);
    let rebinding = Outbound::with_lookup(false, dns.clone()).unwrap();
    let mut refusals = 0;
    for _ in 0..6 {
        match post(rebinding.clone()).await {
            Err(e) if !e.retryable() => refusals += 1,
            Err(_) => {} // the public answer: unreachable from this machine, or timed out
            Ok(r) => panic!("a rebinding name reached something: HTTP {}", r.status),
        }
    }
    assert_eq!(refusals, 3, "every private answer was refused");
    assert_eq!(
        dns.asked.load(Ordering::SeqCst),
        6,
        "one question per connection"
    );
    // No lookup at all for a name that fails the URL checks.
    let before = dns.asked.load(Ordering::SeqCst);
    let _ = rebinding
        .post_json(
            "ftp://hooks.example.com/",
            vec![],
            &[],
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(dns.asked.load(Ordering::SeqCst), before);
    assert_eq!(rx.requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_the_metadata_service_is_not_followed() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let rx = Receiver::start(|_, _| {
        Reply::Raw(
            302,
            vec![(
                "location",
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/".into(),
            )],
            Vec::new(),
        )
    })
    .await;
    // Even with private networks allowed (so the receiver on 127.0.0.1 is reachable), the
    // redirect comes back as the answer.
    let open = Outbound::new(true).unwrap();
    let reply = open
        .post_json(&rx.url(), b"{}".to_vec(), &[], Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(reply.status, 302);
    assert_eq!(rx.requests(), 1);
}
