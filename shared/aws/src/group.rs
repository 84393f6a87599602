//! Checkpoints of one-batch dispatches grouped: one `TransactWriteItems` for the checkpoints an
//! instance makes at once, their counter moves added together.
//!
//! A triggered campaign sends one user per dispatch, and each such dispatch checkpoints once: a
//! transaction of its dispatch record and four counter items (the campaign's and the
//! touchpoint's total and hour row), at two write units an item. The dispatcher Lambda handles
//! the records of an SQS event side by side, so their checkpoints come together: those that
//! arrive within [`WINDOW`] of the first go out as one transaction, each dispatch record with its
//! own condition, and the counters of the dispatches of one campaign and touchpoint moved once
//! by their sum. The counters stay exact: they are moved in the same transaction as the records
//! that count them, which all apply or none do.
//!
//! A checkpoint alone, or in a group that fails, is answered [`Grouped::Alone`]; one whose own
//! condition failed (another delivery of its dispatch checkpointed since) [`Grouped::Refused`].
//! Either way its caller writes it alone, as it always did. Only checkpoints that count no
//! failure go in a group (a failure's reason tallies stay with its own checkpoint).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::TransactWriteItem;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use tokio::sync::oneshot;
use touchpoint::clock::Millis;
use touchpoint::ports::StoreError;

/// How long a group waits for more checkpoints after its first.
pub const WINDOW: Duration = Duration::from_millis(5);
/// How long it waits when it knows how many writers are under way (the dispatcher Lambda's
/// records, [`Groups::participant`]): it goes as soon as every one of them waits in a group or
/// is done, and otherwise once no checkpoint has joined it for this or twice the recent round
/// trip of a group's write or send, whichever is longer (checkpoints of records that finish a
/// store round trip apart still share a group, however many come one after another: a busy
/// store spreads an invocation's records over several of its round trips).
pub const WINDOW_UNDER_WAY: Duration = Duration::from_millis(50);
/// The longest a group waits however slowly the store answers or its checkpoints come.
pub const WINDOW_SLOW: Duration = Duration::from_secs(1);
/// Items of one group's transaction at most (DynamoDB's limit): a dispatch record per
/// checkpoint, and for each distinct campaign and touchpoint its total and its hour rows. A
/// checkpoint that would take a group beyond it starts the next group.
pub const GROUP_ITEMS: usize = 100;

/// Results messages of one `SendMessageBatch` at most (SQS's limit).
const GROUP_MESSAGES: usize = 10;
/// Bytes of the bodies of one `SendMessageBatch` at most (under SQS's 256 KiB for a batch).
const GROUP_MESSAGE_BYTES: usize = 200_000;

/// How a grouped checkpoint went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouped {
    /// Written, with the rest of its group.
    Written,
    /// Not written: the caller writes it alone.
    Alone,
    /// Not written: its own condition failed in the group.
    Refused,
}

/// Users sent, succeeded and failed.
pub type Counts = (i64, i64, i64);

/// What one checkpoint moves on the counters (no failure reasons).
#[derive(Clone, Debug)]
pub struct CounterMove {
    pub project: i64,
    pub campaign: String,
    pub touchpoint: String,
    pub total: Counts,
    pub hours: Vec<HourCounts>,
}

/// One hour's share of a [`CounterMove`], with a batch of the hour for drill-down.
#[derive(Clone, Debug)]
pub struct HourCounts {
    pub hour: Millis,
    pub counts: Counts,
    pub drill: Option<String>,
}

/// Builds the counter updates of one move on one shard (the ledger's).
pub type Counters = Arc<
    dyn Fn(&ScopeMove, u64, Millis) -> Result<Vec<TransactWriteItem>, StoreError> + Send + Sync,
>;

/// The moves of a group on one scope's key (a campaign's or a touchpoint's counters), added
/// together.
#[derive(Clone, Debug)]
pub struct ScopeMove {
    pub project: i64,
    pub scope: &'static str,
    pub key: String,
    pub total: Counts,
    pub hours: Vec<HourCounts>,
}

struct Unit {
    /// The dispatch record's key: one unit per record in a group.
    key: String,
    head: TransactWriteItem,
    moves: CounterMove,
    now: Millis,
    counters: Counters,
    done: oneshot::Sender<Grouped>,
}

#[derive(Default)]
struct Pending {
    generation: u64,
    units: Vec<Unit>,
    /// When its latest checkpoint joined.
    latest: Option<std::time::Instant>,
}

struct Message {
    entry: SendMessageBatchRequestEntry,
    done: oneshot::Sender<Grouped>,
}

#[derive(Default)]
struct Sends {
    generation: u64,
    queue: String,
    messages: Vec<Message>,
    bytes: usize,
    /// When its latest message joined.
    latest: Option<std::time::Instant>,
}

/// The checkpoint groups of one instance (one per DynamoDB ledger, shared by its clones).
pub struct Groups {
    ddb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    window: Duration,
    pending: Mutex<Pending>,
    sends: Mutex<Sends>,
    /// Writers under way ([`Groups::participant`]).
    active: std::sync::atomic::AtomicUsize,
    /// The recent round trip of a group's write (microseconds, smoothed; 0: none yet).
    round_trip_us: std::sync::atomic::AtomicU64,
    /// Transactions that carried a group, and the checkpoints they carried.
    pub transactions: std::sync::atomic::AtomicU64,
    pub grouped: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// Adds the moves together per scope and key: each counter item is named once in a group.
fn merge(moves: &[&CounterMove]) -> Vec<ScopeMove> {
    let mut by_key: BTreeMap<(i64, &'static str, &str), ScopeMove> = BTreeMap::new();
    for m in moves {
        for (scope, key) in [("campaign", &m.campaign), ("touchpoint", &m.touchpoint)] {
            let slot = by_key
                .entry((m.project, scope, key.as_str()))
                .or_insert_with(|| ScopeMove {
                    project: m.project,
                    scope,
                    key: key.clone(),
                    total: (0, 0, 0),
                    hours: Vec::new(),
                });
            slot.total.0 += m.total.0;
            slot.total.1 += m.total.1;
            slot.total.2 += m.total.2;
            for h in &m.hours {
                match slot.hours.iter_mut().find(|x| x.hour == h.hour) {
                    Some(sum) => {
                        sum.counts.0 += h.counts.0;
                        sum.counts.1 += h.counts.1;
                        sum.counts.2 += h.counts.2;
                        // The hour's drill-down names its latest batch.
                        if h.drill.is_some() {
                            sum.drill.clone_from(&h.drill);
                        }
                    }
                    None => slot.hours.push(h.clone()),
                }
            }
        }
    }
    by_key.into_values().collect()
}

/// The items of a group's transaction with `units` (and one more checkpoint's `moves`).
fn items_of(units: &[Unit], more: Option<&CounterMove>) -> usize {
    let all: Vec<&CounterMove> = units.iter().map(|u| &u.moves).chain(more).collect();
    let counters: usize = merge(&all).iter().map(|m| 1 + m.hours.len()).sum();
    all.len() + counters
}

fn random_shard(shards: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: spread by the clock instead.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return u64::from(nanos) % shards.max(1);
    }
    u64::from_le_bytes(bytes) % shards.max(1)
}

impl Groups {
    pub fn new(
        ddb: aws_sdk_dynamodb::Client,
        sqs: aws_sdk_sqs::Client,
        window: Duration,
    ) -> Groups {
        Groups {
            ddb,
            sqs,
            window,
            pending: Mutex::default(),
            sends: Mutex::default(),
            active: Default::default(),
            round_trip_us: Default::default(),
            transactions: Default::default(),
            grouped: Default::default(),
        }
    }

    /// One more writer under way until the guard is dropped (the dispatcher Lambda counts the
    /// records of its invocation).
    pub fn participant(self: &Arc<Self>) -> Participant {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Participant(Arc::clone(self))
    }

    /// Runs `then` once the window of a group started now is over: while writers are under
    /// way, a window after its latest member joined (`latest`: when, `None` once it went),
    /// at most [`WINDOW_SLOW`] after it started.
    fn after_window(
        self: &Arc<Self>,
        latest: impl Fn(&Groups) -> Option<std::time::Instant> + Send + 'static,
        then: impl FnOnce(&Arc<Groups>) + Send + 'static,
    ) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut wait = me.wait();
            loop {
                tokio::time::sleep(wait).await;
                if me.active.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    break;
                }
                let Some(latest) = latest(&me) else { break };
                let until = (latest + me.wait()).min(started + WINDOW_SLOW);
                match until.checked_duration_since(std::time::Instant::now()) {
                    Some(left) if !left.is_zero() => wait = left,
                    _ => break,
                }
            }
            then(&me);
        });
    }

    fn wait(&self) -> Duration {
        if self.active.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            let trip = self
                .round_trip_us
                .load(std::sync::atomic::Ordering::Relaxed);
            WINDOW_UNDER_WAY.max((2 * Duration::from_micros(trip)).min(WINDOW_SLOW))
        } else {
            self.window
        }
    }

    /// Notes how long a group's write took.
    fn took(&self, since: std::time::Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let new = since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        let _ = self.round_trip_us.fetch_update(Relaxed, Relaxed, |old| {
            Some(if old == 0 {
                new
            } else {
                old - old / 4 + new / 4
            })
        });
    }

    /// Sends what is forming now if every writer under way waits in a group.
    fn flush_if_all_wait(self: &Arc<Self>) {
        let active = self.active.load(std::sync::atomic::Ordering::SeqCst);
        if active == 0 {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut sends = self.sends.lock().unwrap_or_else(|p| p.into_inner());
        if pending.units.len() + sends.messages.len() >= active {
            self.flush(&mut pending);
            self.flush_sends(&mut sends);
        }
    }

    /// Writes a checkpoint (`head`, the dispatch record's conditional update, and its counter
    /// moves, which `counters` turns into updates) with the group forming now.
    pub async fn checkpoint(
        self: &Arc<Self>,
        key: &str,
        head: TransactWriteItem,
        moves: CounterMove,
        now: Millis,
        counters: Counters,
    ) -> Grouped {
        let (done, answer) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            // The same dispatch twice (a message delivered twice in one event): not in one
            // transaction, which would name its record twice.
            if pending.units.iter().any(|u| u.key == key) {
                return Grouped::Alone;
            }
            // The group's items with this checkpoint: beyond the limit, the group goes first
            // and this one starts the next; at the limit, it goes with this one.
            let mut items = items_of(&pending.units, Some(&moves));
            if !pending.units.is_empty() && items > GROUP_ITEMS {
                self.flush(&mut pending);
                items = items_of(&[], Some(&moves));
            }
            if pending.units.is_empty() {
                let generation = pending.generation;
                self.after_window(
                    move |me| {
                        let pending = me.pending.lock().unwrap_or_else(|p| p.into_inner());
                        (pending.generation == generation)
                            .then_some(pending.latest)
                            .flatten()
                    },
                    move |me| {
                        let mut pending = me.pending.lock().unwrap_or_else(|p| p.into_inner());
                        if pending.generation == generation {
                            me.flush(&mut pending);
                        }
                    },
                );
            }
            pending.latest = Some(std::time::Instant::now());
            pending.units.push(Unit {
                key: key.to_owned(),
                head,
                moves,
                now,
                counters,
                done,
            });
            if items >= GROUP_ITEMS {
                self.flush(&mut pending);
            }
        }
        self.flush_if_all_wait();
        // A group whose task is gone leaves its checkpoints to their callers.
        answer.await.unwrap_or(Grouped::Alone)
    }

    fn flush(self: &Arc<Self>, pending: &mut Pending) {
        let units = std::mem::take(&mut pending.units);
        pending.generation += 1;
        if units.len() < 2 {
            for u in units {
                let _ = u.done.send(Grouped::Alone);
            }
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move { me.write(units).await });
    }

    /// One transaction for `units`; refused for some of them, once more without those.
    async fn write(&self, mut units: Vec<Unit>) {
        use std::sync::atomic::Ordering::Relaxed;
        for round in 0..2 {
            let moves: Vec<&CounterMove> = units.iter().map(|u| &u.moves).collect();
            let now = units.iter().map(|u| u.now).max().unwrap_or_default();
            let mut items: Vec<TransactWriteItem> = units.iter().map(|u| u.head.clone()).collect();
            let shard = random_shard(crate::delivery::STAT_SHARDS);
            let counters = Arc::clone(&units[0].counters);
            let built: Result<Vec<Vec<TransactWriteItem>>, StoreError> = merge(&moves)
                .iter()
                .map(|m| counters(m, shard, now))
                .collect();
            match built {
                Ok(counters) => items.extend(counters.into_iter().flatten()),
                Err(_) => break,
            }
            let started = std::time::Instant::now();
            let written = crate::delivery::transact_items(&self.ddb, items).await;
            self.took(started);
            let failed = match written {
                Ok(crate::delivery::Tx::Written) => {
                    self.transactions.fetch_add(1, Relaxed);
                    self.grouped.fetch_add(units.len() as u64, Relaxed);
                    for u in units {
                        let _ = u.done.send(Grouped::Written);
                    }
                    return;
                }
                Ok(crate::delivery::Tx::Refused(failed)) => failed,
                Err(e) => {
                    tracing::debug!(error = %e, checkpoints = units.len(), "a group of checkpoints failed: each is written alone");
                    break;
                }
            };
            // The heads come first, in the order of `units`.
            let mut kept = Vec::new();
            for (i, u) in units.into_iter().enumerate() {
                if failed.contains(&i) {
                    let _ = u.done.send(Grouped::Refused);
                } else {
                    kept.push(u);
                }
            }
            units = kept;
            if units.len() < 2 || round == 1 {
                break;
            }
        }
        for u in units {
            let _ = u.done.send(Grouped::Alone);
        }
    }

    /// Sends a results message (a checkpoint's, before it counts them) with the batch forming
    /// now: a checkpoint that goes in a group goes with the others from here on.
    pub async fn send(
        self: &Arc<Self>,
        queue: &str,
        body: &str,
        group_id: &str,
        dedup_id: &str,
    ) -> Grouped {
        if body.len() > GROUP_MESSAGE_BYTES {
            return Grouped::Alone;
        }
        let (done, answer) = oneshot::channel();
        {
            let mut sends = self.sends.lock().unwrap_or_else(|p| p.into_inner());
            if !sends.messages.is_empty()
                && (sends.queue != queue || sends.bytes + body.len() > GROUP_MESSAGE_BYTES)
            {
                self.flush_sends(&mut sends);
            }
            let entry = SendMessageBatchRequestEntry::builder()
                .id(sends.messages.len().to_string())
                .message_body(body)
                .message_group_id(group_id)
                .message_deduplication_id(dedup_id)
                .build();
            let Ok(entry) = entry else {
                return Grouped::Alone;
            };
            if sends.messages.is_empty() {
                sends.queue = queue.to_owned();
                let generation = sends.generation;
                self.after_window(
                    move |me| {
                        let sends = me.sends.lock().unwrap_or_else(|p| p.into_inner());
                        (sends.generation == generation)
                            .then_some(sends.latest)
                            .flatten()
                    },
                    move |me| {
                        let mut sends = me.sends.lock().unwrap_or_else(|p| p.into_inner());
                        if sends.generation == generation {
                            me.flush_sends(&mut sends);
                        }
                    },
                );
            }
            sends.latest = Some(std::time::Instant::now());
            sends.bytes += body.len();
            sends.messages.push(Message { entry, done });
            if sends.messages.len() >= GROUP_MESSAGES {
                self.flush_sends(&mut sends);
            }
        }
        self.flush_if_all_wait();
        answer.await.unwrap_or(Grouped::Alone)
    }

    fn flush_sends(self: &Arc<Self>, sends: &mut Sends) {
        let messages = std::mem::take(&mut sends.messages);
        let queue = std::mem::take(&mut sends.queue);
        sends.generation += 1;
        sends.bytes = 0;
        if messages.len() < 2 {
            for m in messages {
                let _ = m.done.send(Grouped::Alone);
            }
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move { me.send_messages(&queue, messages).await });
    }

    /// One `SendMessageBatch`; a message it did not take is sent alone by its caller.
    async fn send_messages(&self, queue: &str, messages: Vec<Message>) {
        let started = std::time::Instant::now();
        let sent = self
            .sqs
            .send_message_batch()
            .queue_url(queue)
            .set_entries(Some(messages.iter().map(|m| m.entry.clone()).collect()))
            .send()
            .await;
        self.took(started);
        let ok: HashSet<String> = match sent {
            Ok(out) => out.successful().iter().map(|s| s.id().to_owned()).collect(),
            Err(e) => {
                tracing::debug!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), messages = messages.len(), "a batch of results messages failed: each is sent alone");
                HashSet::new()
            }
        };
        for m in messages {
            let outcome = if ok.contains(m.entry.id()) {
                Grouped::Written
            } else {
                Grouped::Alone
            };
            let _ = m.done.send(outcome);
        }
    }
}

/// A writer under way (see [`Groups::participant`]).
pub struct Participant(Arc<Groups>);

impl Drop for Participant {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        // The others may all be waiting now.
        self.0.flush_if_all_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(campaign: &str, hour: Millis) -> Unit {
        Unit {
            key: format!("{campaign}-{hour}"),
            head: TransactWriteItem::builder().build(),
            moves: CounterMove {
                project: 1,
                campaign: campaign.to_owned(),
                touchpoint: "tp_1".to_owned(),
                total: (1, 1, 0),
                hours: vec![HourCounts {
                    hour,
                    counts: (1, 1, 0),
                    drill: None,
                }],
            },
            now: hour,
            counters: Arc::new(|_, _, _| Ok(Vec::new())),
            done: oneshot::channel().0,
        }
    }

    /// A group's transaction names each dispatch record, and each distinct campaign's and
    /// touchpoint's total and hour rows once: 96 one-user dispatches of one campaign and hour
    /// fill DynamoDB's 100 items; each more campaign or hour adds its own rows.
    #[test]
    fn a_group_counts_its_transaction_items_as_the_write_builds_them() {
        let units: Vec<Unit> = (0..96).map(|_| unit("c1", 0)).collect();
        assert_eq!(items_of(&units, None), 96 + 2 * (1 + 1));
        assert_eq!(items_of(&units[..95], Some(&units[95].moves)), 100);
        let units = &units[..94];
        let other = unit("c2", 0);
        assert_eq!(
            items_of(units, Some(&other.moves)),
            95 + 4 + 2,
            "c2's total and hour"
        );
        let later = unit("c1", 3_600_000);
        assert_eq!(
            items_of(units, Some(&later.moves)),
            95 + 4 + 2,
            "the new hour's rows"
        );
    }
}
