//! Command line and environment, read once at start-up into a typed [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use touchpoint_dispatcher::{DispatcherConfig, RetryPolicy, parse_duration};

pub const USAGE: &str = "\
usage: touchpoint [serve] [--listen ADDR] [--data-dir DIR]
       touchpoint receiver [--listen ADDR] [--token TOKEN] [--mode sync|async]
       touchpoint --help | --version

  --listen ADDR     address to serve the API on (default 127.0.0.1:8080; port 0 picks a free one)
                    env TOUCHPOINT_LISTEN
  --data-dir DIR    where the SQLite store and the generated admin key live
                    (default ./touchpoint-data) env TOUCHPOINT_DATA_DIR

environment:
  TOUCHPOINT_API_KEYS           KEY=PROJECT_ID:ROLE or KEY=PROJECT_ID:operator:SPACE|SPACE, comma-separated;
                                roles admin, operator, campaign. Unset: one admin key for project 1 is
                                generated into the data directory and shown at start-up.
  TOUCHPOINT_ALLOW_PLAIN_HTTP   accept http:// touchpoint URLs (default true locally)
  TOUCHPOINT_ALLOW_PRIVATE_NETWORKS  let outbound requests reach loopback and private addresses
                                (default false: the SSRF guard is on)
  TOUCHPOINT_RETRY_SCHEDULE     waits between delivery attempts (default 30s,2m,10m,30m,1h)
  TOUCHPOINT_REQUEST_TIMEOUT    per request to a receiver (default 15s, at most 60s)
  TOUCHPOINT_CONCURRENCY        requests in flight per touchpoint (default 4)
  TOUCHPOINT_MAX_RECEIVES       deliveries in a row without progress (crashes, storage errors) before a
                                dispatch's remaining users fail (default 10; waits and retries never count)
  TOUCHPOINT_RECEIPT_POLL_INTERVAL  how often async receipts are polled (default 5m; e.g. 2s for a demo)
  TOUCHPOINT_DURABILITY         process (default: a commit survives kill -9; the last commits before a
                                power loss may be lost) or power-loss (every commit synced to disk)
  TOUCHPOINT_LOG_FORMAT         human (default) or json
  TOUCHPOINT_LOG                log filter, e.g. info or touchpoint=debug (default info)";

#[derive(Debug)]
pub enum Command {
    Serve(Config),
    Receiver(crate::receiver::ReceiverConfig),
    Help,
    Version,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Never printed: holds secrets.
    pub api_keys: Option<String>,
    pub allow_plain_http: bool,
    pub json_logs: bool,
    pub log_filter: String,
    /// Turn the SSRF guard off (receivers on localhost in the quick start).
    pub allow_private_networks: bool,
    pub dispatcher: DispatcherConfig,
    pub durability: touchpoint_embedded::Durability,
}

fn flag(name: &str, value: Option<String>) -> Result<bool, String> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(true),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(format!("{name} must be true or false, not {other:?}")),
    }
}

/// `--name=value` → (`--name`, Some(value)); anything else as it is.
fn split_flag(arg: &str) -> (&str, Option<String>) {
    match arg.split_once('=') {
        Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
        _ => (arg, None),
    }
}

/// A flag's value: the inline one, or the next argument.
fn flag_value<'a>(
    name: &str,
    inline: &Option<String>,
    rest: &mut impl Iterator<Item = &'a String>,
) -> Result<String, String> {
    inline
        .clone()
        .or_else(|| rest.next().cloned())
        .ok_or_else(|| format!("{name} needs a value"))
}

fn parse_receiver(args: &[String]) -> Result<Command, String> {
    let mut listen = "127.0.0.1:9000".to_owned();
    let mut token = None;
    let mut mode = crate::receiver::Mode::Sync;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (name, inline) = split_flag(arg);
        let mut value = || flag_value(name, &inline, &mut rest);
        match name {
            "-h" | "--help" => return Ok(Command::Help),
            "--listen" => listen = value()?,
            "--token" => token = Some(value()?).filter(|t| !t.is_empty()),
            "--mode" => {
                mode = match value()?.as_str() {
                    "sync" => crate::receiver::Mode::Sync,
                    "async" => crate::receiver::Mode::Async,
                    other => return Err(format!("--mode must be sync or async, not {other:?}")),
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let listen = listen
        .parse()
        .map_err(|_| format!("--listen: {listen:?} is not an address"))?;
    Ok(Command::Receiver(crate::receiver::ReceiverConfig {
        listen,
        token,
        mode,
    }))
}

/// Reads `args` (without the program name) and the environment through `env`.
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Command, String> {
    if args.first().map(String::as_str) == Some("receiver") {
        return parse_receiver(&args[1..]);
    }
    let mut listen = env("TOUCHPOINT_LISTEN").filter(|s| !s.is_empty());
    let mut data_dir = env("TOUCHPOINT_DATA_DIR").filter(|s| !s.is_empty());
    let mut rest = args.iter();
    let mut first = true;
    while let Some(arg) = rest.next() {
        let (name, inline) = split_flag(arg);
        let mut value = || flag_value(name, &inline, &mut rest);
        match name {
            "-h" | "--help" | "help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "serve" if first => {}
            "--listen" => listen = Some(value()?),
            "--data-dir" => data_dir = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
        first = false;
    }
    let listen = listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen: SocketAddr = listen.parse().map_err(|_| {
        format!("--listen / TOUCHPOINT_LISTEN: {listen:?} is not an address like 127.0.0.1:8080")
    })?;
    let json_logs = match env("TOUCHPOINT_LOG_FORMAT").as_deref() {
        None | Some("") | Some("human") => false,
        Some("json") => true,
        Some(other) => {
            return Err(format!(
                "TOUCHPOINT_LOG_FORMAT must be human or json, not {other:?}"
            ));
        }
    };
    let mut dispatcher = DispatcherConfig::default();
    if let Some(s) = env("TOUCHPOINT_RETRY_SCHEDULE").filter(|s| !s.trim().is_empty()) {
        dispatcher.retry =
            RetryPolicy::parse(&s).map_err(|e| format!("TOUCHPOINT_RETRY_SCHEDULE: {e}"))?;
    }
    if let Some(s) = env("TOUCHPOINT_REQUEST_TIMEOUT").filter(|s| !s.trim().is_empty()) {
        let t = parse_duration(&s).map_err(|e| format!("TOUCHPOINT_REQUEST_TIMEOUT: {e}"))?;
        if t.is_zero() || t > std::time::Duration::from_secs(60) {
            return Err("TOUCHPOINT_REQUEST_TIMEOUT must be between 1ms and 60s".into());
        }
        dispatcher.request_timeout = t;
    }
    if let Some(s) = env("TOUCHPOINT_CONCURRENCY").filter(|s| !s.trim().is_empty()) {
        dispatcher.per_touchpoint_concurrency = s
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=256).contains(n))
            .ok_or("TOUCHPOINT_CONCURRENCY must be an integer from 1 to 256")?;
    }
    if let Some(s) = env("TOUCHPOINT_RECEIPT_POLL_INTERVAL").filter(|s| !s.trim().is_empty()) {
        let t = parse_duration(&s).map_err(|e| format!("TOUCHPOINT_RECEIPT_POLL_INTERVAL: {e}"))?;
        if t < std::time::Duration::from_millis(100) {
            return Err("TOUCHPOINT_RECEIPT_POLL_INTERVAL must be at least 100ms".into());
        }
        dispatcher.receipt_poll_interval = t;
    }
    if let Some(s) = env("TOUCHPOINT_MAX_RECEIVES").filter(|s| !s.trim().is_empty()) {
        dispatcher.max_stalls = s
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 2)
            .ok_or("TOUCHPOINT_MAX_RECEIVES must be an integer of at least 2")?;
    }
    let durability = match env("TOUCHPOINT_DURABILITY").filter(|s| !s.trim().is_empty()) {
        None => touchpoint_embedded::Durability::default(),
        Some(s) => touchpoint_embedded::Durability::parse(&s).ok_or_else(|| {
            format!("TOUCHPOINT_DURABILITY must be process or power-loss, not {s:?}")
        })?,
    };
    Ok(Command::Serve(Config {
        listen,
        data_dir: PathBuf::from(data_dir.unwrap_or_else(|| "touchpoint-data".into())),
        api_keys: env("TOUCHPOINT_API_KEYS").filter(|s| !s.trim().is_empty()),
        allow_plain_http: match env("TOUCHPOINT_ALLOW_PLAIN_HTTP") {
            None => true,
            v => flag("TOUCHPOINT_ALLOW_PLAIN_HTTP", v)?,
        },
        json_logs,
        log_filter: env("TOUCHPOINT_LOG").unwrap_or_else(|| "info".into()),
        allow_private_networks: match env("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS") {
            None => false,
            v => flag("TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", v)?,
        },
        dispatcher,
        durability,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_flags_and_environment() {
        let Command::Serve(c) = parse(&[], |_| None).unwrap() else {
            panic!()
        };
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("touchpoint-data"));
        let env = |n: &str| (n == "TOUCHPOINT_LISTEN").then(|| "0.0.0.0:9".to_owned());
        let Command::Serve(c) = parse(&args(&["serve", "--data-dir=/tmp/x"]), env).unwrap() else {
            panic!()
        };
        assert_eq!(c.listen.to_string(), "0.0.0.0:9");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let Command::Serve(c) = parse(&args(&["--listen", "127.0.0.1:0"]), env).unwrap() else {
            panic!()
        };
        assert_eq!(c.listen.port(), 0, "the flag wins over the environment");
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert!(parse(&args(&["--listen", "nowhere"]), |_| None).is_err());
        assert!(parse(&args(&["--listen"]), |_| None).is_err());
        assert!(parse(&args(&["--frobnicate"]), |_| None).is_err());
        assert!(
            parse(&[], |n| (n == "TOUCHPOINT_LOG_FORMAT")
                .then(|| "xml".into()))
            .is_err()
        );
        assert!(matches!(
            parse(&args(&["--help"]), |_| None).unwrap(),
            Command::Help
        ));
        assert!(
            parse(&[], |n| (n == "TOUCHPOINT_RETRY_SCHEDULE")
                .then(|| "soon".into()))
            .is_err()
        );
        assert!(
            parse(&[], |n| (n == "TOUCHPOINT_DURABILITY")
                .then(|| "forever".into()))
            .is_err()
        );
        let Command::Serve(c) = parse(&[], |n| {
            (n == "TOUCHPOINT_DURABILITY").then(|| "power-loss".into())
        })
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.durability, touchpoint_embedded::Durability::PowerLoss);
    }
}
