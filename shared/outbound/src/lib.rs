//! Outbound HTTP to receivers, receipt URLs and options APIs.
//!
//! One `reqwest` client per process (rustls, keep-alive, no proxy, no redirects). Unless the
//! deployment allows private networks, every destination is checked **at connection time**:
//! IP-literal hosts before the request, names inside the client's resolver, which hands the
//! connector only the addresses it checked — so a name cannot pass the check and then connect
//! somewhere else.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Largest response body read; the rest is left unread. A 500-user sync receipt with long
/// error messages is ~300 KB; this bounds the memory one hostile receiver can take.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether `ip` is a public unicast address a webhook may reach.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || ip.is_multicast()
        || a >= 240) // reserved and broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo tunnels to anywhere
        || s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard prefix
}

/// The IPv4 address carried inside an IPv6 one: mapped (::ffff:a.b.c.d), compatible
/// (::a.b.c.d), NAT64 (64:ff9b::/96 and 64:ff9b:1::/48) or 6to4 (2002:AABB:CCDD::/16).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || (s[5] == 0 && !(s[6] == 0 && s[7] <= 1))) {
        return Some(tail);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] || s[2] == 1) {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// Looks names up. Injectable so tests can return what a hostile DNS server would.
pub trait Lookup: Send + Sync {
    fn lookup(
        &self,
        host: String,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system resolver.
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: String,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Why a destination was refused; found in a failed request's error chain.
#[derive(Debug, thiserror::Error)]
#[error("destination refused: {0}")]
pub struct Refused(pub String);

/// The resolver the client connects through.
struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = Arc::clone(&self.lookup);
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let ips = lookup.lookup(host.clone()).await?;
            if ips.is_empty() {
                return Err(format!("{host} has no addresses").into());
            }
            if !allow_private {
                // One non-public answer refuses the name: a resolver that mixes public and
                // private answers is not trusted with either.
                if let Some(bad) = ips.iter().find(|ip| !is_public(**ip)) {
                    return Err(Box::new(Refused(format!(
                        "{host} resolves to non-public address {bad}"
                    )))
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// How a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The SSRF guard or the URL itself refused it: final, not retried.
    #[error("{0}")]
    Refused(String),
    /// Could not connect (refused, reset, DNS failure): retryable.
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Anything else during the exchange (reset mid-response, protocol error): retryable.
    #[error("request failed: {0}")]
    Transport(String),
}

impl SendError {
    pub fn retryable(&self) -> bool {
        !matches!(self, SendError::Refused(_))
    }
}

/// A response: status, headers that matter, and at most [`MAX_RESPONSE_BYTES`] of the body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// The body was longer than what was read.
    pub truncated: bool,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
}

/// TLS for receivers: rustls on ring (the provider the AWS SDK's client uses too, so each binary
/// links one crypto library), TLS 1.2 and 1.3, the Mozilla roots from `webpki-roots` (a
/// Lambda's image has no system store to trust), HTTP/1.1 only.
#[cfg(feature = "ring")]
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("cannot configure TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A reqwest client builder with this crate's TLS (reqwest has no crypto provider of its own
/// here): for the outbound client, and for the bench and tests that make HTTP calls.
pub fn client_builder() -> Result<reqwest::ClientBuilder, String> {
    let builder = reqwest::Client::builder();
    #[cfg(feature = "ring")]
    let builder = builder.tls_backend_preconfigured(tls_config()?);
    Ok(builder)
}

/// The process's outbound client.
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    allow_private: bool,
}

impl Outbound {
    pub fn new(allow_private: bool) -> Result<Outbound, String> {
        Self::with_lookup(allow_private, Arc::new(SystemLookup))
    }

    pub fn with_lookup(allow_private: bool, lookup: Arc<dyn Lookup>) -> Result<Outbound, String> {
        let client = client_builder()?
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(touchpoint_user_agent())
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(Arc::new(GuardedResolver {
                lookup,
                allow_private,
            }))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Outbound {
            client,
            allow_private,
        })
    }

    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Checks a URL before any connection: scheme, no credentials, and an IP-literal host
    /// (which the resolver never sees) against the guard.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, SendError> {
        let url =
            url::Url::parse(raw).map_err(|e| SendError::Refused(format!("invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SendError::Refused(format!(
                "scheme {} is not allowed",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SendError::Refused(
                "URLs with credentials are not allowed".into(),
            ));
        }
        if !self.allow_private {
            let ip = match url.host() {
                Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                // RFC 6761: `localhost` and every name under it are loopback, whatever a
                // resolver says (some resolve `localhost.` or `x.localhost` differently).
                Some(url::Host::Domain(name)) if is_localhost_name(name) => {
                    return Err(SendError::Refused(format!(
                        "destination refused: {name} is a loopback name"
                    )));
                }
                Some(url::Host::Domain(_)) => None,
                None => return Err(SendError::Refused("the URL has no host".into())),
            };
            if let Some(ip) = ip.filter(|ip| !is_public(*ip)) {
                return Err(SendError::Refused(format!(
                    "destination refused: non-public address {ip}"
                )));
            }
        }
        Ok(url)
    }

    /// POSTs a JSON body. Never follows redirects: a 3xx comes back as a [`Reply`].
    pub async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Reply, SendError> {
        let url = self.check_url(url)?;
        let started = Instant::now();
        let mut req = self
            .client
            .post(url)
            .timeout(timeout)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let mut response = req.send().await.map_err(|e| classify(&e, timeout))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESPONSE_BYTES - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(classify(&e, timeout)),
            }
        }
        Ok(Reply {
            status,
            body,
            truncated,
            retry_after,
            latency: started.elapsed(),
        })
    }
}

fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

fn touchpoint_user_agent() -> String {
    concat!("touchpoint/", env!("CARGO_PKG_VERSION")).to_owned()
}

fn classify(e: &reqwest::Error, timeout: Duration) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return SendError::Refused(refused.to_string());
        }
        source = err.source();
    }
    let detail = error_chain(e);
    if e.is_timeout() {
        SendError::Timeout(timeout)
    } else if e.is_connect() {
        SendError::Connect(detail)
    } else {
        SendError::Transport(detail)
    }
}

/// The error and its causes on one line, without the URL (which may carry secrets in its query).
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        parts.push(err.to_string());
        source = err.source();
    }
    if parts.is_empty() {
        parts.push(e.without_url_ref().to_string());
    }
    parts.join(": ")
}

trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let s = self.to_string();
        match s.find(" for url (") {
            Some(i) => s[..i].to_owned(),
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "::127.0.0.1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(
                !is_public(private.parse().unwrap()),
                "{private} should be refused"
            );
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::808:808",
        ] {
            assert!(
                is_public(public.parse().unwrap()),
                "{public} should be allowed"
            );
        }
    }
}
