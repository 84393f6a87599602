//! Secret hygiene, end to end: a token set through the admin API never appears in a response,
//! an error message, a test-send preview, a batch or dispatch record, a results event or a log
//! line — with logging at `trace` so every library logs all it can.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::service::{SECRET, Service};
use crate::support::{Receiver, Reply};
use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "secrets-admin-key-01";
const CAMPAIGN: &str = "secrets-campaign-key1";

/// Every place a response can show up, read raw (the helper in `Service::call` checks too,
/// but only for bodies it can parse as JSON).
async fn raw(service: &Service, method: Method, path: &str, key: &str, body: &[u8]) -> String {
    let response = crate::support::http_client()
        .request(method, service.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let mut text = format!("{:?}\n", response.headers());
    text.push_str(&response.text().await.unwrap());
    text
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_never_leaves_through_responses_errors_previews_records_events_or_logs() {
    let _one = super::ONE_AT_A_TIME.lock().await;
    let whsec_secret = format!("{SECRET}-whsec-material");
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(&whsec_secret)
    );
    let secrets = [SECRET.to_owned(), whsec.clone()];
    // Echoes everything it was sent back in its answer, as a careless receiver might.
    let rx = Receiver::start(|seen, _| {
        let mut reply = Reply::all_ok(seen);
        if let Reply::Json(_, body) = &mut reply {
            body["echo"] = json!({
                "headers": format!("{:?}", seen.headers),
                "body": String::from_utf8_lossy(&seen.raw),
            });
        }
        reply
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let keys = format!("{ADMIN}=1:admin,{CAMPAIGN}=1:campaign");
    let service = Service::start(
        &data,
        &[
            ("TOUCHPOINT_API_KEYS", keys.as_str()),
            ("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", "true"),
            ("TOUCHPOINT_LOG", "trace"),
            ("TOUCHPOINT_LOG_FORMAT", "json"),
        ],
    );
    let token = format!("{SECRET}-primary");
    let body = |token: &str| {
        json!({
            "name": "保密", "kind": "benefit", "url": rx.url(), "token": token, "batchSize": 2,
            "userAttributes": [{"attribute": "usr_name", "identifier": "name", "displayName": "n"}],
            "templateParams": [{"identifier": "title", "displayName": "t", "type": "text", "required": true}]
        })
    };
    let mut seen = String::new();
    // Create, read, list, replace, and refusals that name the token field.
    let created = raw(
        &service,
        Method::POST,
        "/v1/touchpoints",
        ADMIN,
        body(&token).to_string().as_bytes(),
    )
    .await;
    seen.push_str(&created);
    let id = serde_json::from_str::<Value>(created.split_once('\n').unwrap().1).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, path, payload) in [
        (Method::GET, format!("/v1/touchpoints/{id}"), Vec::new()),
        (Method::GET, "/v1/touchpoints".to_owned(), Vec::new()),
        (Method::PUT, format!("/v1/touchpoints/{id}/spaces"), br#"{"spaceIds":["s"]}"#.to_vec()),
        // Refusals: too long, control characters, bad whsec, wrong type, duplicate key, bad JSON.
        (Method::POST, "/v1/touchpoints".to_owned(), body(&format!("{SECRET}{}", "x".repeat(300))).to_string().into_bytes()),
        (Method::POST, "/v1/touchpoints".to_owned(), body(&format!("{SECRET}\r\nX: y")).to_string().into_bytes()),
        (Method::POST, "/v1/touchpoints".to_owned(), body(&format!("whsec_{SECRET}!!")).to_string().into_bytes()),
        (Method::POST, "/v1/touchpoints".to_owned(), format!(r#"{{"name":"x","token":"{SECRET}","token":"{SECRET}"}}"#).into_bytes()),
        (Method::POST, "/v1/touchpoints".to_owned(), format!(r#"{{"name":"x","token":"{SECRET}"#).into_bytes()),
        (Method::POST, "/v1/touchpoints".to_owned(), { let mut b = body(&token); b["name"] = json!("a name that is far too long"); b.to_string().into_bytes() }),
        (Method::POST, format!("/v1/touchpoints/{id}/disable"), Vec::new()),
        // Replace: keep the token (absent), then swap to a whsec_ token.
        (Method::PUT, format!("/v1/touchpoints/{id}"), { let mut b = body(&token); b.as_object_mut().unwrap().remove("token"); b["version"] = json!(3); b.to_string().into_bytes() }),
        (Method::PUT, format!("/v1/touchpoints/{id}"), { let mut b = body(&whsec); b["version"] = json!(4); b.to_string().into_bytes() }),
        (Method::PUT, format!("/v1/touchpoints/{id}"), { let mut b = body(&whsec); b["version"] = json!(1); b.to_string().into_bytes() }),
        (Method::POST, format!("/v1/touchpoints/{id}/enable"), Vec::new()),
        // Test send: the preview of the request.
        (Method::POST, format!("/v1/touchpoints/{id}/test"), br#"{"users":[{"gid":1,"attributes":{"usr_name":"A"}}],"templateValues":{"title":"Hi {{name}}"}}"#.to_vec()),
    ] {
        let text = raw(&service, method.clone(), &path, ADMIN, &payload).await;
        assert!(!text.contains("500 Internal"), "{method} {path}: {text}");
        seen.push_str(&text);
    }
    assert!(
        seen.contains("\"tokenSet\":true"),
        "the token is set: {seen}"
    );

    // A dispatch, its records and statistics.
    let users: Vec<Value> = (0..5)
        .map(|g| json!({"gid": g, "attributes": {"usr_name": format!("u{g}")}}))
        .collect();
    let d = json!({"dispatchId": "sec-1", "projectId": 1, "spaceId": "s", "campaignId": "c",
                   "touchpointId": id, "templateValues": {"title": "Hi {{name}}"}, "users": users});
    seen.push_str(
        &raw(
            &service,
            Method::POST,
            "/v1/dispatches",
            CAMPAIGN,
            d.to_string().as_bytes(),
        )
        .await,
    );
    let started = Instant::now();
    let dispatch = loop {
        let text = raw(&service, Method::GET, "/v1/dispatches/sec-1", CAMPAIGN, b"").await;
        if text.contains("\"completed\"") {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not done: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    seen.push_str(&dispatch);
    let v: Value = serde_json::from_str(dispatch.split_once('\n').unwrap().1).unwrap();
    for b in v["batches"].as_array().unwrap() {
        let order = b["orderNo"].as_str().unwrap();
        seen.push_str(
            &raw(
                &service,
                Method::GET,
                &format!("/v1/batches/{order}"),
                CAMPAIGN,
                b"",
            )
            .await,
        );
    }
    seen.push_str(
        &raw(
            &service,
            Method::GET,
            "/v1/campaigns/c/stats",
            CAMPAIGN,
            b"",
        )
        .await,
    );
    seen.push_str(
        &raw(
            &service,
            Method::GET,
            &format!("/v1/touchpoints/{id}/stats"),
            ADMIN,
            b"",
        )
        .await,
    );
    assert_eq!(
        rx.requests(),
        3 + 1,
        "one test send and three batches reached the receiver"
    );
    // The receiver got signatures, never the token itself.
    for s in rx.seen() {
        let wire = format!("{:?}{}", s.headers, String::from_utf8_lossy(&s.raw));
        for secret in &secrets {
            assert!(
                !wire.contains(secret.as_str()),
                "the token went over the wire: {wire}"
            );
        }
    }

    // Results events, and the logs of the whole run.
    let started = Instant::now();
    let events = loop {
        let text = std::fs::read_to_string(data.join("results.jsonl")).unwrap_or_default();
        if crate::support::complete_lines(&text).count() >= 3
            || started.elapsed() > Duration::from_secs(20)
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(events.matches("$ma_channel_touch").count(), 5, "{events}");
    let (_, logs) = service.terminate();
    assert!(
        logs.lines().count() > 50,
        "trace logging captured: {} lines",
        logs.lines().count()
    );
    // Every file the service wrote but its database (which must hold the token to sign).
    let mut files = Vec::new();
    files_under(&data, &mut files);
    let mut written = String::new();
    for f in files.iter().filter(|f| {
        let name = f.file_name().unwrap().to_string_lossy();
        !name.starts_with("touchpoint.db") && !name.ends_with(".db") && !name.contains(".db-")
    }) {
        written.push_str(&String::from_utf8_lossy(&std::fs::read(f).unwrap()));
    }
    for secret in &secrets {
        for (place, text) in [
            ("a response", &seen),
            ("a results event", &events),
            ("a log line", &logs),
            ("a file", &written),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "the token appeared in {place}: …{}…",
                text.find(secret.as_str()).map_or("", |i| &text
                    [i.saturating_sub(200)..(i + 100).min(text.len())])
            );
        }
    }
    eprintln!(
        "secret hygiene: {} bytes of responses, {} log lines, {} event bytes, {} other files checked",
        seen.len(),
        logs.lines().count(),
        events.len(),
        files.len()
    );
}
