//! Schema migrations, applied in order at start-up and tracked in `PRAGMA user_version`.

use rusqlite::Connection;

/// Each entry moves the schema one version up. Never edit a released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: touchpoints, their authorized spaces, and the campaigns that reference them.
    "CREATE TABLE touchpoints (
         project_id INTEGER NOT NULL,
         id         TEXT    NOT NULL,
         name       TEXT    NOT NULL,
         kind       TEXT    NOT NULL,
         enabled    INTEGER NOT NULL,
         version    INTEGER NOT NULL,
         spec       TEXT    NOT NULL,
         token      TEXT,
         created_at INTEGER NOT NULL,
         updated_at INTEGER NOT NULL,
         PRIMARY KEY (project_id, id),
         UNIQUE (project_id, name)
     ) WITHOUT ROWID;
     CREATE TABLE touchpoint_spaces (
         project_id    INTEGER NOT NULL,
         space_id      TEXT    NOT NULL,
         touchpoint_id TEXT    NOT NULL,
         PRIMARY KEY (project_id, space_id, touchpoint_id),
         FOREIGN KEY (project_id, touchpoint_id) REFERENCES touchpoints (project_id, id) ON DELETE CASCADE
     ) WITHOUT ROWID;
     CREATE INDEX touchpoint_spaces_by_touchpoint ON touchpoint_spaces (project_id, touchpoint_id);
     CREATE TABLE campaign_refs (
         project_id    INTEGER NOT NULL,
         touchpoint_id TEXT    NOT NULL,
         campaign_id   TEXT    NOT NULL,
         name          TEXT    NOT NULL,
         state         TEXT    NOT NULL,
         updated_at    INTEGER NOT NULL,
         PRIMARY KEY (project_id, touchpoint_id, campaign_id),
         FOREIGN KEY (project_id, touchpoint_id) REFERENCES touchpoints (project_id, id) ON DELETE CASCADE
     ) WITHOUT ROWID;",
    // 2: dispatch intake and the local queue, the delivery ledger, statistics.
    "CREATE TABLE dispatch_intake (
         project_id  INTEGER NOT NULL,
         dispatch_id TEXT    NOT NULL,
         body        TEXT    NOT NULL,
         received_at INTEGER NOT NULL,
         PRIMARY KEY (project_id, dispatch_id)
     ) WITHOUT ROWID;
     CREATE TABLE queue (
         id          INTEGER PRIMARY KEY,
         project_id  INTEGER NOT NULL,
         dispatch_id TEXT    NOT NULL,
         visible_at  INTEGER NOT NULL,
         receives    INTEGER NOT NULL,
         dead        INTEGER NOT NULL DEFAULT 0,
         dead_reason TEXT
     );
     CREATE INDEX queue_visible ON queue (dead, visible_at);
     CREATE TABLE dispatches (
         project_id  INTEGER NOT NULL,
         dispatch_id TEXT    NOT NULL,
         meta        TEXT    NOT NULL,
         users       INTEGER NOT NULL,
         batch_size  INTEGER NOT NULL,
         rejected    TEXT,
         received_at INTEGER NOT NULL,
         PRIMARY KEY (project_id, dispatch_id)
     ) WITHOUT ROWID;
     CREATE TABLE batches (
         order_no         TEXT    PRIMARY KEY,
         project_id       INTEGER NOT NULL,
         dispatch_id      TEXT    NOT NULL,
         batch_index      INTEGER NOT NULL,
         touchpoint_id    TEXT    NOT NULL,
         campaign_id      TEXT    NOT NULL,
         users            INTEGER NOT NULL,
         state            TEXT    NOT NULL,
         attempts         INTEGER NOT NULL,
         lease_until      INTEGER,
         next_attempt_at  INTEGER,
         last_http_status INTEGER,
         last_error       TEXT,
         response_excerpt TEXT,
         sent_at          INTEGER,
         resolved_at      INTEGER,
         succeeded        INTEGER NOT NULL,
         failed           INTEGER NOT NULL,
         results          TEXT,
         published_offset INTEGER
     );
     CREATE INDEX batches_by_dispatch ON batches (project_id, dispatch_id, batch_index);
     CREATE INDEX batches_unpublished ON batches (resolved_at) WHERE state = 'final' AND published_offset IS NULL;
     CREATE INDEX batches_published ON batches (published_offset) WHERE published_offset IS NOT NULL;
     CREATE TABLE stats (
         project_id INTEGER NOT NULL,
         scope      TEXT    NOT NULL,
         key        TEXT    NOT NULL,
         sent       INTEGER NOT NULL,
         succeeded  INTEGER NOT NULL,
         failed     INTEGER NOT NULL,
         PRIMARY KEY (project_id, scope, key)
     ) WITHOUT ROWID;",
    // 3: async receipts (pending users, polling, deadlines), the results outbox, schedules.
    "ALTER TABLE batches ADD COLUMN pending TEXT;
     ALTER TABLE batches ADD COLUMN receipt_url TEXT;
     ALTER TABLE batches ADD COLUMN accepted_at INTEGER;
     ALTER TABLE batches ADD COLUMN deadline INTEGER;
     ALTER TABLE batches ADD COLUMN next_poll_at INTEGER;
     ALTER TABLE batches ADD COLUMN polls INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE batches ADD COLUMN poll_lease_until INTEGER;
     CREATE INDEX batches_due_by_touchpoint ON batches (touchpoint_id, next_poll_at) WHERE state = 'accepted';
     CREATE INDEX batches_due ON batches (next_poll_at) WHERE state = 'accepted';
     CREATE TABLE outbox (
         id               INTEGER PRIMARY KEY,
         order_no         TEXT    NOT NULL,
         results          TEXT    NOT NULL,
         resolved_at      INTEGER NOT NULL,
         published_offset INTEGER
     );
     CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_offset IS NULL;
     INSERT INTO outbox (order_no, results, resolved_at)
         SELECT order_no, coalesce(results, '[]'), coalesce(resolved_at, 0) FROM batches
         WHERE state = 'final' AND published_offset IS NULL;
     CREATE TABLE receipt_schedules (
         project_id    INTEGER NOT NULL,
         touchpoint_id TEXT    NOT NULL,
         PRIMARY KEY (project_id, touchpoint_id)
     ) WITHOUT ROWID;",
    // 4: the publisher reads the last published offset on every round; index it.
    "CREATE INDEX outbox_published ON outbox (published_offset) WHERE published_offset IS NOT NULL;",
    // 5: hour-by-hour counters and failure-reason tallies for the console's delivery view.
    "CREATE TABLE stats_hourly (
         project_id INTEGER NOT NULL,
         scope      TEXT    NOT NULL,
         key        TEXT    NOT NULL,
         hour       INTEGER NOT NULL,
         sent       INTEGER NOT NULL,
         succeeded  INTEGER NOT NULL,
         failed     INTEGER NOT NULL,
         last_order TEXT,
         PRIMARY KEY (project_id, scope, key, hour)
     ) WITHOUT ROWID;
     CREATE TABLE stats_reasons (
         project_id   INTEGER NOT NULL,
         scope        TEXT    NOT NULL,
         key          TEXT    NOT NULL,
         hour         INTEGER NOT NULL,
         reason       TEXT    NOT NULL,
         count        INTEGER NOT NULL,
         sample_order TEXT,
         PRIMARY KEY (project_id, scope, key, hour, reason)
     ) WITHOUT ROWID;",
    // 6: how far a dispatch's delivery has come (a redelivery resumes there).
    "ALTER TABLE dispatches ADD COLUMN progress TEXT;
     ALTER TABLE dispatches ADD COLUMN stalls INTEGER NOT NULL DEFAULT 0;",
    // 7: attempts of a batch lost to a dead sender (they do not count against its retries).
    "ALTER TABLE batches ADD COLUMN lost INTEGER NOT NULL DEFAULT 0;",
    // 8: the audit log, a token rotation's previous token and the end of its overlap, and an
    // admin's pause.
    "CREATE TABLE audit_log (
         project_id    INTEGER NOT NULL,
         entry_id      TEXT    NOT NULL,
         at            INTEGER NOT NULL,
         actor         TEXT    NOT NULL,
         action        TEXT    NOT NULL,
         touchpoint_id TEXT,
         target        TEXT,
         changes       TEXT    NOT NULL,
         PRIMARY KEY (project_id, entry_id)
     ) WITHOUT ROWID;
     CREATE INDEX audit_by_touchpoint ON audit_log (project_id, touchpoint_id, entry_id);
     ALTER TABLE touchpoints ADD COLUMN previous_token TEXT;
     ALTER TABLE touchpoints ADD COLUMN overlap_until INTEGER;
     ALTER TABLE touchpoints ADD COLUMN paused_since INTEGER;
     ALTER TABLE touchpoints ADD COLUMN paused_reason TEXT;",
    // 9: a project's notification settings, and the notifications waiting to be sent.
    "CREATE TABLE notification_settings (
         project_id INTEGER PRIMARY KEY,
         url        TEXT    NOT NULL,
         token      TEXT    NOT NULL,
         events     TEXT    NOT NULL,
         updated_at INTEGER NOT NULL
     );
     CREATE TABLE notification_outbox (
         id         TEXT    PRIMARY KEY,
         body       TEXT    NOT NULL,
         attempt    INTEGER NOT NULL,
         due_at     INTEGER NOT NULL
     );
     CREATE INDEX notification_outbox_due ON notification_outbox (due_at);",
    // 10: the key that seals notifications waiting in a queue (kept for the AWS layout's
    // sake; the local outbox is written by this process alone).
    "ALTER TABLE notification_settings ADD COLUMN seal_key TEXT NOT NULL DEFAULT '';",
];

/// Brings the database up to the newest schema; refuses a database from a newer release.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > MIGRATIONS.len() {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the database has schema version {current}, newer than this release knows ({}); upgrade touchpoint",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
