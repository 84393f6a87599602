//! Command line and environment, read once at start-up into a typed [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: touchpoint [serve] [--listen ADDR] [--data-dir DIR]
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
  TOUCHPOINT_LOG_FORMAT         human (default) or json
  TOUCHPOINT_LOG                log filter, e.g. info or touchpoint=debug (default info)";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Serve(Config),
    Help,
    Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Never printed: holds secrets.
    pub api_keys: Option<String>,
    pub allow_plain_http: bool,
    pub json_logs: bool,
    pub log_filter: String,
}

fn flag(name: &str, value: Option<String>) -> Result<bool, String> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(true),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(format!("{name} must be true or false, not {other:?}")),
    }
}

/// Reads `args` (without the program name) and the environment through `env`.
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Command, String> {
    let mut listen = env("TOUCHPOINT_LISTEN").filter(|s| !s.is_empty());
    let mut data_dir = env("TOUCHPOINT_DATA_DIR").filter(|s| !s.is_empty());
    let mut rest = args.iter();
    let mut first = true;
    while let Some(arg) = rest.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| rest.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
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
        assert_eq!(parse(&args(&["--help"]), |_| None).unwrap(), Command::Help);
    }
}
