//! [`TouchpointStore`] on SQLite.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use touchpoint::ProjectId;
use touchpoint::audit::{AuditAction, AuditEntry, AuditFilter};
use touchpoint::clock::Millis;
use touchpoint::ids::TouchpointId;
use touchpoint::model::{
    CampaignRef, CampaignState, ManualPause, Token, TokenRotation, Touchpoint, TouchpointSpec,
};
use touchpoint::notify::{EventType, Notification, NotificationConfig, NotificationOutbox};
use touchpoint::ports::{ListFilter, StoreError, TouchpointStore, UpdateGuard};

use crate::schema;

/// The file inside the data directory.
pub const DATABASE_FILE: &str = "touchpoint.db";

/// A SQLite database shared by every use case of the process.
#[derive(Clone)]
pub struct SqliteStore {
    /// The writer thread, which owns the connection (see [`SqliteStore::tx`]).
    jobs: std::sync::mpsc::Sender<Job>,
    /// Ledger writes (claims, records, dispatch opens), for the benchmarks' writes-per-batch.
    writes: Arc<AtomicU64>,
    queue_ready: Arc<tokio::sync::Notify>,
    results_ready: Arc<tokio::sync::Notify>,
    notifications: Arc<tokio::sync::Notify>,
}

/// What a committed write survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = NORMAL` in WAL mode: a commit survives the process dying (`kill -9`, a
    /// panic, an OOM kill) but the last commits before a power loss or an OS crash may be lost
    /// (the database stays consistent). The default.
    #[default]
    Process,
    /// `synchronous = FULL`: every commit is synced to disk before it is answered, so it also
    /// survives a power loss; costs an fsync per group commit.
    PowerLoss,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Durability> {
        match s.trim() {
            "process" | "normal" => Some(Durability::Process),
            "power-loss" | "full" => Some(Durability::PowerLoss),
            _ => None,
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            Durability::Process => "NORMAL",
            Durability::PowerLoss => "FULL",
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and migrates it, with the default
    /// durability.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(data_dir, Durability::default())
    }

    /// [`SqliteStore::open`] with a chosen durability.
    pub fn open_with(data_dir: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(data_dir.join(DATABASE_FILE)).map_err(StoreError::backend)?;
        Self::setup(conn, durability)
    }

    /// A private in-memory database, for tests and throwaway runs.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        Self::setup(
            Connection::open_in_memory().map_err(StoreError::backend)?,
            Durability::default(),
        )
    }

    /// The `synchronous` setting in force (1 NORMAL, 2 FULL), as SQLite reports it.
    pub async fn synchronous(&self) -> Result<i64, StoreError> {
        self.tx(|tx| {
            tx.query_row("PRAGMA synchronous", [], |r| r.get(0))
                .map_err(StoreError::backend)
        })
        .await
    }

    fn setup(mut conn: Connection, durability: Durability) -> Result<SqliteStore, StoreError> {
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {};
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
            durability.pragma()
        ))
        .map_err(StoreError::backend)?;
        schema::migrate(&mut conn).map_err(StoreError::backend)?;
        // Every statement goes through the cache (see [`Cached`]); room for all of them.
        conn.set_prepared_statement_cache_capacity(128);
        Ok(SqliteStore {
            jobs: start_writer(conn)?,
            writes: Arc::new(AtomicU64::new(0)),
            queue_ready: Arc::new(tokio::sync::Notify::new()),
            results_ready: Arc::new(tokio::sync::Notify::new()),
            notifications: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Ledger writes made by this process so far.
    pub fn ledger_writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn writes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.writes)
    }

    /// Wakes when a dispatch is queued.
    pub fn queue_ready(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.queue_ready)
    }

    /// Wakes when final results wait to be published.
    pub fn results_ready(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.results_ready)
    }

    pub(crate) fn notify_queue(&self) {
        self.queue_ready.notify_one();
    }

    pub(crate) fn notify_results(&self) {
        self.results_ready.notify_one();
    }

    /// Runs `f` as one atomic unit on the writer thread and answers once it is committed.
    /// Units queued at the same time share a transaction (group commit), each inside its own
    /// savepoint: a unit that fails or panics is rolled back alone, and none is answered
    /// before the transaction holding it is committed.
    pub(crate) async fn tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |tx: &Transaction<'_>| {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx)))
                .unwrap_or_else(|_| Err(StoreError::Backend("a store operation panicked".into())));
            let ok = out.is_ok();
            let reply: Reply = Box::new(move |committed: Result<(), String>| {
                let _ = answer.send(
                    committed
                        .map_err(|e| StoreError::Backend(e.into()))
                        .and(out),
                );
            });
            (ok, reply)
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Backend("the store's writer thread has stopped".into()))?;
        answered.await.map_err(|_| {
            StoreError::Backend("the store could not run the operation (see the log)".into())
        })?
    }
}

/// One unit of work: runs inside the group's transaction, says whether to keep its changes,
/// and leaves the answer to send once the group's fate is known.
type Job = Box<dyn FnOnce(&Transaction<'_>) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// At most this many units share a transaction.
const GROUP: usize = 64;

/// Starts the thread that owns `conn` and runs every unit of work; it ends when the last
/// handle to the store is dropped.
fn start_writer(mut conn: Connection) -> Result<std::sync::mpsc::Sender<Job>, StoreError> {
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("touchpoint-sqlite".into())
        .spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut group = vec![first];
                while group.len() < GROUP {
                    match queue.try_recv() {
                        Ok(job) => group.push(job),
                        Err(_) => break,
                    }
                }
                run_group(&mut conn, group);
            }
        })
        .map_err(StoreError::backend)?;
    Ok(jobs)
}

fn run_group(conn: &mut Connection, group: Vec<Job>) {
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            // Nothing ran; dropping the units answers their callers with an error.
            tracing::error!(error = %e, units = group.len(), "cannot begin a transaction");
            return;
        }
    };
    let mut replies = Vec::with_capacity(group.len());
    let mut failed: Option<String> = None;
    for job in group {
        // Through the statement cache: parsing these for every unit was a tenth of the
        // writer's time with many small units (one-user dispatches).
        if let Err(e) = tx.execute_cached("SAVEPOINT unit", []) {
            failed.get_or_insert(e.to_string());
        }
        let (keep, reply) = job(&tx);
        let end = if keep {
            tx.execute_cached("RELEASE unit", [])
        } else {
            tx.execute_cached("ROLLBACK TO unit", [])
                .and_then(|_| tx.execute_cached("RELEASE unit", []))
        };
        if let Err(e) = end {
            failed.get_or_insert(e.to_string());
        }
        replies.push(reply);
    }
    let committed = match failed {
        Some(e) => Err(e),
        None => tx.commit().map_err(|e| e.to_string()),
    };
    for reply in replies {
        reply(committed.clone());
    }
}

const COLUMNS: &str = "project_id, id, enabled, version, spec, token, created_at, updated_at, previous_token, overlap_until, paused_since, paused_reason";

/// Statements through the connection's statement cache. The ledger runs the same SQL for
/// every batch; parsing it again each time was about a sixth of the CPU at batch size 1.
pub(crate) trait Cached {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}

/// A row without its spaces; [`load_spaces`] fills them in.
fn row_to_touchpoint(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Touchpoint, StoreError>> {
    let spec: String = row.get(4)?;
    let token: Option<String> = row.get(5)?;
    let spec: TouchpointSpec = match serde_json::from_str(&spec) {
        Ok(s) => s,
        Err(e) => return Ok(Err(StoreError::backend(e))),
    };
    Ok(Ok(Touchpoint {
        project_id: row.get(0)?,
        id: row.get::<_, String>(1)?.into(),
        enabled: row.get(2)?,
        version: row.get::<_, i64>(3)? as u64,
        spec,
        token: token.map(Token::new),
        rotation: row
            .get::<_, Option<i64>>(9)?
            .map(|until| -> rusqlite::Result<TokenRotation> {
                Ok(TokenRotation {
                    previous: row.get::<_, Option<String>>(8)?.map(Token::new),
                    until,
                })
            })
            .transpose()?,
        paused: row
            .get::<_, Option<i64>>(10)?
            .map(|since| -> rusqlite::Result<ManualPause> {
                Ok(ManualPause {
                    since,
                    reason: row.get(11)?,
                })
            })
            .transpose()?,
        space_ids: Vec::new(),
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
    }))
}

/// Writes an audit entry in the unit of work of the change it describes.
fn write_audit(tx: &Transaction<'_>, e: &AuditEntry) -> Result<(), StoreError> {
    let changes = serde_json::to_string(&e.changes).map_err(StoreError::backend)?;
    tx.execute_cached(
        "INSERT INTO audit_log (project_id, entry_id, at, actor, action, touchpoint_id, target, changes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            e.project_id,
            e.id(),
            e.at,
            e.actor,
            e.action.as_str(),
            e.touchpoint_id.as_deref(),
            e.target,
            changes
        ],
    )
    .map_err(backend)?;
    Ok(())
}

fn audit_rows(
    tx: &Transaction<'_>,
    project: ProjectId,
    filter: &AuditFilter,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT at, entry_id, actor, action, touchpoint_id, target, changes FROM audit_log
             WHERE project_id = ?1
               AND (?2 IS NULL OR touchpoint_id = ?2)
               AND (?3 IS NULL OR at >= ?3)
               AND (?4 IS NULL OR entry_id < ?4)
             ORDER BY entry_id DESC LIMIT ?5",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            params![
                project,
                filter.touchpoint_id.as_deref(),
                filter.since,
                filter.before_id,
                filter.limit as i64
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, String>(6)?,
                ))
            },
        )
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    rows.into_iter()
        .map(
            |(at, entry_id, actor, action, touchpoint_id, target, changes)| {
                let seq = entry_id
                    .split_once('-')
                    .and_then(|(_, seq)| u64::from_str_radix(seq, 16).ok())
                    .unwrap_or_default();
                Ok(AuditEntry {
                    project_id: project,
                    at,
                    seq,
                    actor,
                    action: AuditAction::parse(&action).ok_or_else(|| {
                        StoreError::Backend(format!("unknown audit action {action:?}").into())
                    })?,
                    touchpoint_id: touchpoint_id.map(Into::into),
                    target,
                    changes: serde_json::from_str(&changes).map_err(StoreError::backend)?,
                })
            },
        )
        .collect()
}

fn load_spaces(tx: &Transaction<'_>, tp: &mut Touchpoint) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT space_id FROM touchpoint_spaces WHERE project_id = ?1 AND touchpoint_id = ?2 ORDER BY space_id",
        )
        .map_err(backend)?;
    tp.space_ids = stmt
        .query_map(params![tp.project_id, tp.id.as_str()], |r| r.get(0))
        .map_err(backend)?
        .collect::<rusqlite::Result<_>>()
        .map_err(backend)?;
    Ok(())
}

fn query_touchpoints(
    tx: &Transaction<'_>,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Touchpoint>, StoreError> {
    let mut stmt = tx.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(args, row_to_touchpoint)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut tp = row?;
        load_spaces(tx, &mut tp)?;
        out.push(tp);
    }
    Ok(out)
}

fn get_row(
    tx: &Transaction<'_>,
    project: ProjectId,
    id: &TouchpointId,
) -> Result<Option<Touchpoint>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM touchpoints WHERE project_id = ?1 AND id = ?2");
    Ok(query_touchpoints(tx, &sql, &[&project, &id.as_str()])?.pop())
}

fn name_taken(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn spec_json(tp: &Touchpoint) -> Result<String, StoreError> {
    serde_json::to_string(&tp.spec).map_err(StoreError::backend)
}

fn write_spaces(tx: &Transaction<'_>, tp: &Touchpoint) -> Result<(), StoreError> {
    tx.execute_cached(
        "DELETE FROM touchpoint_spaces WHERE project_id = ?1 AND touchpoint_id = ?2",
        params![tp.project_id, tp.id.as_str()],
    )
    .map_err(backend)?;
    let mut stmt = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO touchpoint_spaces (project_id, space_id, touchpoint_id) VALUES (?1, ?2, ?3)",
        )
        .map_err(backend)?;
    for space in &tp.space_ids {
        stmt.execute(params![tp.project_id, space, tp.id.as_str()])
            .map_err(backend)?;
    }
    Ok(())
}

fn campaigns_of(
    tx: &Transaction<'_>,
    project: ProjectId,
    id: &TouchpointId,
) -> Result<Vec<CampaignRef>, StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT campaign_id, name, state, updated_at FROM campaign_refs
             WHERE project_id = ?1 AND touchpoint_id = ?2 ORDER BY campaign_id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![project, id.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    rows.into_iter()
        .map(|(campaign_id, name, state, updated_at)| {
            let state = CampaignState::parse(&state).ok_or_else(|| {
                StoreError::Backend(
                    format!("unknown campaign state {state:?} in the database").into(),
                )
            })?;
            Ok(CampaignRef {
                campaign_id,
                name,
                state,
                updated_at,
            })
        })
        .collect()
}

#[async_trait]
impl TouchpointStore for SqliteStore {
    async fn insert(&self, tp: &Touchpoint, audit: &AuditEntry) -> Result<(), StoreError> {
        let tp = tp.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            let spec = spec_json(&tp)?;
            tx.execute_cached(
                "INSERT INTO touchpoints (project_id, id, name, kind, enabled, version, spec, token, created_at, updated_at, previous_token, overlap_until, paused_since, paused_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    tp.project_id,
                    tp.id.as_str(),
                    tp.spec.name,
                    tp.spec.kind.as_str(),
                    tp.enabled,
                    tp.version as i64,
                    spec,
                    tp.token.as_ref().map(Token::expose),
                    tp.created_at,
                    tp.updated_at,
                    previous_token(&tp),
                    tp.rotation.as_ref().map(|r| r.until),
                    tp.paused.as_ref().map(|p| p.since),
                    tp.paused.as_ref().and_then(|p| p.reason.as_deref())
                ],
            )
            .map_err(|e| {
                if name_taken(&e) {
                    StoreError::NameTaken(tp.spec.name.clone())
                } else {
                    backend(e)
                }
            })?;
            write_spaces(tx, &tp)?;
            write_audit(tx, &audit)
        })
        .await
    }

    async fn get(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<Option<Touchpoint>, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| get_row(tx, project, &id)).await
    }

    async fn list(
        &self,
        project: ProjectId,
        filter: &ListFilter,
    ) -> Result<Vec<Touchpoint>, StoreError> {
        let filter = filter.clone();
        self.tx(move |tx| {
            let kind = filter.kind.map(|k| k.as_str());
            let limit = filter.limit as i64;
            let sql = format!(
                "SELECT {COLUMNS} FROM touchpoints
                 WHERE project_id = ?1
                   AND (?2 IS NULL OR id > ?2)
                   AND (?3 IS NULL OR kind = ?3)
                   AND (?4 IS NULL OR enabled = ?4)
                   AND (?5 IS NULL OR instr(lower(name), lower(?5)) > 0)
                 ORDER BY id LIMIT ?6"
            );
            query_touchpoints(
                tx,
                &sql,
                &[
                    &project,
                    &filter.after_id,
                    &kind,
                    &filter.enabled,
                    &filter.name_contains,
                    &limit,
                ],
            )
        })
        .await
    }

    async fn list_for_space(
        &self,
        project: ProjectId,
        space: &str,
    ) -> Result<Vec<Touchpoint>, StoreError> {
        let space = space.to_owned();
        self.tx(move |tx| {
            let sql = format!(
                "SELECT {} FROM touchpoints t JOIN touchpoint_spaces s
                   ON s.project_id = t.project_id AND s.touchpoint_id = t.id
                 WHERE t.project_id = ?1 AND s.space_id = ?2 AND t.enabled = 1
                 ORDER BY t.id",
                COLUMNS
                    .split(", ")
                    .map(|c| format!("t.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            query_touchpoints(tx, &sql, &[&project, &space])
        })
        .await
    }

    async fn update(
        &self,
        next: &Touchpoint,
        expected_version: u64,
        guard: UpdateGuard,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let next = next.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            let current = get_row(tx, next.project_id, &next.id)?.ok_or(StoreError::NotFound)?;
            if current.version != expected_version {
                return Err(StoreError::VersionConflict {
                    current: current.version,
                });
            }
            match guard {
                UpdateGuard::None => {}
                UpdateGuard::MustBeDisabled if current.enabled => return Err(StoreError::Enabled),
                UpdateGuard::MustBeDisabled => {}
                UpdateGuard::NoBlockingCampaigns => {
                    let blocking: Vec<_> = campaigns_of(tx, next.project_id, &next.id)?
                        .into_iter()
                        .filter(|c| c.state.blocks_disable())
                        .collect();
                    if !blocking.is_empty() {
                        return Err(StoreError::InUse(blocking));
                    }
                }
            }
            let spec = spec_json(&next)?;
            tx.execute_cached(
                "UPDATE touchpoints SET name = ?3, kind = ?4, enabled = ?5, version = ?6, spec = ?7,
                        token = ?8, updated_at = ?9, previous_token = ?10, overlap_until = ?11,
                        paused_since = ?12, paused_reason = ?13
                 WHERE project_id = ?1 AND id = ?2",
                params![
                    next.project_id,
                    next.id.as_str(),
                    next.spec.name,
                    next.spec.kind.as_str(),
                    next.enabled,
                    next.version as i64,
                    spec,
                    next.token.as_ref().map(Token::expose),
                    next.updated_at,
                    previous_token(&next),
                    next.rotation.as_ref().map(|r| r.until),
                    next.paused.as_ref().map(|p| p.since),
                    next.paused.as_ref().and_then(|p| p.reason.as_deref())
                ],
            )
            .map_err(|e| {
                if name_taken(&e) {
                    StoreError::NameTaken(next.spec.name.clone())
                } else {
                    backend(e)
                }
            })?;
            if current.space_ids != next.space_ids {
                write_spaces(tx, &next)?;
            }
            write_audit(tx, &audit)
        })
        .await
    }

    async fn delete(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        expected_version: u64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let audit = audit.clone();
        self.tx(move |tx| {
            let current = get_row(tx, project, &id)?.ok_or(StoreError::NotFound)?;
            if current.version != expected_version {
                return Err(StoreError::VersionConflict {
                    current: current.version,
                });
            }
            if current.enabled {
                return Err(StoreError::Enabled);
            }
            tx.execute_cached(
                "DELETE FROM touchpoints WHERE project_id = ?1 AND id = ?2",
                params![project, id.as_str()],
            )
            .map_err(backend)?;
            write_audit(tx, &audit)
        })
        .await
    }

    async fn campaigns(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<Vec<CampaignRef>, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| campaigns_of(tx, project, &id)).await
    }

    async fn put_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign: &CampaignRef,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let campaign = campaign.clone();
        let audit = audit.clone();
        self.tx(move |tx| {
            let current = get_row(tx, project, &id)?.ok_or(StoreError::NotFound)?;
            if !current.enabled && campaign.state.blocks_disable() {
                return Err(StoreError::Disabled);
            }
            tx.execute_cached(
                "INSERT INTO campaign_refs (project_id, touchpoint_id, campaign_id, name, state, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (project_id, touchpoint_id, campaign_id)
                 DO UPDATE SET name = excluded.name, state = excluded.state, updated_at = excluded.updated_at",
                params![project, id.as_str(), campaign.campaign_id, campaign.name, campaign.state.as_str(), campaign.updated_at],
            )
            .map_err(backend)?;
            write_audit(tx, &audit)
        })
        .await
    }

    async fn delete_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign_id: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let (id, campaign_id) = (id.to_owned(), campaign_id.to_owned());
        let audit = audit.clone();
        self.tx(move |tx| {
            let n = tx
                .execute_cached(
                    "DELETE FROM campaign_refs WHERE project_id = ?1 AND touchpoint_id = ?2 AND campaign_id = ?3",
                    params![project, id.as_str(), campaign_id],
                )
                .map_err(backend)?;
            if n > 0 {
                write_audit(tx, &audit)?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn record_audit(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        let audit = audit.clone();
        self.tx(move |tx| write_audit(tx, &audit)).await
    }

    async fn audit_log(
        &self,
        project: ProjectId,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let filter = filter.clone();
        self.tx(move |tx| audit_rows(tx, project, &filter)).await
    }

    async fn notification_config(
        &self,
        project: ProjectId,
    ) -> Result<Option<NotificationConfig>, StoreError> {
        self.tx(move |tx| {
            tx.query_row(
                "SELECT url, token, events, updated_at, seal_key FROM notification_settings WHERE project_id = ?1",
                params![project],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(backend)?
            .map(|(url, token, events, updated_at, seal_key)| {
                let events: Vec<EventType> = serde_json::from_str(&events).map_err(StoreError::backend)?;
                Ok(NotificationConfig {
                    url,
                    token: Token::new(token),
                    events,
                    updated_at,
                    seal_key: Token::new(seal_key),
                })
            })
            .transpose()
        })
        .await
    }

    async fn put_notification_config(
        &self,
        project: ProjectId,
        config: Option<&NotificationConfig>,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let (config, audit) = (config.cloned(), audit.clone());
        self.tx(move |tx| {
            match &config {
                Some(c) => {
                    let events = serde_json::to_string(&c.events).map_err(StoreError::backend)?;
                    tx.execute(
                        "INSERT INTO notification_settings (project_id, url, token, events, updated_at, seal_key)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (project_id) DO UPDATE SET url = ?2, token = ?3, events = ?4, updated_at = ?5, seal_key = ?6",
                        params![project, c.url, c.token.expose(), events, c.updated_at, c.seal_key.expose()],
                    )
                    .map_err(backend)?;
                }
                None => {
                    tx.execute(
                        "DELETE FROM notification_settings WHERE project_id = ?1",
                        params![project],
                    )
                    .map_err(backend)?;
                }
            }
            write_audit(tx, &audit)
        })
        .await
    }
}

#[async_trait]
impl NotificationOutbox for SqliteStore {
    /// The seal is not kept: only this process writes the table.
    async fn put(
        &self,
        n: &Notification,
        attempt: u32,
        due_at: Millis,
        _seal: &str,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(n).map_err(StoreError::backend)?;
        let id = n.id.clone();
        let waiting = self.notifications_waiting();
        self.tx(move |tx| {
            // The same occurrence twice (two processes saw it): kept once.
            tx.execute(
                "INSERT INTO notification_outbox (id, body, attempt, due_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET attempt = ?3, due_at = ?4 WHERE ?3 > 0",
                params![id, body, attempt, due_at],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await?;
        waiting.notify_one();
        Ok(())
    }
}

impl SqliteStore {
    /// Notifications due at `now`, at most `limit`, each hidden for `hide_ms` while it is
    /// sent (a process that stops meanwhile leaves it to come back then): (attempt, notification).
    pub async fn due_notifications(
        &self,
        now: Millis,
        hide_ms: Millis,
        limit: usize,
    ) -> Result<Vec<(u32, Notification)>, StoreError> {
        self.tx(move |tx| {
            let rows: Vec<(String, String, u32)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id, body, attempt FROM notification_outbox WHERE due_at <= ?1
                         ORDER BY due_at LIMIT ?2",
                    )
                    .map_err(backend)?;
                stmt.query_map(params![now, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?
            };
            let mut due = Vec::new();
            for (id, body, attempt) in rows {
                tx.execute(
                    "UPDATE notification_outbox SET due_at = ?2 WHERE id = ?1",
                    params![id, now.saturating_add(hide_ms)],
                )
                .map_err(backend)?;
                match serde_json::from_str::<Notification>(&body) {
                    Ok(n) => due.push((attempt, n)),
                    Err(e) => {
                        tracing::error!(notification = %id, error = %e, "unreadable notification dropped");
                        tx.execute("DELETE FROM notification_outbox WHERE id = ?1", params![id])
                            .map_err(backend)?;
                    }
                }
            }
            Ok(due)
        })
        .await
    }

    /// When the next notification is due (`None`: none waits).
    pub async fn next_notification_at(&self) -> Result<Option<Millis>, StoreError> {
        self.tx(|tx| {
            tx.query_row("SELECT MIN(due_at) FROM notification_outbox", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map_err(backend)
        })
        .await
    }

    /// A notification sent, or given up on.
    pub async fn notification_done(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| {
            tx.execute("DELETE FROM notification_outbox WHERE id = ?1", params![id])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    /// The project's notification settings with their token (tests).
    pub async fn notification_config_for_test(
        &self,
        project: ProjectId,
    ) -> Option<NotificationConfig> {
        self.notification_config(project).await.ok().flatten()
    }

    /// Wakes the notification sender when one is put.
    pub fn notifications_waiting(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.notifications)
    }
}

fn previous_token(tp: &Touchpoint) -> Option<&str> {
    tp.rotation
        .as_ref()
        .and_then(|r| r.previous.as_ref())
        .map(Token::expose)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn units_sharing_a_transaction_keep_or_lose_only_their_own_changes() {
        let store = SqliteStore::in_memory().unwrap();
        store
            .tx(|tx| {
                tx.execute_batch("CREATE TABLE t (n INTEGER NOT NULL)")
                    .map_err(backend)
            })
            .await
            .unwrap();
        let mut set = tokio::task::JoinSet::new();
        for n in 0..300i64 {
            let s = store.clone();
            set.spawn(async move {
                let out = s
                    .tx(move |tx| {
                        tx.execute_cached("INSERT INTO t (n) VALUES (?1)", [n])
                            .map_err(backend)?;
                        match n % 3 {
                            0 => Err(StoreError::Backend("refused".into())),
                            1 if n % 2 == 0 => panic!("unit {n} panics"),
                            _ => Ok(n),
                        }
                    })
                    .await;
                (n, out)
            });
        }
        let mut kept = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (n, out) = joined.unwrap();
            match out {
                Ok(v) => {
                    assert_eq!(v, n);
                    kept.push(n);
                }
                Err(e) => assert!(n % 3 == 0 || n % 3 == 1, "unit {n} failed: {e}"),
            }
        }
        kept.sort_unstable();
        let expected: Vec<i64> = (0..300)
            .filter(|n| n % 3 == 2 || (n % 3 == 1 && n % 2 == 1))
            .collect();
        assert_eq!(kept, expected);
        let stored: Vec<i64> = store
            .tx(|tx| {
                let mut stmt = tx.prepare("SELECT n FROM t ORDER BY n").map_err(backend)?;
                stmt.query_map([], |r| r.get(0))
                    .map_err(backend)?
                    .collect::<Result<Vec<i64>, _>>()
                    .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(stored, expected, "only the units that succeeded left rows");
    }
}
