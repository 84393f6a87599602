//! The local binary as a separate process: started on a free port, driven over HTTP,
//! stopped with SIGTERM or SIGKILL.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_touchpoint-under-test");
/// Every token the end-to-end tests register contains this, so a leak is easy to spot.
pub const SECRET: &str = "SECRET-tok-e2e";

pub struct Service {
    pub child: Child,
    pub base: String,
    pub key: Option<String>,
    pub banner: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// A test's service dies with it, also when the test panics: no process outlives the run.
impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn command(data_dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("TOUCHPOINT_API_KEYS")
        .env_remove("TOUCHPOINT_LISTEN")
        .env_remove("TOUCHPOINT_DATA_DIR")
        .env_remove("TOUCHPOINT_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Service {
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Service {
        let mut child = command(data_dir, env).spawn().expect("start the binary");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut banner = Vec::new();
        let mut base = None;
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        base = Some(addr.trim().to_owned());
                    }
                    let done = line.starts_with("authenticate with:");
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let base = base.unwrap_or_else(|| panic!("no 'listening on' line; banner: {banner:?}"));
        let key = banner
            .iter()
            .find_map(|l| l.strip_prefix("authenticate with: Authorization: Bearer "))
            .filter(|k| k.starts_with("tpk_"))
            .map(str::to_owned);
        Service {
            child,
            base,
            key,
            banner,
            stderr: Some(stderr),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = super::http_client();
        let mut req = client.request(method, self.url(path)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = req.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(!text.contains(SECRET), "a response carried a token: {text}");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    }

    /// Registers a touchpoint with an admin key and authorizes it for `spaces`; its id.
    pub async fn register(&self, admin: &str, body: Value, spaces: &[&str]) -> String {
        let (status, tp) = self
            .call(reqwest::Method::POST, "/v1/touchpoints", admin, Some(body))
            .await;
        assert_eq!(status, 201, "{tp}");
        let id = tp["id"].as_str().unwrap().to_owned();
        let (status, answer) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/touchpoints/{id}/spaces"),
                admin,
                Some(serde_json::json!({ "spaceIds": spaces })),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        id
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
    }

    /// Sends SIGTERM and waits for the exit; returns the status and everything logged.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = wait(&mut self.child, Duration::from_secs(20));
        let logs = self
            .stderr
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        (status, logs)
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

pub fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `nth` (0-based) `sh` block under a README heading.
pub fn readme_block(heading: &str, nth: usize) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    section
        .split("```sh\n")
        .nth(nth + 1)
        .and_then(|s| s.split("```").next())
        .expect("a sh block")
        .to_owned()
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The reference receiver (`touchpoint receiver`) as its own process.
pub struct ReferenceReceiver {
    pub child: Child,
    pub port: u16,
}

impl ReferenceReceiver {
    pub fn start(mode: &str, token: &str) -> ReferenceReceiver {
        let port = free_port();
        let child = Command::new(BIN)
            .args([
                "receiver",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--token",
                token,
                "--mode",
                mode,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the reference receiver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the reference receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ReferenceReceiver { child, port }
    }
}

impl Drop for ReferenceReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `nth` `sh` block under a README heading as a newcomer would, in `dir` (where
/// `touchpoint-data` is the service's data directory), against `service`: the default address
/// and `/tmp/` are pointed at this test's, `extra` replacements applied, and every curl
/// answer printed on its own line. Fails the test unless the script succeeds; returns stdout.
pub fn run_readme_block(
    heading: &str,
    nth: usize,
    dir: &Path,
    service: &Service,
    extra: &[(&str, String)],
) -> String {
    let mut script = readme_block(heading, nth)
        .replace(
            "API=http://127.0.0.1:8080",
            &format!("API={}", service.base),
        )
        .replace("/tmp/", &format!("{}/", dir.display()))
        .replace("curl -s ", "curl -s -w '\\n' ");
    for (from, to) in extra {
        script = script.replace(from, to);
    }
    let quoted = format!("'{}'", script.replace('\'', r"'\''"));
    let out = Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            &format!("timeout 60 bash -euo pipefail -c {quoted}"),
        ])
        .current_dir(dir)
        .output()
        .expect("bash and curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
