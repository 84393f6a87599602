//! Configuration read once per cold start from the environment, and the SDK clients built
//! from it.

use std::time::Duration;

/// Names of the resources, as the SAM template passes them to each function.
#[derive(Clone, Debug)]
pub struct AwsNames {
    pub touchpoints_table: String,
    pub delivery_table: String,
    pub dispatch_queue_url: Option<String>,
    pub results_queue_url: Option<String>,
    pub schedule_group: Option<String>,
    pub poller_arn: Option<String>,
    pub scheduler_role_arn: Option<String>,
    /// How long delivery records are kept (DynamoDB TTL).
    pub retention: Duration,
    /// When a receiver is taken for down and its touchpoint paused: read with the names, so
    /// that every function (the dispatcher, the poller, the admin API's test sends) judges a
    /// receiver alike.
    pub breaker: touchpoint::health::HealthPolicy,
}

/// The one reader of the functions' environment: every Lambda refuses the same garbage the
/// same way, naming the variable (a cold start that fails loudly beats a setting silently
/// replaced by its default). Unset and blank read alike.
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
}

/// The process environment.
pub fn process_env() -> Env<fn(&str) -> Option<String>> {
    Env::new(|name| std::env::var(name).ok())
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// An environment answered by `lookup` (tests pass a map).
    pub fn new(lookup: F) -> Env<F> {
        Env { lookup }
    }

    pub fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &str) -> Result<String, String> {
        self.optional(name)
            .ok_or_else(|| format!("{name} is not set"))
    }

    /// `true` or `false` (any case); anything else is refused.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, String> {
        match self
            .optional(name)
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(format!("{name} must be true or false")),
        }
    }

    /// A whole number of at least `min`.
    pub fn count(&self, name: &str, default: u64, min: u64) -> Result<u64, String> {
        match self.optional(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| format!("{name} must be a whole number of at least {min}")),
        }
    }
}

impl AwsNames {
    /// Reads `TOUCHPOINTS_TABLE`, `DELIVERY_TABLE` (required) and `DISPATCH_QUEUE_URL`,
    /// `RESULTS_QUEUE_URL`, `SCHEDULE_GROUP`, `RECEIPT_POLLER_ARN`, `SCHEDULER_ROLE_ARN`,
    /// `RETENTION_DAYS` (default 30), and the circuit breaker's `BREAKER_FAILURE_RATIO` (0.9),
    /// `BREAKER_MIN_REQUESTS` (20), `BREAKER_UNREACHABLE` (10), `BREAKER_COOLDOWN_SECONDS`
    /// (60, at most 600).
    pub fn from_env() -> Result<AwsNames, String> {
        Self::read(&process_env())
    }

    pub fn read<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<AwsNames, String> {
        let days = env.count("RETENTION_DAYS", 30, 1)?;
        Ok(AwsNames {
            touchpoints_table: env.required("TOUCHPOINTS_TABLE")?,
            delivery_table: env.required("DELIVERY_TABLE")?,
            dispatch_queue_url: env.optional("DISPATCH_QUEUE_URL"),
            results_queue_url: env.optional("RESULTS_QUEUE_URL"),
            schedule_group: env.optional("SCHEDULE_GROUP"),
            poller_arn: env.optional("RECEIPT_POLLER_ARN"),
            scheduler_role_arn: env.optional("SCHEDULER_ROLE_ARN"),
            retention: Duration::from_secs(days * 86_400),
            breaker: breaker_policy(env)?,
        })
    }
}

fn breaker_policy<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<touchpoint::health::HealthPolicy, String> {
    let mut p = touchpoint::health::HealthPolicy::default();
    if let Some(r) = env.optional("BREAKER_FAILURE_RATIO") {
        p.failure_ratio = r
            .parse::<f64>()
            .ok()
            .filter(|r| *r > 0.0 && *r <= 1.0)
            .ok_or("BREAKER_FAILURE_RATIO must be a number above 0 and at most 1")?;
    }
    let small = |name: &str, default: u32| -> Result<u32, String> {
        u32::try_from(env.count(name, u64::from(default), 1)?)
            .map_err(|_| format!("{name} is too large"))
    };
    p.min_requests = small("BREAKER_MIN_REQUESTS", p.min_requests)?;
    p.unreachable_in_a_row = small("BREAKER_UNREACHABLE", p.unreachable_in_a_row)?;
    let cooldown = env.count("BREAKER_COOLDOWN_SECONDS", p.cooldown.as_secs(), 1)?;
    if cooldown > 600 {
        return Err("BREAKER_COOLDOWN_SECONDS must be at most 600".into());
    }
    p.cooldown = Duration::from_secs(cooldown);
    Ok(p)
}

/// What the functions read from their environment besides resource names.
#[derive(Clone, Debug)]
pub struct FunctionSettings {
    pub names: AwsNames,
    /// `ALLOW_PRIVATE_NETWORKS` (default false: the SSRF guard is on).
    pub allow_private_networks: bool,
    /// `ALLOW_PLAIN_HTTP` (default false: touchpoint URLs must be https).
    pub allow_plain_http: bool,
    /// `RETRY_SCHEDULE` (default: the dispatcher's).
    pub retry: Option<touchpoint::ledger::RetryPolicy>,
    /// `MAX_RECEIVES` (default 10, at least 2): deliveries without progress before the
    /// dispatcher fails what remains.
    pub max_receives: u32,
    /// `DEAD_LETTER_QUEUE_URL`: where unreadable dispatches go with their reason.
    pub dead_letter_queue_url: Option<String>,
}

impl FunctionSettings {
    pub fn from_env() -> Result<FunctionSettings, String> {
        Self::read(&process_env())
    }

    pub fn read<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<FunctionSettings, String> {
        let retry = env
            .optional("RETRY_SCHEDULE")
            .map(|s| {
                touchpoint::ledger::RetryPolicy::parse(&s)
                    .map_err(|e| format!("RETRY_SCHEDULE: {e}"))
            })
            .transpose()?;
        let max_receives = env.count("MAX_RECEIVES", 10, 2)?;
        Ok(FunctionSettings {
            names: AwsNames::read(env)?,
            allow_private_networks: env.flag("ALLOW_PRIVATE_NETWORKS", false)?,
            allow_plain_http: env.flag("ALLOW_PLAIN_HTTP", false)?,
            retry,
            max_receives: u32::try_from(max_receives)
                .map_err(|_| "MAX_RECEIVES is too large".to_owned())?,
            dead_letter_queue_url: env.optional("DEAD_LETTER_QUEUE_URL"),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env::new(move |name| map.get(name).cloned())
    }

    const TABLES: [(&str, &str); 2] = [("TOUCHPOINTS_TABLE", "t"), ("DELIVERY_TABLE", "d")];

    #[test]
    fn defaults_when_only_the_tables_are_named() {
        let s = FunctionSettings::read(&env(&TABLES)).unwrap();
        assert!(!s.allow_private_networks && !s.allow_plain_http);
        assert_eq!(s.max_receives, 10);
        assert!(s.retry.is_none() && s.dead_letter_queue_url.is_none());
        assert_eq!(s.names.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(s.names.breaker, touchpoint::health::HealthPolicy::default());
    }

    #[test]
    fn garbage_is_refused_naming_the_variable() {
        for (name, value) in [
            ("MAX_RECEIVES", "lots"),
            ("MAX_RECEIVES", "1"),
            ("MAX_RECEIVES", "-3"),
            ("ALLOW_PRIVATE_NETWORKS", "yes"),
            ("ALLOW_PLAIN_HTTP", "1"),
            ("RETRY_SCHEDULE", "soon"),
            ("RETENTION_DAYS", "0"),
            ("BREAKER_FAILURE_RATIO", "1.5"),
            ("BREAKER_FAILURE_RATIO", "0"),
            ("BREAKER_MIN_REQUESTS", "0"),
            ("BREAKER_UNREACHABLE", "many"),
            ("BREAKER_COOLDOWN_SECONDS", "601"),
        ] {
            let mut pairs = TABLES.to_vec();
            pairs.push((name, value));
            let err = FunctionSettings::read(&env(&pairs)).unwrap_err();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
        let err = FunctionSettings::read(&env(&TABLES[..1])).unwrap_err();
        assert_eq!(err, "DELIVERY_TABLE is not set");
    }

    #[test]
    fn values_are_read_trimmed_and_flags_in_any_case() {
        let mut pairs = TABLES.to_vec();
        pairs.extend([
            ("MAX_RECEIVES", " 4 "),
            ("ALLOW_PRIVATE_NETWORKS", "TRUE"),
            ("ALLOW_PLAIN_HTTP", "false"),
            ("DEAD_LETTER_QUEUE_URL", "  "),
        ]);
        let s = FunctionSettings::read(&env(&pairs)).unwrap();
        assert_eq!(s.max_receives, 4);
        assert!(s.allow_private_networks && !s.allow_plain_http);
        assert!(s.dead_letter_queue_url.is_none(), "blank reads as unset");
    }
}

/// Attempts of one SDK call (throttles, 5xx, timeouts), adaptive.
pub const SDK_MAX_ATTEMPTS: u32 = 5;
pub const SDK_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of an SDK call at most.
pub const SDK_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// One SDK call, its retries included, at most.
pub const SDK_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The SDK clients of one process.
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub scheduler: aws_sdk_scheduler::Client,
}

impl Clients {
    /// Builds the clients from the default provider chain (and `AWS_ENDPOINT_URL`, which the
    /// tests point at a local moto server).
    pub async fn from_env() -> Clients {
        Self::build(None).await
    }

    /// The clients of [`Clients::from_env`] sent to an explicit endpoint (a local emulator such
    /// as moto), whatever `AWS_ENDPOINT_URL` says.
    pub async fn with_endpoint(endpoint: &str) -> Clients {
        Self::build(Some(endpoint)).await
    }

    async fn build(endpoint: Option<&str>) -> Clients {
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        // The SDK's hyper client on rustls with ring, the crypto library the outbound client
        // uses too, instead of its default on aws-lc: one crypto library per binary.
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        // Adaptive retries (the client slows down when DynamoDB throttles it) and explicit
        // timeouts: no call waits forever on a connection that hangs.
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(https)
            .retry_config(
                aws_config::retry::RetryConfig::adaptive().with_max_attempts(SDK_MAX_ATTEMPTS),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(SDK_CONNECT_TIMEOUT)
                    .operation_attempt_timeout(SDK_ATTEMPT_TIMEOUT)
                    .operation_timeout(SDK_OPERATION_TIMEOUT)
                    .build(),
            );
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        Clients {
            dynamodb: aws_sdk_dynamodb::Client::new(&shared),
            sqs: aws_sdk_sqs::Client::new(&shared),
            scheduler: aws_sdk_scheduler::Client::new(&shared),
        }
    }
}
