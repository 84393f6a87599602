//! `touchpoint-bench`: delivery speed against the limit of this machine.
//!
//! Starts everything it needs on 127.0.0.1 and stops it afterwards:
//! - a fast receiver in its own process (parses every body fully, answers a receipt for every
//!   gid, optional fixed latency), so its CPU time is measured apart from ours;
//! - the limit: the same request bodies, built in advance, POSTed by a minimal reqwest loop
//!   with the same concurrency;
//! - our paths: (a) the dispatcher library on the embedded store (validation, planning,
//!   signing, ledger, results: everything but intake) and (b) the whole local service
//!   (`touchpoint`, release build) with dispatches POSTed over HTTP until every user is final.
//!
//! Run it with `bash infra/bench.sh` (release builds, then this binary).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use touchpoint::UrlPolicy;
use touchpoint::clock::{Clock, SystemClock};
use touchpoint::dispatch::{plan, read_dispatch, resolve_template};
use touchpoint::protocol::{TouchRequest, sign, signature_headers};
use touchpoint_dispatcher::{Dispatcher, Handled};
use touchpoint_embedded::{ResultsFile, SqliteStore};
use touchpoint_outbound::Outbound;
use touchpoint_services::{Services, Settings};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-token";
/// Users per dispatch (the protocol's maximum).
const PER_DISPATCH: usize = 10_000;

/// The delivery runs (`touchpoint-bench receiver LATENCY_MS` and `touchpoint-bench rss-probe
/// DATA_DIR BATCH` are the processes it starts itself).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "touchpoint-bench",
    about = "Reproduces the figures in BENCHMARKS.md"
)]
struct Options {
    /// Users per run.
    #[arg(long, default_value_t = 200_000)]
    users: usize,
    /// Batch sizes, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,50,500")]
    batches: Vec<u16>,
    /// The receiver answers after this many milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Skip the local-service rows.
    #[arg(long = "no-service", action = clap::ArgAction::SetFalse)]
    service: bool,
    /// Requests in flight per touchpoint.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Users per dispatch (1: a triggered campaign's one-user dispatches).
    #[arg(long, default_value_t = PER_DISPATCH)]
    per_dispatch: usize,
    /// Dispatches the library rows handle at once (the local service decides for itself).
    #[arg(long, default_value_t = 2)]
    at_once: usize,
    /// Submissions to the local service in flight at once (a campaign system's senders).
    #[arg(long, default_value_t = 16)]
    submitters: usize,
    /// Where `cargo lambda build` left the Lambdas (`<dir>/<name>/bootstrap`): measure their
    /// size and cold start instead.
    #[arg(long)]
    lambdas: Option<PathBuf>,
}

// ---------------------------------------------------------------- the receiver process

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "orderNo")]
    order_no: String,
    #[serde(rename = "dataList")]
    data_list: Vec<IncomingUser>,
}

#[derive(Deserialize)]
struct IncomingUser {
    gid: i64,
    #[serde(rename = "dynamicData")]
    _dynamic: serde_json::Map<String, Value>,
    #[serde(rename = "temData")]
    _tem: serde_json::Map<String, Value>,
}

struct Counters {
    requests: AtomicU64,
    users: AtomicU64,
    latency: Duration,
}

async fn receive(
    State(c): State<Arc<Counters>>,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], String) {
    if !c.latency.is_zero() {
        tokio::time::sleep(c.latency).await;
    }
    let Ok(req) = serde_json::from_slice::<Incoming>(&body) else {
        return (
            [("content-type", "application/json")],
            r#"{"code":400,"message":"bad body"}"#.into(),
        );
    };
    c.requests.fetch_add(1, Ordering::Relaxed);
    c.users
        .fetch_add(req.data_list.len() as u64, Ordering::Relaxed);
    let mut out = String::with_capacity(64 + req.data_list.len() * 48);
    out.push_str(r#"{"code":0,"message":"","orderNo":""#);
    out.push_str(&req.order_no);
    out.push_str(r#"","sendStatusList":["#);
    for (i, u) in req.data_list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"gid":{},"status":"TOU_SUCC","errorMsg":""}}"#,
            u.gid
        ));
    }
    out.push_str("]}");
    ([("content-type", "application/json")], out)
}

async fn counts(State(c): State<Arc<Counters>>) -> String {
    json!({"requests": c.requests.load(Ordering::Relaxed), "users": c.users.load(Ordering::Relaxed)}).to_string()
}

fn run_receiver(latency_ms: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let c = Arc::new(Counters {
            requests: AtomicU64::new(0),
            users: AtomicU64::new(0),
            latency: Duration::from_millis(latency_ms),
        });
        let app = Router::new()
            .route("/touch", post(receive))
            .route("/counts", get(counts))
            .with_state(c);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!(
            "listening on http://{}",
            listener.local_addr().expect("addr")
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, app).await.expect("serve");
    });
}

/// A child process announcing `listening on http://…` on stdout.
struct Process {
    child: Child,
    base: String,
}

impl Process {
    fn start(mut cmd: Command) -> Process {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stdout for the child's whole life: a closed pipe would fail its writes.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(b) = line.strip_prefix("listening on ") {
                    let _ = tx.send(b.trim().to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the process announced its address");
        Process { child, base }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- measurements

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Default, Debug, Clone)]
struct Figures {
    users_per_s: f64,
    requests_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    our_cpu_per_100k: f64,
    receiver_cpu_per_100k: f64,
    peak_rss_mib: f64,
    writes_per_batch: Option<f64>,
}

fn print_row(name: &str, f: &Figures, limit: Option<&Figures>) {
    let ratio = limit
        .map(|l| format!("{:.2}", f.users_per_s / l.users_per_s.max(1.0)))
        .unwrap_or_else(|| "-".into());
    let ratio_req = limit
        .map(|l| format!("{:.2}", f.requests_per_s / l.requests_per_s.max(1.0)))
        .unwrap_or_else(|| "-".into());
    println!(
        "| {name} | {:.0} | {:.0} | {:.1} / {:.1} / {:.1} | {:.2} | {:.2} | {:.0} | {} | {ratio} | {ratio_req} |",
        f.users_per_s,
        f.requests_per_s,
        f.p50_ms,
        f.p95_ms,
        f.p99_ms,
        f.our_cpu_per_100k,
        f.receiver_cpu_per_100k,
        f.peak_rss_mib,
        f.writes_per_batch
            .map(|w| format!("{w:.2}"))
            .unwrap_or_else(|| "-".into()),
    );
}

// ---------------------------------------------------------------- workloads

fn touchpoint_body(url: &str, batch: u16, concurrency: usize) -> Value {
    json!({
        "name": format!("bench {batch}"), "kind": "notification", "url": url, "token": TOKEN,
        "batchSize": batch, "maxConcurrency": concurrency,
        "userAttributes": [
            {"attribute": "usr_phone", "identifier": "phone", "displayName": "手机号"},
            {"attribute": "usr_name", "identifier": "name", "displayName": "姓名", "default": "会员"}
        ],
        "templateParams": [
            {"identifier": "content", "displayName": "内容", "type": "text", "required": true},
            {"identifier": "day", "displayName": "日期", "type": "date"}
        ]
    })
}

fn dispatch_body(run: &str, index: usize, tp: &str, first_gid: usize, users: usize) -> Value {
    let users: Vec<Value> = (first_gid..first_gid + users)
        .map(|g| json!({"gid": g, "attributes": {"usr_phone": format!("130{g:08}"), "usr_name": format!("user{g}")}}))
        .collect();
    json!({
        "dispatchId": format!("{run}-{index:05}"), "projectId": 1, "spaceId": "bench", "campaignId": format!("cmp-{run}"),
        "touchpointId": tp, "templateValues": {"content": "您好 {{name}}，您的券已到账", "day": "2026-12-01"}, "users": users
    })
}

fn dispatches(run: &str, tp: &str, total: usize, per: usize) -> Vec<Value> {
    let per = per.clamp(1, PER_DISPATCH);
    (0..total.div_ceil(per))
        .map(|i| dispatch_body(run, i, tp, i * per, per.min(total - i * per)))
        .collect()
}

/// The limit: the same bodies, signed and built in advance, POSTed with `concurrency` in flight.
async fn limit(
    receiver: &Process,
    tp: &touchpoint::Touchpoint,
    messages: &[Value],
    concurrency: usize,
) -> Figures {
    let now = SystemClock.now_ms();
    let mut bodies = Vec::new();
    for m in messages {
        let (d, _) = read_dispatch(m).expect("dispatch");
        let tem = resolve_template(&d, Some(tp)).expect("valid");
        for b in plan(&d, tp, &tem) {
            let body = serde_json::to_vec(&TouchRequest {
                time_stamp: now,
                order_no: &b.order_no,
                sign: Some(sign(TOKEN, now, &b.order_no)),
                data_list: &b.users,
            })
            .expect("json");
            let headers = signature_headers([TOKEN], &b.order_no, now / 1000, &body);
            bodies.push((body, headers, b.users.len()));
        }
    }
    let client = touchpoint_outbound::client_builder()
        .expect("client")
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("{}/touch", receiver.base);
    let cpu_before = cpu_seconds(std::process::id());
    let receiver_before = cpu_seconds(receiver.pid());
    let started = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, queue, latencies) = (
            client.clone(),
            url.clone(),
            Arc::clone(&queue),
            Arc::clone(&latencies),
        );
        set.spawn(async move {
            let mut users = 0usize;
            loop {
                let next = queue.lock().expect("lock").next();
                let Some((body, headers, n)) = next else {
                    return users;
                };
                let t = Instant::now();
                let mut req = client
                    .post(&url)
                    .header("content-type", "application/json; charset=utf-8")
                    .body(body);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let r = req.send().await.expect("send");
                let _ = r.bytes().await.expect("body");
                latencies
                    .lock()
                    .expect("lock")
                    .push(t.elapsed().as_secs_f64() * 1000.0);
                users += n;
            }
        });
    }
    let mut users = 0;
    while let Some(n) = set.join_next().await {
        users += n.expect("task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().expect("lock").clone();
    lat.sort_by(f64::total_cmp);
    Figures {
        users_per_s: users as f64 / elapsed,
        requests_per_s: lat.len() as f64 / elapsed,
        p50_ms: percentile(&lat, 0.5),
        p95_ms: percentile(&lat, 0.95),
        p99_ms: percentile(&lat, 0.99),
        our_cpu_per_100k: (cpu_seconds(std::process::id()) - cpu_before) * 100_000.0 / users as f64,
        receiver_cpu_per_100k: (cpu_seconds(receiver.pid()) - receiver_before) * 100_000.0
            / users as f64,
        peak_rss_mib: 0.0,
        writes_per_batch: None,
    }
}

/// Batch latencies (resolved - sent) from a store's ledger.
fn ledger_latencies(db: &Path) -> Vec<f64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    let mut stmt = conn
        .prepare(
            "SELECT resolved_at - sent_at FROM batches WHERE state = 'final' AND batch_index >= 0",
        )
        .expect("query");
    let mut v: Vec<f64> = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .expect("rows")
        .filter_map(Result::ok)
        .map(|x| x as f64)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The dispatcher library on a fresh embedded store, with one enabled touchpoint aimed at
/// the receiver, authorized for the space the dispatches name.
struct Library {
    dir: tempfile::TempDir,
    store: SqliteStore,
    tp: touchpoint::Touchpoint,
    dispatcher: Arc<Dispatcher>,
}

async fn library_for(receiver_base: &str, batch: u16, concurrency: usize) -> Library {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("store");
    let services = Services::embedded(
        &store,
        Outbound::new(true).expect("client"),
        Arc::new(SystemClock),
        Settings {
            urls: UrlPolicy {
                allow_plain_http: true,
            },
            ..Settings::default()
        },
    );
    let touchpoints = services.touchpoints;
    let tp = touchpoints
        .create(
            1,
            &touchpoint_body(&format!("{receiver_base}/touch"), batch, concurrency),
        )
        .await
        .expect("tp");
    let tp = touchpoints
        .set_spaces(
            1,
            &tp.id,
            vec!["bench"].into_iter().map(String::from).collect(),
            None,
        )
        .await
        .expect("spaces");
    let dispatcher = services.dispatcher;
    Library {
        dir,
        store,
        tp,
        dispatcher,
    }
}

/// (a) The dispatcher library on the embedded store, in this process.
async fn library(receiver: &Process, batch: u16, o: &Options) -> (Figures, Figures) {
    let Library {
        dir,
        store,
        tp,
        dispatcher,
    } = library_for(&receiver.base, batch, o.concurrency).await;
    let messages = dispatches(&format!("lib{batch}"), &tp.id, o.users, o.per_dispatch);
    let limit = limit(receiver, &tp, &messages, o.concurrency).await;
    let results = ResultsFile::new(store.clone(), dir.path().join("results.jsonl"));
    let writes_before = store.ledger_writes();
    let cpu_before = cpu_seconds(std::process::id());
    let receiver_before = cpu_seconds(receiver.pid());
    let started = Instant::now();
    // Dispatches run `at_once` at a time, sharing the touchpoint's gate.
    let dispatch_count = messages.len() as f64;
    let queue = Arc::new(std::sync::Mutex::new(messages.into_iter()));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..o.at_once.max(1) {
        let (d, q) = (Arc::clone(&dispatcher), Arc::clone(&queue));
        set.spawn(async move {
            loop {
                let next = q.lock().expect("lock").next();
                let Some(m) = next else { return };
                assert_eq!(d.handle(&m).await.expect("handle"), Handled::Done);
            }
        });
    }
    // Results are published alongside, as the local service does; aborted when all is sent.
    let publisher = tokio::spawn(async move {
        loop {
            if results.publish_pending().await.expect("publish") == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    while set.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    publisher.abort();
    let batches = o.users.div_ceil(usize::from(batch)) as f64;
    let writes = (store.ledger_writes() - writes_before) as f64;
    let lat = ledger_latencies(&dir.path().join("touchpoint.db"));
    let ours = Figures {
        users_per_s: o.users as f64 / elapsed,
        requests_per_s: batches / elapsed,
        p50_ms: percentile(&lat, 0.5),
        p95_ms: percentile(&lat, 0.95),
        p99_ms: percentile(&lat, 0.99),
        our_cpu_per_100k: (cpu_seconds(std::process::id()) - cpu_before) * 100_000.0
            / o.users as f64,
        receiver_cpu_per_100k: (cpu_seconds(receiver.pid()) - receiver_before) * 100_000.0
            / o.users as f64,
        peak_rss_mib: peak_rss_mib(std::process::id()),
        writes_per_batch: Some((writes - dispatch_count) / batches),
    };
    (ours, limit)
}

/// (b) The whole local service: dispatches POSTed over HTTP until every user is final.
async fn service(receiver: &Process, batch: u16, o: &Options, binary: &Path) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = "bench-admin-key-0001";
    let mut cmd = Command::new(binary);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("TOUCHPOINT_API_KEYS", format!("{admin}=1:admin"))
        .env("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true")
        .env("TOUCHPOINT_CONCURRENCY", o.concurrency.to_string());
    let svc = Process::start(cmd);
    let client = touchpoint_outbound::client_builder()
        .expect("client")
        .no_proxy()
        .build()
        .expect("client");
    let tp: Value = client
        .post(format!("{}/v1/touchpoints", svc.base))
        .bearer_auth(admin)
        .json(&touchpoint_body(
            &format!("{}/touch", receiver.base),
            batch,
            o.concurrency,
        ))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = tp["id"].as_str().expect("id").to_owned();
    client
        .put(format!("{}/v1/touchpoints/{id}/spaces", svc.base))
        .bearer_auth(admin)
        .json(&json!({"spaceIds": ["bench"]}))
        .send()
        .await
        .expect("spaces");
    let run = format!("svc{batch}");
    let messages = dispatches(&run, &id, o.users, o.per_dispatch);
    let bodies: Vec<String> = messages.iter().map(Value::to_string).collect();
    let cpu_before = cpu_seconds(svc.pid());
    let receiver_before = cpu_seconds(receiver.pid());
    let started = Instant::now();
    // Submitted `submitters` at a time, as a campaign system submits many small dispatches.
    let bodies = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..o.submitters.max(1) {
        let (client, bodies, url) = (
            client.clone(),
            Arc::clone(&bodies),
            format!("{}/v1/dispatches", svc.base),
        );
        submitters.spawn(async move {
            loop {
                let next = bodies.lock().expect("lock").next();
                let Some(body) = next else { return };
                let r = client
                    .post(&url)
                    .bearer_auth(admin)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("dispatch");
                assert_eq!(r.status().as_u16(), 202);
            }
        });
    }
    submitters.join_all().await;
    let submitted = started.elapsed().as_secs_f64();
    loop {
        let stats: Value = client
            .get(format!("{}/v1/campaigns/cmp-{run}/stats", svc.base))
            .bearer_auth(admin)
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        if stats["succeeded"].as_u64().unwrap_or(0) + stats["failed"].as_u64().unwrap_or(0)
            >= o.users as u64
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "local service: {} dispatches submitted in {submitted:.2} s ({:.0}/s), all users final after {elapsed:.2} s",
        messages.len(),
        messages.len() as f64 / submitted
    );
    let cpu = cpu_seconds(svc.pid()) - cpu_before;
    let rss = peak_rss_mib(svc.pid());
    let receiver_cpu = cpu_seconds(receiver.pid()) - receiver_before;
    drop(svc);
    let lat = ledger_latencies(&dir.path().join("data").join("touchpoint.db"));
    Figures {
        users_per_s: o.users as f64 / elapsed,
        requests_per_s: o.users.div_ceil(usize::from(batch)) as f64 / elapsed,
        p50_ms: percentile(&lat, 0.5),
        p95_ms: percentile(&lat, 0.95),
        p99_ms: percentile(&lat, 0.99),
        our_cpu_per_100k: cpu * 100_000.0 / o.users as f64,
        receiver_cpu_per_100k: receiver_cpu * 100_000.0 / o.users as f64,
        peak_rss_mib: rss,
        writes_per_batch: None,
    }
}

// ---------------------------------------------------------------- memory of one dispatch

/// Resident memory now and at its peak since the last reset, in MiB.
fn rss_now_and_peak() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How much 10,000-user dispatches add to the dispatcher's peak resident memory, at batch 500
/// and 1, each in a fresh process (`touchpoint-bench rss-probe <receiver> <batch> <dispatches>`):
/// one dispatch, and ten at once, as the SQS Lambda handles the ten records of one event.
async fn rss_of_one_dispatch(receiver: &Process) {
    println!(
        "| 10,000-user dispatches, fresh process | RSS before MiB | peak RSS during MiB | added MiB |"
    );
    println!("|---|---|---|---|");
    for (batch, dispatches) in [(500u16, 1usize), (1, 1), (500, 10), (1, 10)] {
        let out = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "rss-probe",
                &receiver.base,
                &batch.to_string(),
                &dispatches.to_string(),
            ])
            .output()
            .expect("probe");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!();
}

/// The probe: the library is set up and warmed with a 1,000-user dispatch, the kernel's peak
/// counter is reset (`/proc/self/clear_refs`), then `dispatches` 10,000-user dispatches are
/// handled at once (their messages read only then, as the Lambda reads its records).
async fn rss_probe(receiver_url: &str, batch: u16, dispatches: usize) {
    // Bound whole: the store's directory lives until the probe ends.
    let lib = library_for(receiver_url, batch, 4).await;
    let (tp, dispatcher) = (&lib.tp, &lib.dispatcher);
    let warm = dispatch_body(&format!("warm{batch}"), 0, &tp.id, 0, 1_000);
    assert_eq!(
        dispatcher.handle(&warm).await.expect("handle"),
        Handled::Done
    );
    // The records' text, as the event carries it; each is parsed by its own delivery.
    let texts: Vec<String> = (0..dispatches)
        .map(|d| {
            dispatch_body(
                &format!("rss{batch}-{d}"),
                0,
                &tp.id,
                1_000_000 + d * PER_DISPATCH,
                PER_DISPATCH,
            )
            .to_string()
        })
        .collect();
    let reset = std::fs::write("/proc/self/clear_refs", "5");
    let (before, _) = rss_now_and_peak();
    let mut set = tokio::task::JoinSet::new();
    for text in texts {
        let dispatcher = Arc::clone(dispatcher);
        set.spawn(async move {
            let message: Value = serde_json::from_str(&text).expect("json");
            drop(text);
            dispatcher.handle_owned(message).await.expect("handle")
        });
    }
    while let Some(handled) = set.join_next().await {
        assert_eq!(handled.expect("join"), Handled::Done);
    }
    let (_, peak) = rss_now_and_peak();
    let what = match dispatches {
        1 => format!("batch {batch}, one"),
        n => format!("batch {batch}, {n} at once"),
    };
    match reset {
        Ok(()) => println!(
            "| {what} | {before:.1} | {peak:.1} | {:.1} |",
            peak - before
        ),
        Err(e) => println!("| {what} | (cannot reset the peak counter: {e}) | | |"),
    }
}

// ---------------------------------------------------------------- Lambda cold start

/// A Lambda Runtime API on 127.0.0.1 that hands out one event, times the function, and answers
/// every AWS call the function makes with an empty JSON object (no item, nothing queued), so
/// that a cold start is measured without the network.
struct RuntimeApi {
    event: Vec<u8>,
    started: Instant,
    /// Milliseconds from the start to the first `next` (initialized) and to the response.
    init_ms: std::sync::Mutex<Option<f64>>,
    done: std::sync::Mutex<Option<(f64, bool, f64)>>,
    handed_out: std::sync::atomic::AtomicBool,
    aws_calls: AtomicU64,
    pid: std::sync::atomic::AtomicU32,
    finished: tokio::sync::Notify,
}

async fn runtime_next(State(api): State<Arc<RuntimeApi>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    api.init_ms
        .lock()
        .expect("lock")
        .get_or_insert(api.started.elapsed().as_secs_f64() * 1000.0);
    if api.handed_out.swap(true, Ordering::SeqCst) {
        // One event per process: the next one never comes.
        std::future::pending::<()>().await;
    }
    let deadline = SystemClock.now_ms() + 30_000;
    (
        [
            ("lambda-runtime-aws-request-id", "bench-0001".to_owned()),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:bench".to_owned(),
            ),
            (
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000".to_owned(),
            ),
            ("content-type", "application/json".to_owned()),
        ],
        api.event.clone(),
    )
        .into_response()
}

async fn runtime_done(State(api): State<Arc<RuntimeApi>>, uri: axum::http::Uri) -> &'static str {
    let ms = api.started.elapsed().as_secs_f64() * 1000.0;
    let ok = uri.path().ends_with("/response");
    let rss = peak_rss_mib(api.pid.load(Ordering::SeqCst));
    api.done.lock().expect("lock").get_or_insert((ms, ok, rss));
    api.finished.notify_one();
    "{}"
}

async fn aws_answer(
    State(api): State<Arc<RuntimeApi>>,
) -> ([(&'static str, &'static str); 1], &'static str) {
    api.aws_calls.fetch_add(1, Ordering::Relaxed);
    ([("content-type", "application/x-amz-json-1.0")], "{}")
}

/// Starts `binary` against a fresh Runtime API with `event`; returns (init ms, first event
/// ms, handled without error, peak RSS MiB, AWS calls).
async fn cold_start(binary: &Path, event: &[u8]) -> Option<(f64, f64, bool, f64, u64)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
    let addr = listener.local_addr().ok()?;
    let api = Arc::new(RuntimeApi {
        event: event.to_vec(),
        started: Instant::now(),
        init_ms: std::sync::Mutex::new(None),
        done: std::sync::Mutex::new(None),
        handed_out: std::sync::atomic::AtomicBool::new(false),
        aws_calls: AtomicU64::new(0),
        pid: std::sync::atomic::AtomicU32::new(0),
        finished: tokio::sync::Notify::new(),
    });
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(runtime_next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(runtime_done),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(runtime_done),
        )
        .route("/2018-06-01/runtime/init/error", post(runtime_done))
        .fallback(aws_answer)
        .with_state(Arc::clone(&api));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let base = format!("http://{addr}");
    let mut cmd = tokio::process::Command::new(binary);
    cmd.env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", &base)
        .env("TOUCHPOINTS_TABLE", "touchpoints")
        .env("DELIVERY_TABLE", "delivery")
        .env(
            "DISPATCH_QUEUE_URL",
            format!("{base}/123456789012/dispatch"),
        )
        .env(
            "RESULTS_QUEUE_URL",
            format!("{base}/123456789012/results.fifo"),
        )
        .env("SCHEDULE_GROUP", "receipts")
        .env(
            "SCHEDULER_ROLE_ARN",
            "arn:aws:iam::123456789012:role/scheduler",
        )
        .env(
            "RECEIPT_POLLER_ARN",
            "arn:aws:lambda:us-east-1:123456789012:function:poller",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().ok()?;
    api.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
    let finished = tokio::time::timeout(Duration::from_secs(20), api.finished.notified()).await;
    let _ = child.kill().await;
    server.abort();
    finished.ok()?;
    let init = (*api.init_ms.lock().expect("lock"))?;
    let (first, ok, rss) = (*api.done.lock().expect("lock"))?;
    Some((init, first, ok, rss, api.aws_calls.load(Ordering::Relaxed)))
}

/// Size and cold start of the three Lambdas, each started 5 times (medians).
async fn lambdas(dir: &Path) {
    let events = format!("{}/../infra/events", env!("CARGO_MANIFEST_DIR"));
    println!(
        "| Lambda | stripped binary MB | start to initialized ms | start to first event handled ms | handled | peak RSS MiB | AWS calls answered |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, event) in [
        ("touchpoint-admin-api", "apigw-list-touchpoints.json"),
        ("touchpoint-dispatcher", "sqs-dispatch.json"),
        ("touchpoint-receipt-poller", "scheduler-receipt-round.json"),
    ] {
        let binary = dir.join(name).join("bootstrap");
        let Ok(size) = std::fs::metadata(&binary).map(|m| m.len()) else {
            println!("| {name} | (not built: run `cargo lambda build --profile lambda` first) |");
            continue;
        };
        let event = std::fs::read(format!("{events}/{event}")).expect("event fixture");
        let mut runs = Vec::new();
        for _ in 0..5 {
            if let Some(r) = cold_start(&binary, &event).await {
                runs.push(r);
            }
        }
        if runs.is_empty() {
            println!("| {name} | {:.1} | (did not answer) |", size as f64 / 1e6);
            continue;
        }
        let median = |f: fn(&(f64, f64, bool, f64, u64)) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {}/{} | {:.1} | {} |",
            size as f64 / 1e6,
            median(|r| r.0),
            median(|r| r.1),
            runs.iter().filter(|r| r.2).count(),
            runs.len(),
            median(|r| r.3),
            runs[0].4,
        );
    }
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe().expect("exe").with_file_name(name)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("receiver") {
        let latency = std::env::args()
            .nth(2)
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        return run_receiver(latency);
    }
    if std::env::args().nth(1).as_deref() == Some("rss-probe") {
        let args: Vec<String> = std::env::args().collect();
        let batch = args.get(3).and_then(|b| b.parse().ok()).unwrap_or(500);
        let dispatches = args.get(4).and_then(|n| n.parse().ok()).unwrap_or(1);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        return runtime.block_on(rss_probe(
            args.get(2).map_or("", String::as_str),
            batch,
            dispatches,
        ));
    }
    let o = <Options as clap::Parser>::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        if let Some(dir) = &o.lambdas {
            return lambdas(dir).await;
        }
        let mut cmd = Command::new(std::env::current_exe().expect("exe"));
        cmd.args(["receiver", &o.latency_ms.to_string()]);
        let receiver = Process::start(cmd);
        println!(
            "{} users per run in dispatches of {}, receiver latency {} ms, {} requests in flight per touchpoint, {} cores",
            o.users,
            o.per_dispatch,
            o.latency_ms,
            o.concurrency,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!();
        if o.latency_ms == 0 {
            rss_of_one_dispatch(&receiver).await;
        }
        println!("| run | users/s | requests/s | batch latency p50 / p95 / p99 ms | our CPU s per 100k users | receiver CPU s per 100k users | peak RSS MiB | ledger writes per batch | users/s ÷ limit | requests/s ÷ limit |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        let binary = sibling("touchpoint");
        for &batch in &o.batches {
            let (ours, limit) = library(&receiver, batch, &o).await;
            print_row(&format!("limit, batch {batch}"), &limit, None);
            print_row(&format!("dispatcher library, batch {batch}"), &ours, Some(&limit));
            if o.service {
                if binary.exists() {
                    let svc = service(&receiver, batch, &o, &binary).await;
                    print_row(&format!("local service, batch {batch}"), &svc, Some(&limit));
                } else {
                    println!("| local service, batch {batch} | (build `touchpoint` in release first) |");
                }
            }
        }
    });
}
