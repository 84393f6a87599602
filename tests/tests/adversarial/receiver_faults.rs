//! Receivers that misbehave at the socket and protocol level, served raw on 127.0.0.1: each
//! fault must end every user of the batch in a defined outcome (final status with a reason,
//! retried only when the fault is transient), with no panic and a bounded read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::rig::{Rig, config, dispatch};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use touchpoint_outbound::{MAX_RESPONSE_BYTES, Outbound};

/// What the raw server does once it has read a request.
#[derive(Clone)]
enum Fault {
    /// Write these bytes and close.
    Bytes(Vec<u8>),
    /// Write the head, then the body one byte at a time with this pause.
    Trickle(Vec<u8>, Vec<u8>, Duration),
    /// Write these bytes, then reset the connection.
    ResetAfter(Vec<u8>),
    /// Answer after this long.
    Late(Duration, Vec<u8>),
    /// Write the head, then body bytes forever.
    Endless(Vec<u8>),
    /// Close without a word.
    Close,
}

/// Serves `answer(order_no, gids)` to every connection; counts requests.
async fn raw_server(
    answer: impl Fn(&str, &[i64]) -> Fault + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = Arc::clone(&answer);
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut stream = stream;
                let Some(body) = read_request(&mut stream).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let order = v["orderNo"].as_str().unwrap_or_default().to_owned();
                let gids: Vec<i64> = v["dataList"]
                    .as_array()
                    .map(|l| l.iter().filter_map(|u| u["gid"].as_i64()).collect())
                    .unwrap_or_default();
                let fault = answer(&order, &gids);
                play(stream, fault).await;
            });
        }
    });
    (addr, count)
}

async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf[end + 4..end + 4 + length].to_vec());
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn play(mut stream: TcpStream, fault: Fault) {
    match fault {
        Fault::Bytes(b) => {
            let _ = stream.write_all(&b).await;
            let _ = stream.shutdown().await;
        }
        Fault::Trickle(head, body, pause) => {
            let _ = stream.write_all(&head).await;
            for byte in body {
                if stream.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(pause).await;
            }
        }
        Fault::ResetAfter(b) => {
            let _ = stream.write_all(&b).await;
            let _ = stream.flush().await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Fault::Late(wait, b) => {
            tokio::time::sleep(wait).await;
            let _ = stream.write_all(&b).await;
        }
        Fault::Endless(head) => {
            let _ = stream.write_all(&head).await;
            let block = vec![b' '; 64 * 1024];
            while stream.write_all(&block).await.is_ok() {}
        }
        Fault::Close => drop(stream),
    }
}

fn http(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn receipt(order: &str, list: Value) -> Vec<u8> {
    json!({"code": 0, "message": "", "orderNo": order, "sendStatusList": list})
        .to_string()
        .into_bytes()
}

fn all_ok(order: &str, gids: &[i64]) -> Vec<u8> {
    receipt(
        order,
        json!(
            gids.iter()
                .map(|g| json!({"gid": g, "status": "TOU_SUCC", "errorMsg": ""}))
                .collect::<Vec<_>>()
        ),
    )
}

type Answer = Arc<dyn Fn(&str, &[i64]) -> Fault + Send + Sync>;

/// A fault, and what every user of a 3-user batch (gids 0, 1, 2) must end with:
/// (gid, status, reason fragment), and the attempts made (1 = final at once, 3 = retried).
struct Case {
    what: &'static str,
    fault: Answer,
    expect: [(&'static str, &'static str); 3],
    attempts: u32,
}

fn case(
    what: &'static str,
    fault: impl Fn(&str, &[i64]) -> Fault + Send + Sync + 'static,
    expect: [(&'static str, &'static str); 3],
    attempts: u32,
) -> Case {
    Case {
        what,
        fault: Arc::new(fault),
        expect,
        attempts,
    }
}

const FAIL: &str = "TOU_FAIL";
const OK: (&str, &str) = ("TOU_SUCC", "");

fn cases() -> Vec<Case> {
    let all = |reason: &'static str| [(FAIL, reason); 3];
    vec![
        case(
            "slower than the timeout",
            |o, g| Fault::Late(Duration::from_secs(3), http("200 OK", &all_ok(o, g))),
            all("timed out"),
            3,
        ),
        case(
            "a slow trickle of bytes",
            |o, g| {
                let body = all_ok(o, g);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                Fault::Trickle(head.into_bytes(), body, Duration::from_millis(50))
            },
            all("timed out"),
            3,
        ),
        case(
            "connection reset mid-response",
            |_, _| {
                Fault::ResetAfter(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"code\":0,\"sendSt".to_vec(),
                )
            },
            all("request failed"),
            3,
        ),
        case(
            "closed before answering",
            |_, _| Fault::Close,
            all("request failed"),
            3,
        ),
        case(
            "fewer body bytes than Content-Length",
            |_, _| {
                Fault::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n{\"code\":0}".to_vec())
            },
            all("request failed"),
            3,
        ),
        case(
            "not HTTP at all",
            |_, _| Fault::Bytes(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
            all("request failed"),
            3,
        ),
        case(
            "200 KiB of headers",
            |o, g| {
                let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..2_000 {
                    r.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(100)).as_bytes());
                }
                let body = all_ok(o, g);
                r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                r.extend_from_slice(&body);
                Fault::Bytes(r)
            },
            all("request failed"),
            3,
        ),
        case(
            "a 10 MiB response",
            |_, _| {
                let mut body = b"{\"code\":0,\"message\":\"".to_vec();
                body.resize(10 * 1024 * 1024, b'x');
                Fault::Bytes(http("200 OK", &body))
            },
            all("larger than"),
            1,
        ),
        case(
            "an endless chunked response",
            |_, _| {
                Fault::Endless(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n".to_vec(),
                )
            },
            all("larger than"),
            1,
        ),
        case(
            "invalid UTF-8",
            |_, _| Fault::Bytes(http("200 OK", b"{\"code\":0,\"message\":\"\xff\xfe\"}")),
            all("invalid receipt"),
            1,
        ),
        case(
            "an empty 200",
            |_, _| Fault::Bytes(http("200 OK", b"")),
            all("invalid receipt"),
            1,
        ),
        case(
            "HTML instead of JSON",
            |_, _| Fault::Bytes(http("200 OK", b"<html><body>OK</body></html>")),
            all("invalid receipt"),
            1,
        ),
        case(
            "gid as a string",
            |o, g| {
                let list: Vec<Value> = g
                    .iter()
                    .map(|g| json!({"gid": g.to_string(), "status": "TOU_SUCC"}))
                    .collect();
                Fault::Bytes(http("200 OK", &receipt(o, json!(list))))
            },
            all("no status returned"),
            1,
        ),
        case(
            "gids out of range and not in the batch",
            |o, _| {
                let list = json!([
                    {"gid": 18446744073709551615u64, "status": "TOU_SUCC"},
                    {"gid": -1, "status": "TOU_SUCC"},
                    {"gid": 1.5, "status": "TOU_SUCC"},
                    {"gid": 1, "status": "TOU_SUCC"}
                ]);
                Fault::Bytes(http("200 OK", &receipt(o, list)))
            },
            [
                (FAIL, "no status returned"),
                OK,
                (FAIL, "no status returned"),
            ],
            1,
        ),
        case(
            "duplicate gids in sendStatusList (the first one counts)",
            |o, _| {
                let list = json!([
                    {"gid": 0, "status": "TOU_SUCC"},
                    {"gid": 0, "status": "TOU_FAIL", "errorMsg": "second"},
                    {"gid": 1, "status": "TOU_FAIL", "errorMsg": "first"},
                    {"gid": 1, "status": "TOU_SUCC"},
                    {"gid": 2, "status": "TOU_SUCC"}
                ]);
                Fault::Bytes(http("200 OK", &receipt(o, list)))
            },
            [OK, (FAIL, "first"), OK],
            1,
        ),
        case(
            "status in lower case",
            |o, g| {
                let list: Vec<Value> = g
                    .iter()
                    .map(|g| json!({"gid": g, "status": "tou_succ"}))
                    .collect();
                Fault::Bytes(http("200 OK", &receipt(o, json!(list))))
            },
            all("invalid status \"tou_succ\""),
            1,
        ),
        case(
            "HTTP/1.0 without a length",
            |o, g| {
                let mut r = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n".to_vec();
                r.extend_from_slice(&all_ok(o, g));
                Fault::Bytes(r)
            },
            [OK, OK, OK],
            1,
        ),
        case(
            "a 2 MiB error message",
            |o, g| {
                // Written out directly: serializing 6 MiB through serde_json in a debug build
                // can outlast the request timeout on a busy machine.
                let big = "e".repeat(2 << 20);
                let list: Vec<String> = g
                    .iter()
                    .map(|g| format!(r#"{{"gid":{g},"status":"TOU_FAIL","errorMsg":"{big}"}}"#))
                    .collect();
                let body = format!(
                    r#"{{"code":0,"message":"","orderNo":"{o}","sendStatusList":[{}]}}"#,
                    list.join(",")
                );
                Fault::Bytes(http("200 OK", body.as_bytes()))
            },
            all("larger than"),
            1,
        ),
        case(
            "a long error message is cut, not refused",
            |o, g| {
                let list: Vec<Value> = g
                    .iter()
                    .map(|g| json!({"gid": g, "status": "TOU_FAIL", "errorMsg": "e".repeat(5_000)}))
                    .collect();
                Fault::Bytes(http("200 OK", &receipt(o, json!(list))))
            },
            all("eeeee"),
            1,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_receiver_fault_ends_in_a_defined_outcome() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let cases = cases();
    // A 1 s request timeout: the faults that must time out take 3 s or more; the others answer
    // well within it even with all of them at once on a busy 2-core machine.
    let rig = Rig::new(config("20ms,20ms", 1_000));
    let started = Instant::now();
    let mut servers = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let fault = Arc::clone(&c.fault);
        let (addr, count) = raw_server(move |o, g| fault(o, g)).await;
        let tp = rig
            .touchpoint(&format!("fault {i}"), &format!("http://{addr}/touch"), 10)
            .await;
        servers.push((tp, count));
    }
    // All faults at once: one misbehaving receiver must not hold up the others.
    let mut set = tokio::task::JoinSet::new();
    let rig = Arc::new(rig);
    for (i, (tp, _)) in servers.iter().enumerate() {
        let rig = Arc::clone(&rig);
        let message = dispatch(&format!("fault-{i}"), tp, 3);
        set.spawn(async move { rig.deliver(&message).await });
    }
    while let Some(done) = set.join_next().await {
        done.expect("no panic");
    }
    for (i, c) in cases.iter().enumerate() {
        let b = &rig.batches(&format!("fault-{i}")).await[0];
        assert_eq!(b.attempts, c.attempts, "{}: {b:?}", c.what);
        assert_eq!(
            servers[i].1.load(Ordering::SeqCst),
            c.attempts as usize,
            "{}",
            c.what
        );
        assert_eq!(
            b.results.len(),
            c.expect.len(),
            "{}: {:?}",
            c.what,
            b.results
        );
        for (r, (status, reason)) in b.results.iter().zip(c.expect) {
            assert_eq!(r.status.code(), status, "{}: {:?}", c.what, b.results);
            assert!(
                r.status.reason().contains(reason),
                "{}: {:?} should say {reason:?}",
                c.what,
                r.status
            );
            assert!(r.status.reason().len() <= 600, "{}: reason cut", c.what);
        }
        let excerpt = b.response_excerpt.as_deref().unwrap_or("");
        assert!(excerpt.len() <= 4_000, "{}: excerpt is bounded", c.what);
    }
    eprintln!(
        "{} receiver faults, each ended in its defined outcome, in {:?}",
        cases.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_or_endless_response_is_read_only_up_to_the_cap() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    for fault in [
        Fault::Endless(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
        Fault::Bytes(http("200 OK", &vec![b'x'; 10 * 1024 * 1024])),
    ] {
        let (addr, _) = raw_server(move |_, _| fault.clone()).await;
        let reply = Outbound::new(true)
            .unwrap()
            .post_json(
                &format!("http://{addr}/"),
                b"{}".to_vec(),
                &[],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(reply.truncated);
        assert_eq!(reply.body.len(), MAX_RESPONSE_BYTES);
    }
}
