//! The local binary as users run it: a separate process on a free port, driven over HTTP,
//! stopped with SIGTERM or killed with SIGKILL, and started again on the same data directory.

use crate::support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::service::{SECRET, Service, command, run_readme_block};

fn touchpoint(name: &str) -> Value {
    json!({
        "name": name,
        "kind": "notification",
        "url": "http://127.0.0.1:9/touch",
        "token": SECRET,
        "batchSize": 100,
        "userAttributes": [{"attribute": "usr_phone", "identifier": "phone", "displayName": "手机号"}],
        "templateParams": [{"identifier": "content", "displayName": "内容", "type": "text", "required": true}]
    })
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    (dir, data)
}

use reqwest::Method;

#[tokio::test(flavor = "multi_thread")]
async fn a_newcomer_walks_the_lifecycle_and_finds_it_all_after_a_restart() {
    let (_tmp, data) = data_dir();
    let service = Service::start(&data, &[]);
    let key = service
        .key
        .clone()
        .expect("a generated admin key in the banner");
    assert!(
        service
            .banner
            .iter()
            .any(|l| l.starts_with("data directory: "))
    );

    let (status, tp) = service
        .call(
            Method::POST,
            "/v1/touchpoints",
            &key,
            Some(touchpoint("短信网关")),
        )
        .await;
    assert_eq!(status, 201, "{tp}");
    let id = tp["id"].as_str().unwrap().to_owned();
    let (status, tp) = service
        .call(
            Method::PUT,
            &format!("/v1/touchpoints/{id}/spaces"),
            &key,
            Some(json!({"spaceIds": ["space-a"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(tp["spaceIds"], json!(["space-a"]));
    let (status, tp) = service
        .call(
            Method::POST,
            &format!("/v1/touchpoints/{id}/disable"),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let before = tp;

    let (status, log) = service.terminate();
    assert!(
        status.success(),
        "SIGTERM is a clean exit: {status:?}\n{log}"
    );
    assert!(!log.contains(SECRET), "the log carried a token");
    assert!(!log.contains(&key), "the log carried the API key");

    let key_file = data.join("admin.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key file is private");
    }

    let service = Service::start(&data, &[]);
    assert_eq!(
        service.key.as_deref(),
        Some(key.as_str()),
        "the same key after a restart"
    );
    let (status, after) = service
        .call(Method::GET, &format!("/v1/touchpoints/{id}"), &key, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(after, before, "everything is there after a restart");
    service.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    let (_tmp, data) = data_dir();
    let service = Service::start(&data, &[]);
    let key = service.key.clone().unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, tp) = service
            .call(
                Method::POST,
                "/v1/touchpoints",
                &key,
                Some(touchpoint(&format!("tp {i}"))),
            )
            .await;
        assert_eq!(status, 201);
        ids.push(tp["id"].as_str().unwrap().to_owned());
    }
    service.kill9();

    let service = Service::start(&data, &[]);
    let (status, page) = service
        .call(Method::GET, "/v1/touchpoints?limit=100", &key, None)
        .await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids);
    service.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_keys_replace_the_generated_one_and_logs_can_be_json() {
    let (_tmp, data) = data_dir();
    let admin = "configured-admin-key-1";
    let operator = "configured-operator-key-1";
    let keys = format!("{admin}=7:admin,{operator}=7:operator:space-a");
    let service = Service::start(
        &data,
        &[
            ("TOUCHPOINT_API_KEYS", &keys),
            ("TOUCHPOINT_LOG_FORMAT", "json"),
        ],
    );
    assert!(
        service.key.is_none(),
        "no key is printed when keys are configured"
    );
    assert!(!data.join("admin.key").exists());
    let (status, tp) = service
        .call(
            Method::POST,
            "/v1/touchpoints",
            admin,
            Some(touchpoint("a")),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(tp["projectId"], 7);
    let (status, _) = service
        .call(
            Method::POST,
            "/v1/touchpoints",
            operator,
            Some(touchpoint("b")),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = service
        .call(Method::GET, "/v1/touchpoints", "tpk_guess", None)
        .await;
    assert_eq!(status, 401);
    let (status, log) = service.terminate();
    assert!(status.success());
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(!log.contains(admin) && !log.contains(SECRET));
}

#[test]
fn bad_configuration_fails_at_start_with_its_name() {
    let (_tmp, data) = data_dir();
    for (args, env, needle) in [
        (vec!["--listen", "nowhere"], vec![], "--listen"),
        (vec!["--bogus"], vec![], "--bogus"),
        (
            vec![],
            vec![("TOUCHPOINT_API_KEYS", "short=1:admin")],
            "TOUCHPOINT_API_KEYS",
        ),
        (
            vec![],
            vec![("TOUCHPOINT_ALLOW_PLAIN_HTTP", "perhaps")],
            "TOUCHPOINT_ALLOW_PLAIN_HTTP",
        ),
    ] {
        let mut cmd = command(&data, &env);
        cmd.args(&args);
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} {env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle} not named in: {stderr}");
    }
}

/// README's curl walk-through, run as written against a fresh service: what a newcomer does.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_works_as_written() {
    let (tmp, _) = data_dir();
    // The walk-through reads the key from ./touchpoint-data and talks to the default address.
    let service = Service::start(&tmp.path().join("touchpoint-data"), &[]);
    let stdout = run_readme_block(
        "## Walk the lifecycle with curl",
        0,
        tmp.path(),
        &service,
        &[],
    );
    let errors: Vec<&str> = stdout.lines().filter(|l| l.contains("\"error\"")).collect();
    assert_eq!(errors.len(), 1, "only the refused disable errs: {errors:?}");
    assert!(errors[0].contains("touchpoint_in_use"));
    assert_eq!(
        stdout.lines().last(),
        Some("204"),
        "the walk ends with the delete"
    );
    service.terminate();
}
