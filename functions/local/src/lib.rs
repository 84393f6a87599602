//! `touchpoint`: the whole service as one local process on an embedded SQLite store, for
//! development and small installs. No AWS account, no Docker.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use touchpoint::{SystemClock, UrlPolicy};
use touchpoint_admin_api::ApiKeys;
use touchpoint_embedded::{ResultsFile, SqliteStore};
use touchpoint_outbound::Outbound;
use touchpoint_services::{Services, Settings};

mod config;
pub mod receiver;
mod worker;

pub use config::{Command, Config};

/// The file in the data directory where result events are appended.
pub const RESULTS_FILE: &str = "results.jsonl";

/// The file in the data directory that holds the generated admin key.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// Parses the command line and environment, runs, and returns the process exit code.
pub fn main_entry() -> ExitCode {
    let command = match config::parse(std::env::args_os()) {
        Ok(c) => c,
        // --help and --version print and exit 0; anything refused prints why and exits 2.
        Err(e) => {
            let _ = e.print();
            if let Some(variable) = config::variable_named_in(&e) {
                eprintln!("(the flag's value may come from the environment variable {variable})");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match command {
        Command::Receiver(cfg) => {
            init_logging(false, "info");
            match tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(receiver::run(cfg)))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("touchpoint receiver: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(cfg) => {
            init_logging(cfg.json_logs, &cfg.log_filter);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("touchpoint: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(*cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    tracing::error!("{message}");
                    eprintln!("touchpoint: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(json: bool, filter: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let targets: Targets = filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(targets);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .init();
    }
}

/// How callers authenticate, and what the banner tells the person who started the service.
struct Keys {
    keys: ApiKeys,
    banner: String,
}

fn load_keys(cfg: &Config) -> Result<Keys, String> {
    // Read here and parsed at once into digests: the keys are never kept, printed or logged.
    let spec = std::env::var("TOUCHPOINT_API_KEYS")
        .ok()
        .filter(|s| !s.trim().is_empty());
    if let Some(spec) = &spec {
        let keys = ApiKeys::parse(spec).map_err(|e| format!("TOUCHPOINT_API_KEYS: {e}"))?;
        let banner = format!(
            "authenticate with: Authorization: Bearer <one of the {} key(s) in TOUCHPOINT_API_KEYS>",
            keys.len()
        );
        return Ok(Keys { keys, banner });
    }
    let path = cfg.data_dir.join(ADMIN_KEY_FILE);
    let key = match std::fs::read_to_string(&path) {
        Ok(k) => k.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate_key(&path)?,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let keys = ApiKeys::parse(&format!("{key}=1:admin")).map_err(|e| {
        format!(
            "{} holds an unusable key ({e}); delete it to get a new one",
            path.display()
        )
    })?;
    let banner = format!(
        "authenticate with: Authorization: Bearer {key}\n  (admin of project 1; kept in {}; set TOUCHPOINT_API_KEYS to use your own keys)",
        path.display()
    );
    Ok(Keys { keys, banner })
}

/// Creates a random admin key in a file only the owner can read.
fn generate_key(path: &Path) -> Result<String, String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("cannot generate a key: {e}"))?;
    let key: String = format!(
        "tpk_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(key)
}

fn prepare_data_dir(dir: &Path) -> Result<PathBuf, String> {
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    }
    dir.canonicalize()
        .map_err(|e| format!("cannot open the data directory {}: {e}", dir.display()))
}

/// The database holds touchpoint tokens: keep its files readable by the owner only, even in a
/// data directory that existed before with looser permissions.
fn restrict_to_owner(dir: &Path) {
    #[cfg(unix)]
    for name in ["touchpoint.db", "touchpoint.db-wal", "touchpoint.db-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        if path.exists()
            && let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot restrict permissions");
        }
    }
}

async fn serve(mut cfg: Config) -> Result<(), String> {
    cfg.data_dir = prepare_data_dir(&cfg.data_dir)?;
    let store = SqliteStore::open_with(&cfg.data_dir, cfg.durability)
        .map_err(|e| format!("cannot open the store in {}: {e}", cfg.data_dir.display()))?;
    restrict_to_owner(&cfg.data_dir);
    let keys = load_keys(&cfg)?;
    if cfg.allow_plain_http {
        tracing::warn!(
            "plain http:// touchpoint URLs are accepted (TOUCHPOINT_ALLOW_PLAIN_HTTP=true)"
        );
    }
    if cfg.allow_private_networks {
        tracing::warn!(
            "outbound requests may reach loopback and private networks (TOUCHPOINT_ALLOW_PRIVATE_NETWORKS=true); never in production"
        );
    }
    let clock: Arc<dyn touchpoint::Clock> = Arc::new(SystemClock);
    let (recovered_messages, recovered_batches) = store
        .recover_after_restart(clock.now_ms())
        .await
        .map_err(|e| format!("cannot recover the queue: {e}"))?;
    if recovered_messages + recovered_batches > 0 {
        tracing::info!(
            recovered_messages,
            recovered_batches,
            "resuming work left by the previous run"
        );
    }
    let settings = Settings {
        urls: UrlPolicy {
            allow_plain_http: cfg.allow_plain_http,
        },
        ..Settings::default()
    }
    .with_dispatcher(cfg.dispatcher.clone());
    let services = Services::embedded(
        &store,
        Outbound::new(cfg.allow_private_networks)?,
        clock.clone(),
        settings,
    );
    let app = touchpoint_admin_api::router(services.app_state(Arc::new(keys.keys)));
    let dispatcher = services.dispatcher.clone();
    let poller = services.poller.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = Arc::new(worker::Worker {
        store: store.clone(),
        dispatcher,
        clock,
        turn: std::time::Duration::from_secs(120),
    });
    let worker_task = tokio::spawn(worker.run(stop_rx.clone()));
    let results = ResultsFile::new(store.clone(), cfg.data_dir.join(RESULTS_FILE));
    let ticker_task = tokio::spawn(worker::tick_receipts(
        store.clone(),
        poller,
        cfg.dispatcher.receipt_poll_interval,
        stop_rx.clone(),
    ));
    let notifier_task = tokio::spawn(worker::send_notifications(
        store.clone(),
        services.notification_sender.clone(),
        services.clock.clone(),
        stop_rx.clone(),
    ));
    let publisher_task = tokio::spawn(worker::publish_results(results, store.clone(), stop_rx));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let bound: SocketAddr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    // The banner is for whoever started the service; a closed stdout must not stop it.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "touchpoint {}", env!("CARGO_PKG_VERSION"))
        .and_then(|()| writeln!(out, "listening on http://{bound}"))
        .and_then(|()| {
            let mut here = bound;
            if here.ip().is_unspecified() {
                here.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            writeln!(
                out,
                "console: open http://{here}/ and sign in with the key below"
            )
        })
        .and_then(|()| writeln!(out, "data directory: {}", cfg.data_dir.display()))
        .and_then(|()| writeln!(out, "{}", keys.banner))
        .and_then(|()| out.flush());
    drop(out);
    tracing::info!(%bound, data_dir = %cfg.data_dir.display(), "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    let _ = stop_tx.send(true);
    // Batches still in flight are sent again with the same orderNo after the next start.
    worker_task.abort();
    ticker_task.abort();
    notifier_task.abort();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), publisher_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; in-flight requests then finish before the process exits.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
