//! The limits of a touchpoint held across processes ([`touchpoint::limits`] describes the
//! slots and the shared back-pressure). A process keeps the slots it took over many requests
//! and gives each back after [`IDLE`] without a request, or when its invocation ends
//! ([`super::ReceiverLimits::release_idle`]).
//!
//! Requests to the shared store per slot held: one conditional write to take it (and one read
//! per round of takes), one write per [`LEASE`]/2 of sending to renew it, one write to give it
//! back; one read a [`REFRESH`] while sending, for the back-pressure (shared by the requests
//! that find it stale at once); and one or two writes per overload.
//!
//! How many slots a process holds follows what its requests need: a request takes another
//! slot only when the slots it holds would not come back to it sooner than a take lasts
//! (measured: how long a slot stays out with a request, and how long a round of takes takes),
//! and a round takes enough for the requests waiting then, doubling from one before any slot
//! came back. A touchpoint that answers at once is served by a few slots per process;
//! a slow one gets as many as its requests waiting.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use touchpoint::clock::{Clock, Millis};
use touchpoint::ids::TouchpointId;
use touchpoint::limits::{Cut, Pressure, SharedLimits};
use touchpoint::model::{ProjectId, Touchpoint};

use touchpoint::health::{Health, HealthPolicy};

use super::health::{Gating, Tracker, Turn};
use super::{Answer, INCREASE, MAX_PAUSE, MIN_RATE};

/// How often a process that sends adds its requests and failures to the shared window while
/// some of its requests fail.
pub const REPORT: Duration = Duration::from_secs(1);
/// How long a process's answered requests may wait to be added to the shared window while none
/// of them failed: they only weigh against failures, and every failure brings them along
/// within a [`REPORT`]. A receiver that answers costs one write per process this often, not
/// one a second (on AWS, a Lambda instance's counts wait through its frozen time between
/// invocations: a triggered campaign's short invocations do not each pay a report).
pub const QUIET_REPORT: Duration = Duration::from_secs(10);

/// How long a slot is leased for at a time (scaled by compressed time); at least three of its
/// intervals at a slow pace.
pub const LEASE: Duration = Duration::from_secs(20);
/// A slot unused this long is given back to the other processes.
pub const IDLE: Duration = Duration::from_secs(2);
/// How often a process sending to a touchpoint reads its shared back-pressure.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Overloads reported within this of a cut are answered by that cut (one halving per
/// round of answers, whichever processes saw them).
const CUT_SPACING: Duration = Duration::from_secs(1);

/// What every shared gate of a process uses.
pub(super) struct Shared {
    pub store: Arc<dyn SharedLimits>,
    pub clock: Arc<dyn Clock>,
    /// This process, in its leases' names.
    holder: String,
    leases: AtomicU64,
    pub scale: f64,
    pub policy: HealthPolicy,
    notifier: super::Notifier,
}

impl Shared {
    pub fn new(
        store: Arc<dyn SharedLimits>,
        clock: Arc<dyn Clock>,
        scale: f64,
        policy: HealthPolicy,
        notifier: super::Notifier,
    ) -> Shared {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Shared {
            store,
            clock,
            holder: b.iter().map(|x| format!("{x:02x}")).collect(),
            leases: AtomicU64::new(0),
            scale,
            policy,
            notifier,
        }
    }

    fn lease_id(&self) -> String {
        format!(
            "{}-{}",
            self.holder,
            self.leases.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A duration of the scenario's time in real time (at least `floor`).
    fn scaled(&self, d: Duration, floor: Duration) -> Duration {
        d.div_f64(self.scale).max(floor)
    }

    fn ms(d: Duration) -> Millis {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A slot this process holds.
#[derive(Clone, Debug)]
pub(super) struct Held {
    slot: u16,
    lease: String,
    until: Millis,
    /// When its next request may go (its pace).
    next_at: Millis,
    /// Which giving-back this is, so that a late idle timer leaves a reused slot alone.
    returned: u64,
    /// When a request of this process took it from the idle ones (its pace and its exchange
    /// with the receiver follow), while it is out.
    lent_at: Option<Instant>,
    /// Its request is the breaker's probe, taken with this lease.
    pub probe: Option<Millis>,
}

struct Inner {
    limit: usize,
    ceiling: Option<f64>,
    idle: Vec<Held>,
    /// Slots held: idle or in a pass.
    mine: HashSet<u16>,
    taking: bool,
    /// Requests of this process waiting for a slot: a take takes as many at once.
    waiting: usize,
    /// After finding no free slot, when to look again.
    next_take: Option<Instant>,
    pressure: Pressure,
    refreshed: Option<Instant>,
    recent: VecDeque<Instant>,
    returns: u64,
    /// How long a slot stays out with a request (its pace and the receiver's answer), and how
    /// long a round of takes lasts, in milliseconds, smoothed: a request waits for a slot of
    /// this process coming back rather than take another while that is the shorter wait.
    lent_ms: Option<f64>,
    take_ms: Option<f64>,
    /// The receiver's health and the breaker, as this process knows them.
    health: Tracker,
    /// A breaker write of this process is under way: a read meanwhile does not undo it.
    breaker_writing: bool,
    /// When this process last added its counts to the shared window, and whether it is.
    reported: Option<Instant>,
    reporting: bool,
    /// Since when this process has counts not yet added.
    pending_since: Option<Instant>,
}

/// How much of a new measure the smoothed ones take.
const SMOOTHING: f64 = 0.3;

fn smooth(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| o + SMOOTHING * (new - o)))
}

impl Inner {
    /// Whether a request that has waited `waited` should take one more slot from the other
    /// processes rather than wait for one of this process's to come back: it should when this
    /// process holds none, when it does not know yet how long either takes, when the slots out
    /// would serve the requests waiting later than a take would, or when this one has already
    /// waited as long as a take lasts (a request the measures misjudge waits no longer than
    /// the take it saved). A touchpoint answered at once is served by a few slots per
    /// process, not one per request, each taken and given back by a write.
    fn worth_taking(&self, waited: Duration) -> bool {
        let out = self.mine.len().saturating_sub(self.idle.len());
        let (Some(lent), Some(take)) = (self.lent_ms, self.take_ms) else {
            return true;
        };
        out == 0
            || waited.as_secs_f64() * 1000.0 >= take
            || self.waiting as f64 / out as f64 * lent > take
    }

    /// How many slots a round of takes should take for the requests waiting: enough that the
    /// slots out and those taken serve them within a take's time, one at least.
    fn worth_wanting(&self) -> usize {
        let wanted = self.waiting.saturating_sub(self.idle.len());
        let out = self.mine.len().saturating_sub(self.idle.len());
        match (self.lent_ms, self.take_ms) {
            (Some(lent), Some(take)) if take > 0.0 => {
                let enough = (self.waiting as f64 * lent / take).ceil() as usize;
                wanted.min(enough.saturating_sub(out).max(1))
            }
            // Before any slot came back: as many as it holds, one at first (each round
            // doubles them while requests wait), not one per request waiting: a touchpoint
            // answered at once needs one or two.
            _ => wanted.min(self.mine.len().max(1)),
        }
    }
}

/// One touchpoint's limits in this process, backed by the shared store.
pub(super) struct SharedGate {
    project: ProjectId,
    tp: TouchpointId,
    ctx: Arc<Shared>,
    inner: Mutex<Inner>,
    notify: Notify,
    /// Wakes a report waiting out a [`QUIET_REPORT`] when a failure comes in.
    report_wake: Notify,
}

/// The rate a touchpoint's requests go at `now`, all processes together (`None`: no limit):
/// the configured ceiling, or after a cut, its rate growing back by [`INCREASE`] requests a
/// second each second, or a twentieth of the rate the overload was met at if more, until the
/// ceiling (or, with none, twice that rate: no limit again).
pub(super) fn rate_now(p: &Pressure, ceiling: Option<f64>, now: Millis, scale: f64) -> Option<f64> {
    let Some(cut) = p.cut else { return ceiling };
    let elapsed = (now - cut.at).max(0) as f64 / 1000.0;
    let step = (INCREASE * 2.0 * scale).max(cut.from / 20.0);
    let up = cut.to + step * elapsed * scale;
    match ceiling {
        Some(c) => Some(up.min(c)),
        None if up >= 2.0 * cut.from => None,
        None => Some(up),
    }
}

pub(super) enum Prepared {
    Pass(Held),
    TooLate,
    Lost,
}

impl SharedGate {
    pub fn new(ctx: Arc<Shared>, tp: &Touchpoint) -> SharedGate {
        let health = Tracker::new(ctx.policy.clone(), ctx.scale);
        SharedGate {
            project: tp.project_id,
            tp: tp.id.clone(),
            ctx,
            inner: Mutex::new(Inner {
                limit: 1,
                ceiling: None,
                idle: Vec::new(),
                mine: HashSet::new(),
                taking: false,
                waiting: 0,
                next_take: None,
                pressure: Pressure::default(),
                refreshed: None,
                recent: VecDeque::new(),
                returns: 0,
                lent_ms: None,
                take_ms: None,
                health,
                breaker_writing: false,
                reported: None,
                reporting: false,
                pending_since: None,
            }),
            notify: Notify::new(),
            report_wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the touchpoint's current limits (an edit takes effect at once).
    pub fn configure(&self, limit: usize, ceiling: Option<f64>) {
        let mut g = self.lock();
        g.limit = limit;
        g.ceiling = ceiling;
    }

    /// How long the touchpoint is paused for still (a `Retry-After` or the breaker's
    /// cool-down, as this process knows them).
    pub fn paused_for(&self) -> Duration {
        let now = self.ctx.clock.now_ms();
        let g = self.lock();
        let breaker = g.health.paused_until(now).unwrap_or(0);
        let left = g.pressure.paused_until.max(breaker) - now;
        Duration::from_millis(left.max(0) as u64)
    }

    /// Whether the breaker's cool-down runs (as this process knows).
    pub fn cooling(&self) -> bool {
        self.lock().health.cooling(self.ctx.clock.now_ms())
    }

    /// Gives back a probe taken and not sent.
    pub fn release_probe(self: &Arc<Self>, lease: Millis) {
        self.lock().health.probing_until = 0;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let gate = Arc::clone(self);
            runtime.spawn(async move {
                let _ = gate
                    .ctx
                    .store
                    .release_probe(gate.project, &gate.tp, lease)
                    .await;
            });
        }
    }

    /// The breaker as the shared store holds it now.
    pub async fn read_breaker(
        &self,
    ) -> Result<Option<touchpoint::health::Breaker>, touchpoint::StoreError> {
        let p = self.ctx.store.pressure(self.project, &self.tp).await?;
        self.merge(&p);
        Ok(p.breaker)
    }

    /// The breaker as this process last saw it.
    pub fn breaker(&self) -> Option<touchpoint::health::Breaker> {
        self.lock().health.breaker.clone()
    }

    /// The receiver's health, read afresh from the shared store.
    pub async fn health(&self) -> Health {
        if let Ok(p) = self.ctx.store.pressure(self.project, &self.tp).await {
            self.merge(&p);
        }
        self.lock().health.health(self.ctx.clock.now_ms())
    }

    /// Closes the breaker (an admin's resume), in the shared store and here.
    pub async fn close(&self) -> Result<(), touchpoint::StoreError> {
        self.ctx
            .store
            .settle(self.project, &self.tp, None, None)
            .await?;
        let mut g = self.lock();
        g.health.apply(&Turn::Close);
        g.pressure.paused_until = 0;
        drop(g);
        self.notify.notify_waiters();
        Ok(())
    }

    /// Counts an answer towards the health; opens or settles the breaker when it says so, and
    /// adds this process's counts to the shared window within a [`REPORT`].
    pub fn answered(self: &Arc<Self>, answer: Answer, probe: Option<Millis>) {
        let now = self.ctx.clock.now_ms();
        let (turn, paused_since) = {
            let mut g = self.lock();
            let paused_since = g.health.breaker.as_ref().map(|b| b.since);
            let turn = g.health.answered(answer, probe.is_some(), now);
            if g.pending_since.is_none() && g.health.unreported.is_some() {
                g.pending_since = Some(Instant::now());
            }
            g.health.apply(&turn);
            if turn != Turn::None {
                g.breaker_writing = true;
                if let Turn::Trip(b) | Turn::Reopen(b) = &turn {
                    g.pressure.paused_until = g.pressure.paused_until.max(b.until);
                }
            }
            (turn, paused_since)
        };
        self.write_turn(turn, probe, paused_since);
        self.report_soon();
    }

    /// Adds this process's unreported counts to the shared window: a [`REPORT`] after the last
    /// report while some failed, a [`QUIET_REPORT`] after the first of them while none did
    /// (one report under way or planned at a time; a failure wakes a quiet one).
    fn report_soon(self: &Arc<Self>) {
        {
            let mut g = self.lock();
            if g.reporting {
                if g.health.report_urgent() {
                    self.report_wake.notify_one();
                }
                return;
            }
            if g.health.unreported.is_none() && g.health.overdue.is_none() {
                return;
            }
            g.reporting = true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.lock().reporting = false;
            return;
        };
        let every = self.ctx.scaled(REPORT, Duration::from_millis(50));
        let quiet = self.ctx.scaled(QUIET_REPORT, Duration::from_millis(50));
        let gate = Arc::clone(self);
        runtime.spawn(async move {
            let taken = loop {
                let due = {
                    let mut g = gate.lock();
                    let now = Instant::now();
                    if g.health.unreported.is_none() && g.health.overdue.is_none() {
                        // Cleared meanwhile (the breaker closed: a fresh window).
                        g.pending_since = None;
                        break None;
                    }
                    let due = if g.health.report_urgent() {
                        g.reported.map_or(now, |t| t + every)
                    } else {
                        g.pending_since.unwrap_or(now) + quiet
                    };
                    if due <= now {
                        let taken = g.health.take_unreported();
                        if g.health.unreported.is_none() {
                            g.pending_since = None;
                        }
                        break taken;
                    }
                    due
                };
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = gate.report_wake.notified() => {}
                }
            };
            let Some((slot, requests, failures)) = taken else {
                gate.lock().reporting = false;
                return;
            };
            let reported = gate
                .ctx
                .store
                .report(gate.project, &gate.tp, slot, requests, failures)
                .await;
            {
                let mut g = gate.lock();
                g.reporting = false;
                g.reported = Some(Instant::now());
                if reported.is_err() {
                    // Counted again in the next report (unless its slot has passed).
                    let back = (slot, requests, failures);
                    match g.health.unreported {
                        Some((s, r, f)) if s == slot => {
                            g.health.unreported = Some((s, r + requests, f + failures));
                        }
                        Some(_) => g.health.overdue = g.health.overdue.or(Some(back)),
                        None => g.health.unreported = Some(back),
                    }
                    g.pending_since = g.pending_since.or(Some(Instant::now()));
                }
            }
            if let Ok(p) = &reported {
                gate.merge(p);
            }
            let turn = {
                let mut g = gate.lock();
                let turn = g.health.judge(gate.ctx.clock.now_ms());
                g.health.apply(&turn);
                if turn != Turn::None {
                    g.breaker_writing = true;
                }
                turn
            };
            gate.write_turn(turn, None, None);
            // What came in meanwhile.
            gate.report_soon();
        });
    }

    /// Writes a change of the breaker to the shared store (`probe`: the lease of the probe
    /// whose answer made it).
    /// The process whose write made the turn tells it (`paused_since`: when the pause a close
    /// ends began).
    fn write_turn(
        self: &Arc<Self>,
        turn: Turn,
        probe: Option<Millis>,
        paused_since: Option<Millis>,
    ) {
        if turn == Turn::None {
            return;
        }
        match &turn {
            Turn::Trip(b) | Turn::Reopen(b) => {
                tracing::warn!(touchpoint = %self.tp, reason = %b.reason, "receiver down: touchpoint paused");
            }
            Turn::Close => {
                tracing::info!(touchpoint = %self.tp, "receiver answered the probe: touchpoint resumed");
            }
            Turn::None => {}
        }
        self.notify.notify_waiters();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.lock().breaker_writing = false;
            return;
        };
        let gate = Arc::clone(self);
        // Counted under way from the write on: the notification it makes follows it.
        let telling = gate.ctx.notifier.telling();
        runtime.spawn(async move {
            let _telling = telling;
            let store = &gate.ctx.store;
            let written = match &turn {
                Turn::Trip(b) => store.trip(gate.project, &gate.tp, b).await,
                Turn::Reopen(b) => store.settle(gate.project, &gate.tp, Some(b), probe).await,
                Turn::Close => store.settle(gate.project, &gate.tp, None, probe).await,
                Turn::None => Ok(false),
            };
            match written {
                Ok(true) => super::tell(
                    &gate.ctx.notifier,
                    super::breaker_notification(
                        gate.project,
                        &gate.tp,
                        &turn,
                        paused_since,
                        gate.ctx.clock.now_ms(),
                    ),
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(touchpoint = %gate.tp, error = %e, "cannot write the breaker's state");
                }
            }
            // What the store holds now (another process may have opened it first).
            let read = store.pressure(gate.project, &gate.tp).await;
            gate.lock().breaker_writing = false;
            if let Ok(p) = read {
                gate.merge(&p);
            }
        });
    }

    pub fn rate(&self) -> Option<f64> {
        let g = self.lock();
        rate_now(
            &g.pressure,
            g.ceiling,
            self.ctx.clock.now_ms(),
            self.ctx.scale,
        )
    }

    /// A slot held by this process, paced, within `deadline`; `None` when none comes in time.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Option<Held> {
        enum Step {
            Use(Held),
            Take,
            Wait(Duration),
        }
        let mut waiting = Waiting::new(self);
        let began = Instant::now();
        loop {
            let now = Instant::now();
            let step = {
                let mut g = self.lock();
                let earliest = (0..g.idle.len()).min_by_key(|i| g.idle[*i].next_at);
                if let Some(i) = earliest {
                    let mut h = g.idle.swap_remove(i);
                    h.lent_at = Some(now);
                    Step::Use(h)
                } else {
                    let may_take =
                        g.mine.len() < g.limit && !g.taking && g.next_take.is_none_or(|t| t <= now);
                    if may_take && g.worth_taking(now - began) {
                        g.taking = true;
                        Step::Take
                    } else {
                        let poll = Duration::from_millis(50);
                        // Looks again when a take would be worth it for having waited (only
                        // when one may go; otherwise at the usual poll).
                        let patience = match g.take_ms {
                            Some(t) if may_take => Duration::from_secs_f64(t / 1000.0)
                                .saturating_sub(now - began)
                                .max(Duration::from_millis(1)),
                            _ => poll,
                        };
                        Step::Wait(match g.next_take {
                            Some(t) if t > now && !g.taking => (t - now).min(poll),
                            _ => poll.min(patience),
                        })
                    }
                }
            };
            let held = match step {
                Step::Use(h) => h,
                Step::Take => {
                    // Whatever becomes of this request (even dropped mid-way, as a Lambda
                    // invocation's work is at its deadline), the next one may take.
                    let taking = Taking(self);
                    // The slots taken join the idle ones as they come: this request and the
                    // others waiting use them from there.
                    let taken = self.take_some().await;
                    drop(taking);
                    self.lock().next_take = (taken == 0).then(|| Instant::now() + take_backoff());
                    self.notify.notify_waiters();
                    continue;
                }
                Step::Wait(d) => {
                    if now >= deadline {
                        return None;
                    }
                    let _ =
                        tokio::time::timeout(d.min(deadline - now), self.notify.notified()).await;
                    continue;
                }
            };
            waiting.done();
            // Dropped while it waits for its pace (the request is abandoned), the slot comes
            // back as it was: it sent nothing.
            let mut preparing = Preparing {
                gate: self,
                held: Some(held.clone()),
            };
            let prepared = self.prepare(held, deadline).await;
            preparing.held = None;
            match prepared {
                Prepared::Pass(h) => return Some(h),
                Prepared::TooLate => return None,
                Prepared::Lost => waiting = Waiting::new(self),
            }
        }
    }

    /// Reads the shared back-pressure if this process has not for a [`REFRESH`].
    pub async fn refresh(&self) {
        let every = self.ctx.scaled(REFRESH, Duration::from_millis(100));
        // One read at a time: the requests that find it stale while it is under way go on
        // with the back-pressure as this process knows it (a cut or pause recorded elsewhere
        // meanwhile reaches them a round trip later); a failed read is tried again by the next.
        let before = {
            let mut g = self.lock();
            if g.refreshed.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            g.refreshed.replace(Instant::now())
        };
        match self.ctx.store.pressure(self.project, &self.tp).await {
            Ok(pressure) => self.merge(&pressure),
            Err(_) => self.lock().refreshed = before,
        }
    }

    fn merge(&self, stored: &Pressure) {
        let mut g = self.lock();
        g.refreshed = Some(Instant::now());
        if stored.cut.map(|c| c.at) >= g.pressure.cut.map(|c| c.at) {
            g.pressure.cut = stored.cut;
        }
        g.pressure.paused_until = g.pressure.paused_until.max(stored.paused_until);
        g.health.window.merge(&stored.window);
        if !g.breaker_writing {
            let closed = g.health.breaker.is_some() && stored.breaker.is_none();
            g.health.breaker = stored.breaker.clone();
            if closed {
                // Resumed elsewhere (a probe, or an admin): the pause was the breaker's.
                g.pressure.paused_until = g.pressure.paused_until.min(stored.paused_until);
                g.health.window = stored.window;
                drop(g);
                self.notify.notify_waiters();
            }
        }
    }

    /// Takes free slots from the shared store: one read of the touchpoint's slots, then a
    /// conditional write on as many free ones as this process has requests waiting, side by
    /// side (the records of an invocation start together: one read and one round trip serve
    /// them all, not one after the other). Those another process took first are left. Each
    /// slot taken joins this process's idle slots; answers how many.
    async fn take_some(self: &Arc<Self>) -> usize {
        let started = Instant::now();
        let taken = self.take_round().await;
        let mut g = self.lock();
        g.take_ms = smooth(g.take_ms, started.elapsed().as_secs_f64() * 1000.0);
        taken
    }

    async fn take_round(self: &Arc<Self>) -> usize {
        let state = match self.ctx.store.state(self.project, &self.tp).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(touchpoint = %self.tp, error = %e, "cannot read the touchpoint's limits");
                return 0;
            }
        };
        self.merge(&state.pressure);
        let now = self.ctx.clock.now_ms();
        // Counted after the read: the requests that came meanwhile are served by it too.
        let (mut free, want) = {
            let g = self.lock();
            let free: Vec<u16> = (0..g.limit.min(usize::from(u16::MAX)) as u16)
                .filter(|s| !g.mine.contains(s))
                .filter(|s| {
                    state
                        .slots
                        .iter()
                        .find(|x| x.slot == *s)
                        .is_none_or(|x| x.lease.is_none() || x.until < now)
                })
                .collect();
            let room = g.limit.saturating_sub(g.mine.len());
            // Requests the idle slots (given back during the read) will serve need none, nor
            // those the slots out will serve soon enough.
            (free, g.worth_wanting().clamp(1, room.max(1)))
        };
        if free.is_empty() {
            return 0;
        }
        // In random order, so that processes taking at once rarely pick the same.
        for i in (1..free.len()).rev() {
            free.swap(i, random_below(i + 1));
        }
        let lease_for = Shared::ms(self.ctx.scaled(LEASE, Duration::from_millis(500)));
        let until = now + lease_for;
        let mut free = free.into_iter();
        let (mut taken, failed) = self.take_these(free.by_ref().take(want), now, until).await;
        if taken == 0 && !failed {
            // Another process took what was tried: one more.
            taken = self.take_these(free.take(1), now, until).await.0;
        }
        taken
    }

    /// Takes `slots` side by side; each one taken joins the idle slots as soon as it is.
    /// Answers how many were, and whether the store failed (not only refused a take). Each
    /// take runs in a task of its own: if the caller is dropped meanwhile (a Lambda invocation
    /// at its deadline), a slot taken after all is given back by its task, not left leased to
    /// nobody until its lease runs out.
    async fn take_these(
        self: &Arc<Self>,
        slots: impl Iterator<Item = u16>,
        now: Millis,
        until: Millis,
    ) -> (usize, bool) {
        let mut answers = Vec::new();
        for slot in slots {
            let (store, project, tp) = (Arc::clone(&self.ctx.store), self.project, self.tp.clone());
            let lease = self.ctx.lease_id();
            let (answer, answered) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let taken = store.take(project, &tp, slot, &lease, now, until).await;
                if let Err((slot, lease, Ok(Some(free_at)))) = answer.send((slot, lease, taken)) {
                    let _ = store.release(project, &tp, slot, &lease, free_at).await;
                }
            });
            answers.push(answered);
        }
        let (mut taken, mut failed) = (0, false);
        for answered in answers {
            let Ok((slot, lease, answer)) = answered.await else {
                failed = true;
                continue;
            };
            match answer {
                Ok(Some(free_at)) => {
                    taken += 1;
                    self.lock().mine.insert(slot);
                    self.give_back(Held {
                        slot,
                        lease,
                        until,
                        next_at: free_at,
                        returned: 0,
                        lent_at: None,
                        probe: None,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    failed = true;
                    tracing::warn!(touchpoint = %self.tp, error = %e, "cannot take a slot");
                }
            }
        }
        (taken, failed)
    }

    /// Paces a held slot's next request and makes sure its lease outlasts it.
    async fn prepare(self: &Arc<Self>, mut h: Held, deadline: Instant) -> Prepared {
        let lease_for = Shared::ms(self.ctx.scaled(LEASE, Duration::from_millis(500)));
        let every = self.ctx.scaled(REFRESH, Duration::from_millis(100));
        // Waits a [`REFRESH`] at a time, so that a cut or a pause recorded meanwhile (by any
        // process) holds this request too.
        let (at, interval) = loop {
            // The store's round trips are not the slot's time out: a slot's time out is what
            // the receiver and the pace take.
            let reading = Instant::now();
            self.refresh().await;
            h.lent_at = h.lent_at.map(|t| t + reading.elapsed());
            let now = self.ctx.clock.now_ms();
            let (rate, mut paused, limit, gating) = {
                let g = self.lock();
                (
                    rate_now(&g.pressure, g.ceiling, now, self.ctx.scale),
                    g.pressure.paused_until,
                    g.limit,
                    if h.probe.is_some() {
                        Gating::Go
                    } else {
                        g.health.gating(now)
                    },
                )
            };
            // Held by the breaker: once the wait is over, it is looked at again (the wait's end
            // is a cool-down's end, when one probe goes, or a look at a probe's answer).
            let held = gating != Gating::Go;
            match gating {
                Gating::Go | Gating::Probe => {}
                // During a cool-down nothing waits for it: the slot goes back, and the caller
                // comes back at its end.
                Gating::Cooling(_) => {
                    h.lent_at = None;
                    self.give_back(h);
                    return Prepared::TooLate;
                }
                Gating::Probing(t) => paused = paused.max(t),
            }
            if usize::from(h.slot) >= limit {
                // The limit was lowered: this slot is not one of the touchpoint's any more.
                self.drop_probe(&mut h);
                self.forget(h.slot);
                self.release(h).await;
                return Prepared::Lost;
            }
            let interval = rate.map_or(0, |r| (limit as f64 * 1000.0 / r).ceil() as Millis);
            let at = now.max(h.next_at).max(paused);
            let room = Shared::ms(deadline.saturating_duration_since(Instant::now()));
            if at > now + room {
                // Not sent: no measure of a slot's time out; a probe not sent is given back.
                h.lent_at = None;
                self.drop_probe(&mut h);
                self.give_back(h);
                return Prepared::TooLate;
            }
            // One process's one request probes the receiver after a cool-down, taken only
            // once it can go in time.
            if gating == Gating::Probe && at <= now {
                let lease = self.lock().health.probe_lease();
                match self
                    .ctx
                    .store
                    .probe(self.project, &self.tp, now, now + lease)
                    .await
                {
                    Ok(true) => {
                        h.probe = Some(now + lease);
                        self.lock().health.probing_until = now + lease;
                    }
                    // Another process probes: look again shortly.
                    _ => {
                        tokio::time::sleep(every.min(Duration::from_millis(100))).await;
                        continue;
                    }
                }
            }
            // A holder sends only while its lease outlasts the request's pace: whoever takes
            // the slot after the lease ran out is an interval behind its last request.
            if h.until < at + interval + lease_for / 2 {
                let until = at + lease_for.max(3 * interval);
                let renewing = Instant::now();
                let renewed = self
                    .ctx
                    .store
                    .renew(self.project, &self.tp, h.slot, &h.lease, until)
                    .await;
                h.lent_at = h.lent_at.map(|t| t + renewing.elapsed());
                match renewed {
                    Ok(true) => h.until = until,
                    Ok(false) | Err(_) => {
                        self.drop_probe(&mut h);
                        self.forget(h.slot);
                        return Prepared::Lost;
                    }
                }
            }
            let wait = at - self.ctx.clock.now_ms();
            let held = held && h.probe.is_none();
            if wait <= 0 && !held {
                break (at, interval);
            }
            let wait = Duration::from_millis(wait.max(1) as u64);
            tokio::time::sleep(wait.min(every)).await;
            if wait <= every && !held {
                break (at, interval);
            }
        };
        // Paced from when it really goes: a late request does not let the next one come early.
        h.next_at = self.ctx.clock.now_ms().max(at) + interval;
        {
            let mut g = self.lock();
            let now = Instant::now();
            g.recent.push_back(now);
            let second = Duration::from_secs(1).div_f64(self.ctx.scale);
            while g
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > second)
            {
                g.recent.pop_front();
            }
        }
        Prepared::Pass(h)
    }

    /// Gives back the probe a slot carries, if any (its request will not go).
    fn drop_probe(self: &Arc<Self>, h: &mut Held) {
        if let Some(lease) = h.probe.take() {
            self.release_probe(lease);
        }
    }

    fn forget(&self, slot: u16) {
        self.lock().mine.remove(&slot);
        self.notify.notify_waiters();
    }

    /// A slot comes back from a request: the next request of this process takes it, or after
    /// [`IDLE`] without one it goes back to the other processes.
    pub fn give_back(self: &Arc<Self>, mut h: Held) {
        // Its next request is not a probe unless the breaker makes it one.
        h.probe = None;
        let (generation, take_ms) = {
            let mut g = self.lock();
            if let Some(at) = h.lent_at.take() {
                g.lent_ms = smooth(g.lent_ms, at.elapsed().as_secs_f64() * 1000.0);
            }
            g.returns += 1;
            h.returned = g.returns;
            let (slot, generation) = (h.slot, h.returned);
            g.idle.push(h);
            ((slot, generation), g.take_ms)
        };
        self.notify.notify_waiters();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let gate = Arc::clone(self);
            // Never sooner than two takes' time: a slot given back and taken again costs two
            // writes (in compressed time, where the store's round trips are not shorter).
            let again = Duration::from_secs_f64(2.0 * take_ms.unwrap_or(0.0) / 1000.0);
            let idle = self.ctx.scaled(IDLE, Duration::from_millis(50)).max(again);
            runtime.spawn(async move {
                tokio::time::sleep(idle).await;
                gate.release_if_idle(Some(generation)).await;
            });
        }
    }

    /// Gives back the idle slots (`Some`: only the one returned at that generation).
    pub async fn release_if_idle(&self, generation: Option<(u16, u64)>) {
        let freed: Vec<Held> = {
            let mut g = self.lock();
            let (keep, freed): (Vec<Held>, Vec<Held>) = std::mem::take(&mut g.idle)
                .into_iter()
                .partition(|h| generation.is_some_and(|(s, n)| h.slot != s || h.returned != n));
            g.idle = keep;
            for h in &freed {
                g.mine.remove(&h.slot);
            }
            freed
        };
        if !freed.is_empty() {
            self.notify.notify_waiters();
        }
        // Side by side: at the end of an invocation every moment counts.
        let mut releases = tokio::task::JoinSet::new();
        for h in freed {
            releases.spawn(give_back_slot(
                Arc::clone(&self.ctx.store),
                self.project,
                self.tp.clone(),
                h,
            ));
        }
        while releases.join_next().await.is_some() {}
    }

    async fn release(&self, h: Held) {
        give_back_slot(
            Arc::clone(&self.ctx.store),
            self.project,
            self.tp.clone(),
            h,
        )
        .await;
    }

    /// An overload: halves the rate all processes send at (once per [`CUT_SPACING`]) and
    /// holds every request for a `Retry-After`.
    pub fn overloaded(self: &Arc<Self>, retry_after: Option<Duration>) {
        let scale = self.ctx.scale;
        let now = self.ctx.clock.now_ms();
        let (cut, pause) = {
            let mut g = self.lock();
            let floor = MIN_RATE * scale;
            // What this process sent in the last second, as a share of the slots it holds.
            let held = g.mine.len().max(1) as f64;
            let sent = g.recent.len().max(1) as f64 * scale * g.limit as f64 / held;
            let from = rate_now(&g.pressure, g.ceiling, now, scale)
                .map_or(sent, |r| r.min(sent.max(floor)));
            let spacing = Shared::ms(CUT_SPACING.div_f64(scale));
            let cut = if g.pressure.cut.is_none_or(|c| c.at < now - spacing) {
                let cut = Cut {
                    to: (from / 2.0).max(floor),
                    from,
                    at: now,
                };
                g.pressure.cut = Some(cut);
                Some((cut, now - spacing))
            } else {
                None
            };
            let pause = retry_after.map(|ra| now + Shared::ms(ra.min(MAX_PAUSE).div_f64(scale)));
            if let Some(p) = pause {
                g.pressure.paused_until = g.pressure.paused_until.max(p);
            }
            (cut, pause)
        };
        if cut.is_none() && pause.is_none() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let gate = Arc::clone(self);
            runtime.spawn(async move {
                let store = &gate.ctx.store;
                if let Some((cut, since)) = cut {
                    let _ = store.cut(gate.project, &gate.tp, cut, since).await;
                }
                if let Some(until) = pause {
                    let _ = store.pause(gate.project, &gate.tp, until).await;
                }
            });
        }
    }
}

/// Writes a slot back as free, with the pace of its last request. A failed write leaves the
/// lease to run out.
async fn give_back_slot(
    store: Arc<dyn SharedLimits>,
    project: ProjectId,
    tp: TouchpointId,
    h: Held,
) {
    let _ = store
        .release(project, &tp, h.slot, &h.lease, h.next_at)
        .await;
}

/// A request of this process waiting for a slot, until it has one or gives up.
struct Waiting<'a> {
    gate: &'a SharedGate,
    counted: bool,
}

impl<'a> Waiting<'a> {
    fn new(gate: &'a SharedGate) -> Waiting<'a> {
        gate.lock().waiting += 1;
        Waiting {
            gate,
            counted: true,
        }
    }

    fn done(&mut self) {
        if std::mem::take(&mut self.counted) {
            let mut g = self.gate.lock();
            g.waiting = g.waiting.saturating_sub(1);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// Ends a take of slots, however it ends.
struct Taking<'a>(&'a SharedGate);

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        self.0.lock().taking = false;
    }
}

/// A slot being prepared for a request, given back if the request is dropped meanwhile.
struct Preparing<'a> {
    gate: &'a Arc<SharedGate>,
    held: Option<Held>,
}

impl Drop for Preparing<'_> {
    fn drop(&mut self) {
        if let Some(mut h) = self.held.take()
            && self.gate.lock().mine.contains(&h.slot)
        {
            h.lent_at = None;
            self.gate.give_back(h);
        }
    }
}

/// How long to wait before looking for a free slot again: 100 to 400 ms, jittered so that
/// waiting processes do not read at once.
fn take_backoff() -> Duration {
    Duration::from_millis(100 + random_below(300) as u64)
}

fn random_below(n: usize) -> usize {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    (u32::from_le_bytes(b) as usize) % n.max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use async_trait::async_trait;
    use touchpoint::limits::{LimitsState, SlotState};
    use touchpoint::ports::StoreError;

    use super::super::tests::touchpoint;
    use super::super::{Answer, ReceiverLimits};
    use super::*;

    type Slot = (Option<String>, Millis, Millis);

    /// The shared store as DynamoDB's conditional writes make it behave.
    #[derive(Default)]
    struct Store {
        /// Per slot: its lease, until when, and its `free_at`.
        slots: Mutex<HashMap<u16, Slot>>,
        pressure: Mutex<Pressure>,
        writes: AtomicU64,
        reads: AtomicU64,
        /// Health reports (one a second at most per sending process while requests fail),
        /// apart from the slots' writes.
        reports: AtomicU64,
        /// How long each read and take takes (a round trip to DynamoDB).
        latency: Duration,
    }

    #[async_trait]
    impl SharedLimits for Store {
        async fn state(&self, _: ProjectId, _: &TouchpointId) -> Result<LimitsState, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            let slots = self.slots.lock().unwrap();
            Ok(LimitsState {
                slots: slots
                    .iter()
                    .map(|(s, (lease, until, _))| SlotState {
                        slot: *s,
                        lease: lease.clone(),
                        until: *until,
                    })
                    .collect(),
                pressure: self.pressure.lock().unwrap().clone(),
            })
        }
        async fn pressure(&self, _: ProjectId, _: &TouchpointId) -> Result<Pressure, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            Ok(self.pressure.lock().unwrap().clone())
        }
        async fn take(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            slot: u16,
            lease: &str,
            now: Millis,
            until: Millis,
        ) -> Result<Option<Millis>, StoreError> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            // Written when the request arrives; the answer takes the round trip back.
            let answer = {
                let mut slots = self.slots.lock().unwrap();
                let e = slots.entry(slot).or_insert((None, 0, 0));
                if e.0.is_some() && e.1 >= now {
                    None
                } else {
                    *e = (Some(lease.to_owned()), until, e.2);
                    Some(e.2)
                }
            };
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            Ok(answer)
        }
        async fn renew(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            slot: u16,
            lease: &str,
            until: Millis,
        ) -> Result<bool, StoreError> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut slots = self.slots.lock().unwrap();
            match slots.get_mut(&slot) {
                Some(e) if e.0.as_deref() == Some(lease) => {
                    e.1 = until;
                    Ok(true)
                }
                _ => Ok(false),
            }
        }
        async fn release(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            slot: u16,
            lease: &str,
            free_at: Millis,
        ) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut slots = self.slots.lock().unwrap();
            if let Some(e) = slots.get_mut(&slot)
                && e.0.as_deref() == Some(lease)
            {
                *e = (None, 0, free_at);
            }
            Ok(())
        }
        async fn cut(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            cut: Cut,
            unless_since: Millis,
        ) -> Result<(), StoreError> {
            let mut p = self.pressure.lock().unwrap();
            if p.cut.is_none_or(|c| c.at < unless_since) {
                p.cut = Some(cut);
            }
            Ok(())
        }
        async fn pause(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            until: Millis,
        ) -> Result<(), StoreError> {
            let mut p = self.pressure.lock().unwrap();
            p.paused_until = p.paused_until.max(until);
            Ok(())
        }
        async fn report(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            slot: i64,
            requests: u32,
            failures: u32,
        ) -> Result<Pressure, StoreError> {
            self.reports.fetch_add(1, Ordering::Relaxed);
            let mut p = self.pressure.lock().unwrap();
            p.window.add(slot, requests, failures);
            Ok(p.clone())
        }
        async fn trip(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            b: &touchpoint::health::Breaker,
        ) -> Result<bool, StoreError> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut p = self.pressure.lock().unwrap();
            if p.breaker.is_some() {
                return Ok(false);
            }
            p.breaker = Some(b.clone());
            p.paused_until = p.paused_until.max(b.until);
            Ok(true)
        }
        async fn probe(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            now: Millis,
            until: Millis,
        ) -> Result<bool, StoreError> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut p = self.pressure.lock().unwrap();
            match &mut p.breaker {
                Some(b) if b.until <= now && b.probe_until < now => {
                    b.probe_until = until;
                    Ok(true)
                }
                _ => Ok(false),
            }
        }
        async fn release_probe(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            probe: Millis,
        ) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut p = self.pressure.lock().unwrap();
            if let Some(b) = &mut p.breaker
                && b.probe_until == probe
            {
                b.probe_until = 0;
            }
            Ok(())
        }
        async fn settle(
            &self,
            _: ProjectId,
            _: &TouchpointId,
            next: Option<&touchpoint::health::Breaker>,
            probe: Option<Millis>,
        ) -> Result<bool, StoreError> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut p = self.pressure.lock().unwrap();
            if let Some(lease) = probe
                && p.breaker.as_ref().is_none_or(|b| b.probe_until != lease)
            {
                return Ok(false);
            }
            match next {
                Some(b) => {
                    p.breaker = Some(b.clone());
                    p.paused_until = b.until;
                }
                None => {
                    p.breaker = None;
                    p.paused_until = 0;
                    p.window = Default::default();
                }
            }
            Ok(true)
        }
    }

    /// Wall-clock milliseconds that follow tokio's (paused) time.
    struct TokioClock(Instant);
    impl Clock for TokioClock {
        fn now_ms(&self) -> Millis {
            1_000_000_000 + self.0.elapsed().as_millis() as Millis
        }
    }

    fn processes(n: usize, store: &Arc<Store>) -> Vec<Arc<ReceiverLimits>> {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
        (0..n)
            .map(|_| {
                Arc::new(ReceiverLimits::new(4).with_shared(store.clone(), Arc::clone(&clock)))
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_held_across_processes_and_come_back_when_idle() {
        let store = Arc::new(Store::default());
        let p = processes(2, &store);
        let tp = touchpoint(Some(2), None);
        let a1 = p[0].acquire(&tp, Duration::from_secs(1)).await.unwrap();
        let a2 = p[0].acquire(&tp, Duration::from_secs(1)).await.unwrap();
        assert!(
            p[1].acquire(&tp, Duration::from_secs(1)).await.is_none(),
            "both slots are the first process's"
        );
        drop(a1);
        // The first process uses its idle slot again at once...
        let a1 = p[0].acquire(&tp, Duration::from_millis(10)).await.unwrap();
        drop((a1, a2));
        // ...and gives both back after IDLE without a request.
        let started = Instant::now();
        let b = p[1].acquire(&tp, Duration::from_secs(5)).await.unwrap();
        assert!(started.elapsed() >= IDLE, "{:?}", started.elapsed());
        drop(b);
        p[1].release_idle().await;
        let slots = store.slots.lock().unwrap();
        assert!(slots.values().all(|(lease, _, _)| lease.is_none()));
    }

    /// The records of an invocation start together and each holds its slot long (a slow
    /// receiver): their slots come in a few rounds of takes side by side (one, then doubling
    /// while none has come back), not from a read and a take each, one after the other.
    #[tokio::test(start_paused = true)]
    async fn requests_waiting_together_take_their_slots_in_a_few_rounds() {
        let store = Arc::new(Store {
            latency: Duration::from_millis(10),
            ..Store::default()
        });
        let p = processes(1, &store);
        let tp = touchpoint(Some(16), None);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (limits, tp) = (Arc::clone(&p[0]), tp.clone());
            tasks.spawn(async move {
                let pass = limits.acquire(&tp, Duration::from_secs(5)).await;
                let at = Instant::now();
                // Held until every request has one: ten slots, not one used in turn.
                tokio::time::sleep(Duration::from_millis(500)).await;
                (pass.is_some(), at)
            });
        }
        let mut last = started;
        while let Some(joined) = tasks.join_next().await {
            let (passed, at) = joined.unwrap();
            assert!(passed);
            last = last.max(at);
        }
        // Five rounds of a read and takes side by side (1, 1, 2, 4, 2 slots): ten round
        // trips, where one request after the other took twenty.
        assert!(
            last - started <= Duration::from_millis(110),
            "{:?}",
            last - started
        );
        assert_eq!(store.writes.load(Ordering::Relaxed), 10);
        // And one read of the back-pressure before the first (a pause lifted elsewhere is seen
        // before anything is claimed).
        assert!(
            store.reads.load(Ordering::Relaxed) <= 6,
            "{} reads",
            store.reads.load(Ordering::Relaxed)
        );
    }

    /// A touchpoint that answers at once: the requests of a process share the few slots it
    /// took (each comes back within a millisecond), where each took a slot of its own and
    /// gave it back (two writes per request, on DynamoDB).
    #[tokio::test(start_paused = true)]
    async fn requests_answered_at_once_share_a_few_slots() {
        let store = Arc::new(Store {
            latency: Duration::from_millis(10),
            ..Store::default()
        });
        let p = processes(1, &store);
        let tp = touchpoint(Some(16), None);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..60u64 {
            let (limits, tp) = (Arc::clone(&p[0]), tp.clone());
            tasks.spawn(async move {
                // Records whose claims land a little apart.
                tokio::time::sleep(Duration::from_micros(300 * i)).await;
                let pass = limits.acquire(&tp, Duration::from_secs(5)).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                pass.is_some()
            });
        }
        while let Some(joined) = tasks.join_next().await {
            assert!(joined.unwrap());
        }
        let takes = store.writes.load(Ordering::Relaxed);
        assert!(
            (1..=6).contains(&takes),
            "{takes} slots taken for 60 requests"
        );
    }

    /// A request dropped while its slot is being taken (an invocation at its deadline) leaves
    /// no slot leased to nobody: the take that went through is given back.
    #[tokio::test(start_paused = true)]
    async fn a_slot_taken_for_a_request_dropped_meanwhile_is_given_back() {
        let store = Arc::new(Store {
            latency: Duration::from_millis(10),
            ..Store::default()
        });
        let p = processes(2, &store);
        let tp = touchpoint(Some(1), None);
        // Dropped after the read, while the take's answer is on its way back.
        let cut = tokio::time::timeout(
            Duration::from_millis(15),
            p[0].acquire(&tp, Duration::from_secs(5)),
        )
        .await;
        assert!(cut.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The other process takes the only slot at once, not when the lease would run out.
        let started = Instant::now();
        assert!(p[1].acquire(&tp, LEASE * 2).await.is_some());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_holders_slot_is_free_when_its_lease_runs_out() {
        let store = Arc::new(Store::default());
        let p = processes(2, &store);
        let tp = touchpoint(Some(1), None);
        // A process that dies holding its slot: nothing gives it back.
        std::mem::forget(p[0].acquire(&tp, Duration::from_secs(1)).await.unwrap());
        let started = Instant::now();
        assert!(p[1].acquire(&tp, LEASE / 2).await.is_none());
        let pass = p[1]
            .acquire(&tp, LEASE)
            .await
            .expect("free after its lease");
        let waited = started.elapsed();
        assert!(
            waited >= LEASE && waited <= LEASE + Duration::from_secs(1),
            "{waited:?}"
        );
        drop(pass);
    }

    #[tokio::test(start_paused = true)]
    async fn a_receiver_down_pauses_every_process_and_one_probe_of_one_process_resumes_them() {
        use touchpoint::health::HealthState;
        let store = Arc::new(Store::default());
        let p = processes(2, &store);
        let tp = touchpoint(Some(4), None);
        // Ten failures each: neither process alone has seen twenty, the shared window has.
        for limits in &p {
            for _ in 0..10 {
                let pass = limits.acquire(&tp, Duration::from_secs(1)).await.unwrap();
                pass.answered(Answer::Failed);
                // Time for the reports (once a second per process).
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        // The last counts reach the shared window within a report's time, and the process
        // that sees the window full trips the breaker.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let tripped = store.pressure.lock().unwrap().breaker.clone();
        let b = tripped.expect("the shared window tripped the breaker");
        assert!(b.reason.contains("requests failed"), "{}", b.reason);
        for limits in &p {
            let health = limits.health(&tp).await;
            assert_eq!(health.state, HealthState::Paused, "{health:?}");
            assert!(!health.manual);
            assert!(
                limits.acquire(&tp, Duration::from_secs(5)).await.is_none(),
                "nothing goes during the cool-down"
            );
            assert!(limits.paused_until(&tp, Duration::from_secs(30)).is_some());
        }
        // After the cool-down: one probe, from one process.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let (first, second) = tokio::join!(
            p[0].acquire(&tp, Duration::from_secs(3)),
            p[1].acquire(&tp, Duration::from_secs(3))
        );
        let probe = match (first, second) {
            (Some(probe), None) | (None, Some(probe)) => probe,
            (a, b) => panic!("one probe: {:?} {:?}", a.is_some(), b.is_some()),
        };
        // A probe dropped unsent (its request abandoned) is given back: another process probes
        // at once, not after the probe's lease.
        drop(probe);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let probe = tokio::select! {
            Some(p) = p[0].acquire(&tp, Duration::from_secs(2)) => p,
            Some(p) = p[1].acquire(&tp, Duration::from_secs(2)) => p,
            else => panic!("no probe after one was given back"),
        };
        // It fails: paused again, twice as long.
        probe.answered(Answer::Unreachable);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = store.pressure.lock().unwrap().breaker.clone().unwrap();
        assert_eq!(again.opened, 2);
        assert_eq!(again.since, b.since);
        assert!(p[0].acquire(&tp, Duration::from_secs(60)).await.is_none());
        tokio::time::sleep(Duration::from_secs(121)).await;
        let probe = p[1].acquire(&tp, Duration::from_secs(3)).await.unwrap();
        probe.answered(Answer::Served);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.pressure.lock().unwrap().breaker.is_none(), "resumed");
        // Every process sends again once it has read the store.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for limits in &p {
            assert_eq!(limits.health(&tp).await.state, HealthState::Healthy);
            assert!(limits.acquire(&tp, Duration::from_secs(1)).await.is_some());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_admin_resume_closes_the_breaker_for_every_process() {
        let store = Arc::new(Store::default());
        let p = processes(2, &store);
        let tp = touchpoint(Some(4), None);
        for _ in 0..10 {
            p[0].acquire(&tp, Duration::from_secs(1))
                .await
                .unwrap()
                .answered(Answer::Unreachable);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            store.pressure.lock().unwrap().breaker.is_some(),
            "ten refused in a row"
        );
        p[1].close_breaker(&tp).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        for limits in &p {
            assert!(
                limits
                    .acquire(&tp, Duration::from_millis(500))
                    .await
                    .is_some()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn processes_together_keep_the_concurrency_and_the_rate() {
        let store = Arc::new(Store::default());
        let p = processes(3, &store);
        let tp = touchpoint(Some(4), Some(20));
        let in_flight = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let sends = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for limits in &p {
            for _ in 0..4 {
                let (limits, tp) = (Arc::clone(limits), tp.clone());
                let (in_flight, most, sends) = (
                    Arc::clone(&in_flight),
                    Arc::clone(&most),
                    Arc::clone(&sends),
                );
                tasks.push(tokio::spawn(async move {
                    while started.elapsed() < Duration::from_secs(30) {
                        let Some(pass) = limits.acquire(&tp, Duration::from_secs(5)).await else {
                            continue;
                        };
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        sends.lock().unwrap().push(started.elapsed());
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        pass.answered(Answer::Served);
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let sends = sends.lock().unwrap().clone();
        let busiest = sends
            .iter()
            .map(|t| {
                sends
                    .iter()
                    .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap();
        assert!(most.load(Ordering::SeqCst) <= 4);
        assert!(busiest <= 21, "{busiest} in a second");
        assert!(sends.len() >= 20 * 25, "the rate is used: {}", sends.len());
        // Leases are held over many requests.
        let writes = store.writes.load(Ordering::Relaxed) as usize;
        assert!(
            writes * 10 < sends.len(),
            "{writes} writes for {} requests",
            sends.len()
        );
        // While every request is answered, each process adds its counts to the receiver's
        // health once a QUIET_REPORT, not once a second.
        let reports = store.reports.load(Ordering::Relaxed);
        assert!(
            reports <= 3 * 4,
            "{reports} reports in 30 s by three processes"
        );
        assert!(reports >= 3 * 2, "{reports} reports");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_brings_the_answered_requests_before_it_within_a_report() {
        let store = Arc::new(Store::default());
        let p = processes(1, &store);
        let tp = touchpoint(Some(4), None);
        let counted = || {
            let p = store.pressure.lock().unwrap();
            p.window
                .slots
                .iter()
                .fold((0, 0), |(r, f), (_, sr, sf)| (r + sr, f + sf))
        };
        for _ in 0..5 {
            let pass = p[0].acquire(&tp, Duration::from_secs(1)).await.unwrap();
            pass.answered(Answer::Served);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            store.reports.load(Ordering::Relaxed),
            0,
            "answered requests alone wait"
        );
        let pass = p[0].acquire(&tp, Duration::from_secs(1)).await.unwrap();
        pass.answered(Answer::Failed);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(store.reports.load(Ordering::Relaxed), 1);
        assert_eq!(
            counted(),
            (6, 1),
            "the failure and the five answered before it"
        );
        // Answered ones alone again: they go a QUIET_REPORT after the first of them.
        let pass = p[0].acquire(&tp, Duration::from_secs(1)).await.unwrap();
        pass.answered(Answer::Served);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(store.reports.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(store.reports.load(Ordering::Relaxed), 2);
        assert_eq!(counted(), (7, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_overload_seen_by_one_process_slows_every_process() {
        let store = Arc::new(Store::default());
        let p = processes(2, &store);
        let tp = touchpoint(Some(4), Some(40));
        assert_eq!(p[1].rate(&tp), Some(40.0));
        let pass = p[0].acquire(&tp, Duration::from_secs(1)).await.unwrap();
        pass.answered(Answer::Overloaded(Some(Duration::from_secs(3))));
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The other process reads it within a REFRESH of sending.
        let started = Instant::now();
        let pass = p[1].acquire(&tp, Duration::from_secs(10)).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(2900),
            "Retry-After held it"
        );
        let rate = p[1].rate(&tp).unwrap();
        assert!(rate <= 21.0, "halved from what was sent: {rate}");
        drop(pass);
        // It grows back to the ceiling, not past it.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(p[1].rate(&tp), Some(40.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_dropped_while_it_waits_for_its_pace_leaves_its_slot() {
        let store = Arc::new(Store::default());
        let p = processes(1, &store);
        // One slot, one request a second: the second request waits a second for its pace.
        let tp = touchpoint(Some(1), Some(1));
        drop(p[0].acquire(&tp, Duration::from_secs(1)).await.unwrap());
        let (limits, t) = (Arc::clone(&p[0]), tp.clone());
        let waiting =
            tokio::spawn(async move { limits.acquire(&t, Duration::from_secs(5)).await.is_some() });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Dropped mid-way, as a Lambda invocation's work is at its deadline.
        waiting.abort();
        let _ = waiting.await;
        let pass = p[0].acquire(&tp, Duration::from_secs(3)).await;
        assert!(pass.is_some(), "the slot came back");
    }
}
