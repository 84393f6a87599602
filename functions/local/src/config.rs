//! Command line and environment, read once at start-up into a typed [`Config`] (clap: every
//! flag also reads its environment variable; a flag given wins).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, ValueEnum};
use touchpoint_dispatcher::{DispatcherConfig, RetryPolicy};
use touchpoint_embedded::Durability;

/// What `--help` adds after the flags.
const ENVIRONMENT: &str = "\
`touchpoint receiver --help` describes the reference receiver.

Environment (besides each flag's own variable, shown with it):
  TOUCHPOINT_API_KEYS  KEY=PROJECT_ID:ROLE or KEY=PROJECT_ID:operator:SPACE|SPACE, comma-separated;
                       roles admin, operator, campaign. Unset: one admin key for project 1 is
                       generated into the data directory and shown at start-up. Read from the
                       environment only (a key on the command line would show in `ps`).";

/// `touchpoint [serve] [OPTIONS]`: the service.
#[derive(Parser, Debug)]
#[command(
    name = "touchpoint",
    version,
    about = "Custom touchpoints for marketing platforms, as one local process: the admin API, \
             the console, the dispatcher and the receipt poller on an embedded store.",
    override_usage = "touchpoint [serve] [OPTIONS]\n       touchpoint receiver [OPTIONS]",
    after_help = ENVIRONMENT
)]
struct ServeCli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// `touchpoint receiver [OPTIONS]`: the reference receiver (it reads none of the service's
/// settings).
#[derive(Parser, Debug)]
#[command(
    name = "touchpoint receiver",
    version,
    about = "The reference receiver: verifies signatures and answers every user."
)]
struct ReceiverCli {
    #[command(flatten)]
    receiver: ReceiverArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to serve the API on (port 0 picks a free one).
    #[arg(
        long,
        env = "TOUCHPOINT_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    listen: SocketAddr,
    /// Where the SQLite store and the generated admin key live.
    #[arg(
        long,
        env = "TOUCHPOINT_DATA_DIR",
        default_value = "touchpoint-data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// Accept http:// touchpoint URLs.
    #[arg(long, env = "TOUCHPOINT_ALLOW_PLAIN_HTTP", default_value_t = true,
          action = ArgAction::Set, value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    allow_plain_http: bool,
    /// Let outbound requests reach loopback and private addresses (the SSRF guard off; never in
    /// production).
    #[arg(long, env = "TOUCHPOINT_ALLOW_PRIVATE_NETWORKS", default_value_t = false,
          action = ArgAction::Set, value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    allow_private_networks: bool,
    /// Waits between delivery attempts [default: 30s,2m,10m,30m,1h].
    #[arg(long, env = "TOUCHPOINT_RETRY_SCHEDULE", value_parser = retry_schedule, value_name = "WAITS")]
    retry_schedule: Option<RetryPolicy>,
    /// Per request to a receiver, at most 60s [default: 15s].
    #[arg(long, env = "TOUCHPOINT_REQUEST_TIMEOUT", value_parser = request_timeout, value_name = "DURATION")]
    request_timeout: Option<Duration>,
    /// Requests in flight per touchpoint, 1 to 256 [default: 4].
    #[arg(long, env = "TOUCHPOINT_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=256), value_name = "N")]
    concurrency: Option<u16>,
    /// Deliveries in a row without progress (crashes, storage errors) before a dispatch's
    /// remaining users fail; waits and retries never count [default: 10].
    #[arg(long, env = "TOUCHPOINT_MAX_RECEIVES", value_parser = clap::value_parser!(u32).range(2..), value_name = "N")]
    max_receives: Option<u32>,
    /// How often async receipts are polled, at least 100ms [default: 5m; e.g. 2s for a demo].
    #[arg(long, env = "TOUCHPOINT_RECEIPT_POLL_INTERVAL", value_parser = poll_interval, value_name = "DURATION")]
    receipt_poll_interval: Option<Duration>,
    /// The circuit breaker: the share of failed requests (transport errors, 5xx, 429) of the
    /// last five minutes that pauses a touchpoint, above 0 and at most 1 [default: 0.9].
    #[arg(long, env = "TOUCHPOINT_BREAKER_FAILURE_RATIO", value_parser = failure_ratio, value_name = "RATIO")]
    breaker_failure_ratio: Option<f64>,
    /// The circuit breaker: requests of the last five minutes the ratio needs [default: 20].
    #[arg(long, env = "TOUCHPOINT_BREAKER_MIN_REQUESTS", value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    breaker_min_requests: Option<u32>,
    /// The circuit breaker: connection failures in a row that pause a touchpoint [default: 10].
    #[arg(long, env = "TOUCHPOINT_BREAKER_UNREACHABLE", value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    breaker_unreachable: Option<u32>,
    /// The circuit breaker: the first pause before a probe, 1s to 10m; each failed probe
    /// doubles it, up to 10m [default: 60s].
    #[arg(long, env = "TOUCHPOINT_BREAKER_COOLDOWN", value_parser = cooldown, value_name = "DURATION")]
    breaker_cooldown: Option<Duration>,
    /// process: a commit survives kill -9 (the last commits before a power loss may be lost);
    /// power-loss: every commit synced to disk.
    #[arg(long, env = "TOUCHPOINT_DURABILITY", value_parser = durability, default_value = "process", value_name = "LEVEL")]
    durability: Durability,
    /// Log lines for people or one JSON object per line.
    #[arg(long, env = "TOUCHPOINT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, value_name = "FORMAT")]
    log_format: LogFormat,
    /// Log filter, e.g. info or touchpoint=debug.
    #[arg(
        long,
        env = "TOUCHPOINT_LOG",
        default_value = "info",
        value_name = "FILTER",
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    log: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Debug)]
struct ReceiverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "ADDR")]
    listen: SocketAddr,
    /// The touchpoint's token: signatures are verified with it.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Answer results in the touch response (sync) or later through the receipt URL (async).
    #[arg(long, value_enum, default_value_t = crate::receiver::Mode::Sync)]
    mode: crate::receiver::Mode,
}

fn retry_schedule(s: &str) -> Result<RetryPolicy, String> {
    RetryPolicy::parse(s)
}

fn duration(s: &str) -> Result<Duration, String> {
    touchpoint::ledger::parse_duration(s)
}

fn request_timeout(s: &str) -> Result<Duration, String> {
    let t = duration(s)?;
    if t.is_zero() || t > Duration::from_secs(60) {
        return Err("must be between 1ms and 60s".into());
    }
    Ok(t)
}

fn poll_interval(s: &str) -> Result<Duration, String> {
    let t = duration(s)?;
    if t < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(t)
}

fn failure_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err("must be a number above 0 and at most 1".into()),
    }
}

fn cooldown(s: &str) -> Result<Duration, String> {
    let t = duration(s)?;
    if t < Duration::from_secs(1) || t > Duration::from_secs(600) {
        return Err("must be between 1s and 10m".into());
    }
    Ok(t)
}

fn durability(s: &str) -> Result<Durability, String> {
    Durability::parse(s.trim()).ok_or_else(|| "must be process or power-loss".to_owned())
}

#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    Receiver(crate::receiver::ReceiverConfig),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub allow_plain_http: bool,
    pub json_logs: bool,
    pub log_filter: String,
    /// Turn the SSRF guard off (receivers on localhost in the quick start).
    pub allow_private_networks: bool,
    pub dispatcher: DispatcherConfig,
    pub durability: Durability,
}

impl From<ServeArgs> for Config {
    fn from(a: ServeArgs) -> Config {
        let mut dispatcher = DispatcherConfig::default();
        if let Some(retry) = a.retry_schedule {
            dispatcher.retry = retry;
        }
        if let Some(t) = a.request_timeout {
            dispatcher.request_timeout = t;
        }
        if let Some(n) = a.concurrency {
            dispatcher.per_touchpoint_concurrency = usize::from(n);
        }
        if let Some(t) = a.receipt_poll_interval {
            dispatcher.receipt_poll_interval = t;
        }
        if let Some(n) = a.max_receives {
            dispatcher.max_stalls = n;
        }
        if let Some(r) = a.breaker_failure_ratio {
            dispatcher.health.failure_ratio = r;
        }
        if let Some(n) = a.breaker_min_requests {
            dispatcher.health.min_requests = n;
        }
        if let Some(n) = a.breaker_unreachable {
            dispatcher.health.unreachable_in_a_row = n;
        }
        if let Some(t) = a.breaker_cooldown {
            dispatcher.health.cooldown = t;
            dispatcher.health.max_cooldown = dispatcher.health.max_cooldown.max(t);
        }
        Config {
            listen: a.listen,
            data_dir: a.data_dir,
            allow_plain_http: a.allow_plain_http,
            json_logs: a.log_format == LogFormat::Json,
            log_filter: a.log,
            allow_private_networks: a.allow_private_networks,
            dispatcher,
            durability: a.durability,
        }
    }
}

/// Reads the command line (`args` with the program name first) and each flag's environment
/// variable. `Err` is clap's: `--help` and `--version` too, which print and exit 0
/// ([`clap::Error::exit`]); anything else it refuses exits 2 with the reason and the usage.
pub fn parse<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use std::ffi::OsString;
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let program = args.first().cloned().unwrap_or_else(|| "touchpoint".into());
    let rest = || args.iter().skip(2).cloned();
    let serve = |a: Vec<OsString>| -> Result<Command, clap::Error> {
        Ok(Command::Serve(Box::new(
            ServeCli::try_parse_from(a)?.serve.into(),
        )))
    };
    match args.get(1).and_then(|a| a.to_str()) {
        Some("receiver") => {
            let r = ReceiverCli::try_parse_from(
                std::iter::once(OsString::from("touchpoint receiver")).chain(rest()),
            )?
            .receiver;
            Ok(Command::Receiver(crate::receiver::ReceiverConfig {
                listen: r.listen,
                token: r.token.filter(|t| !t.is_empty()),
                mode: r.mode,
            }))
        }
        Some("serve") => serve(std::iter::once(program).chain(rest()).collect()),
        Some("help") => serve(vec![program, "--help".into()]),
        _ => serve(args),
    }
}

/// The environment variable of the flag a refusal names, if it has one: the bad value may have
/// come from there, so the message names both.
pub fn variable_named_in(e: &clap::Error) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let cli = ServeCli::command();
    let found = cli
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(a: &[&str]) -> Result<Command, clap::Error> {
        parse(std::iter::once("touchpoint").chain(a.iter().copied()))
    }

    fn serve(a: &[&str]) -> Config {
        match parse_args(a).unwrap() {
            Command::Serve(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_with_and_without_the_serve_subcommand() {
        let c = serve(&["--listen", "127.0.0.1:0", "--data-dir=/tmp/x"]);
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let c = serve(&[
            "serve",
            "--retry-schedule",
            "1s,2s",
            "--request-timeout",
            "2s",
        ]);
        assert_eq!(c.dispatcher.retry.waits.len(), 2);
        assert_eq!(c.dispatcher.request_timeout, Duration::from_secs(2));
        let c = serve(&[
            "--durability",
            "power-loss",
            "--log-format",
            "json",
            "--concurrency",
            "16",
        ]);
        assert_eq!(c.durability, Durability::PowerLoss);
        assert!(c.json_logs);
        assert_eq!(c.dispatcher.per_touchpoint_concurrency, 16);
        let c = serve(&[
            "--allow-private-networks",
            "true",
            "--allow-plain-http",
            "false",
        ]);
        assert!(c.allow_private_networks && !c.allow_plain_http);
        match parse_args(&["receiver", "--mode", "async", "--token", "t0k"]).unwrap() {
            Command::Receiver(r) => {
                assert_eq!(r.mode, crate::receiver::Mode::Async);
                assert_eq!(r.token.as_deref(), Some("t0k"));
                assert_eq!(r.listen.port(), 9000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_what_it_does_not_understand_naming_it() {
        for bad in [
            &["--listen", "nowhere"][..],
            &["--listen"],
            &["--frobnicate"],
            &["--log-format", "xml"],
            &["--retry-schedule", "soon"],
            &["--durability", "forever"],
            &["--request-timeout", "61s"],
            &["--request-timeout", "0s"],
            &["--receipt-poll-interval", "10ms"],
            &["--concurrency", "0"],
            &["--max-receives", "1"],
            &["--allow-private-networks", "perhaps"],
            &["receiver", "--mode", "sometimes"],
            &["receiver", "--request-timeout", "5s"],
            &["--log", ""],
        ] {
            let err = parse_args(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            let name = bad.iter().find(|a| a.starts_with("--")).unwrap();
            assert!(
                err.to_string().contains(name.trim_start_matches('-')),
                "{bad:?}: {err}"
            );
        }
        let err = parse_args(&["--allow-plain-http", "perhaps"]).unwrap_err();
        assert_eq!(
            variable_named_in(&err).as_deref(),
            Some("TOUCHPOINT_ALLOW_PLAIN_HTTP")
        );
        assert_eq!(
            variable_named_in(&parse_args(&["--bogus"]).unwrap_err()),
            None
        );
        for asks in [&["--help"][..], &["-h"], &["help"], &["--version"], &["-V"]] {
            assert_eq!(parse_args(asks).unwrap_err().exit_code(), 0, "{asks:?}");
        }
    }
}
