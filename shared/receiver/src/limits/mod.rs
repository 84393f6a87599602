//! What protects a receiver in one process: at most `maxConcurrency` requests in flight towards
//! a touchpoint, at most `maxRequestsPerSecond` a second (spaced evenly, so no second holds more
//! than the limit plus one), and back-pressure: a 429 or 503 answer halves the touchpoint's
//! request rate (from what it was sending), a `Retry-After` holds every request to it until
//! then, and each answer that is not an overload adds [`INCREASE`] requests a second back, up
//! to the configured limit (or no limit). Every request a process sends to a touchpoint (batches,
//! receipt polls, test sends) takes a [`Pass`] from the same [`ReceiverLimits`].
//!
//! Where several processes send to the same receivers (Lambda instances on AWS), the limits
//! are held in a shared store instead ([`ReceiverLimits::with_shared`], [`shared`]): the same
//! limits, across every process.
//!
//! Every answer also counts towards the receiver's health, and a receiver that is down opens
//! the touchpoint's circuit breaker ([`touchpoint::health`]): no request goes to it during the
//! cool-down, then one probe. A touchpoint an admin paused takes no request at all.

mod health;
mod shared;

pub use shared::{IDLE, LEASE, REFRESH};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use touchpoint::ProjectId;
use touchpoint::clock::{Clock, Millis, SystemClock};
use touchpoint::health::{Health, HealthPolicy};
use touchpoint::ids::TouchpointId;
use touchpoint::model::Touchpoint;
use touchpoint::notify::{Notification, Notifications};

use health::{Gating, Tracker, Turn};

/// Requests a second a 429 or 503 never takes the rate below.
pub const MIN_RATE: f64 = 0.5;
/// Requests a second added back by each answer that is not an overload.
pub const INCREASE: f64 = 0.5;
/// The longest `Retry-After` honoured for the whole touchpoint.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The limits of every touchpoint this process sends to.
pub struct ReceiverLimits {
    default_concurrency: usize,
    /// When the circuit breaker opens.
    policy: HealthPolicy,
    /// The breaker's time (a clock the tests can drive).
    clock: Arc<dyn Clock>,
    /// Divides durations and multiplies rates of the back-pressure (1 in production; compressed
    /// time in simulations, where a second is shorter).
    time_scale: f64,
    gates: Mutex<HashMap<(ProjectId, TouchpointId), Arc<Gate>>>,
    /// Limits held across processes, when set.
    shared: Option<Arc<shared::Shared>>,
    shared_gates: Mutex<HashMap<(ProjectId, TouchpointId), Arc<shared::SharedGate>>>,
    notifier: Notifier,
}

/// Where the breaker's turns are told, once set ([`ReceiverLimits::notify_with`]), and how
/// many tellings are under way (from the breaker's write to its notification in the outbox):
/// an invocation waits for them before it ends ([`ReceiverLimits::told`]).
#[derive(Default)]
pub(crate) struct Teller {
    notifications: std::sync::OnceLock<Arc<Notifications>>,
    pending: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

pub(crate) type Notifier = Arc<Teller>;

/// A telling under way: counted until dropped.
pub(crate) struct Telling(Notifier);

impl Teller {
    /// A telling under way, when notifications are told at all.
    pub(crate) fn telling(self: &Arc<Self>) -> Option<Telling> {
        self.notifications.get()?;
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Telling(Arc::clone(self)))
    }
}

impl Drop for Telling {
    fn drop(&mut self) {
        if self
            .0
            .pending
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// The notification of a breaker's turn (`paused_since`: when the pause it ends began), if
/// it makes one: a trip pauses, a close resumes; a failed probe changes nothing to tell.
fn breaker_notification(
    project: ProjectId,
    tp: &TouchpointId,
    turn: &Turn,
    paused_since: Option<Millis>,
    now: Millis,
) -> Option<Notification> {
    use touchpoint::notify::{PausedBy, touchpoint_paused, touchpoint_resumed};
    match turn {
        Turn::Trip(b) => Some(touchpoint_paused(
            project,
            tp,
            PausedBy::Breaker {
                probe_at: Some(b.until),
            },
            Some(&b.reason),
            b.since,
            now,
        )),
        Turn::Close => Some(touchpoint_resumed(
            project,
            tp,
            PausedBy::Breaker { probe_at: None },
            paused_since.unwrap_or(now),
            now,
        )),
        Turn::Reopen(_) | Turn::None => None,
    }
}

/// Hands a notification to the notifier, if one is set, without waiting for it (counted
/// under way until it is in the outbox).
fn tell(notifier: &Notifier, n: Option<Notification>) {
    let (Some(notifications), Some(n)) = (notifier.notifications.get(), n) else {
        return;
    };
    let telling = notifier.telling();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let notifications = Arc::clone(notifications);
        runtime.spawn(async move {
            notifications.notify(n).await;
            drop(telling);
        });
    }
}

struct Gate {
    project: ProjectId,
    tp: TouchpointId,
    notifier: Notifier,
    /// Keyed by the limit too: an edited `maxConcurrency` takes effect at once.
    slots: Mutex<(usize, Arc<Semaphore>)>,
    pace: Mutex<Pace>,
    health: Mutex<Tracker>,
    clock: Arc<dyn Clock>,
}

struct Pace {
    /// The configured `maxRequestsPerSecond`.
    ceiling: Option<f64>,
    /// The rate requests go out at now; `None`: unlimited.
    rate: Option<f64>,
    /// When the next request may go out.
    next_at: Instant,
    /// A `Retry-After` in force.
    paused_until: Option<Instant>,
    /// Sends of the last second, to halve from what was actually sent.
    recent: VecDeque<Instant>,
    /// The rate the last overload was met at.
    overloaded_at: f64,
    /// See [`ReceiverLimits::with_time_scale`].
    scale: f64,
}

/// Leave to send one request to a touchpoint; give the answer back with [`Pass::answered`].
pub struct Pass {
    inner: PassOf,
}

enum PassOf {
    Local {
        _slot: OwnedSemaphorePermit,
        gate: Arc<Gate>,
        /// It is the breaker's probe.
        probe: bool,
    },
    Shared {
        gate: Arc<shared::SharedGate>,
        held: Option<shared::Held>,
        _place: OwnedSemaphorePermit,
    },
}

/// A place among the requests this process has under way to a touchpoint (at most its
/// `maxConcurrency`), taken before a batch is claimed; [`Reservation::pass`] then waits for
/// the touchpoint's pace and, where the limits are shared, for a slot of its own. So a batch is
/// claimed only when this process can send it soon, and a shared slot is held only while its
/// request goes out (its pace and the receiver's answer), not during the claim's write.
pub struct Reservation {
    place: OwnedSemaphorePermit,
    gate: Arc<Gate>,
    shared: Option<Arc<shared::SharedGate>>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        match &mut self.inner {
            PassOf::Shared { gate, held, .. } => {
                if let Some(mut h) = held.take() {
                    // A probe that went without an answer given back: another may go at once.
                    if let Some(lease) = h.probe.take() {
                        gate.release_probe(lease);
                    }
                    gate.give_back(h);
                }
            }
            PassOf::Local { gate, probe, .. } => {
                if *probe {
                    gate.health
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .probing_until = 0;
                }
            }
        }
    }
}

/// How the receiver answered, as far as its limits and its health care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An answer that is not an overload or a server error (a 4xx counts: the receiver is up).
    Served,
    /// 429 or 503, with its `Retry-After`.
    Overloaded(Option<Duration>),
    /// Another 5xx, a timeout or a broken exchange.
    Failed,
    /// No connection could be made.
    Unreachable,
}

impl Answer {
    /// The answer of an HTTP status (none: no answer came) and its `Retry-After`.
    pub fn of(status: Option<u16>, retry_after: Option<Duration>) -> Answer {
        match status {
            Some(429 | 503) => Answer::Overloaded(retry_after),
            Some(500..=599) | None => Answer::Failed,
            Some(_) => Answer::Served,
        }
    }

    /// The answer of a request that got none.
    pub fn of_error(e: &touchpoint_outbound::SendError) -> Answer {
        match e {
            touchpoint_outbound::SendError::Connect(_) => Answer::Unreachable,
            // Refused before it went (the SSRF guard): nothing about the receiver's health.
            touchpoint_outbound::SendError::Refused(_) => Answer::Served,
            _ => Answer::Failed,
        }
    }
}

impl ReceiverLimits {
    /// `default_concurrency`: requests in flight per touchpoint when it sets none.
    pub fn new(default_concurrency: usize) -> ReceiverLimits {
        ReceiverLimits {
            default_concurrency: default_concurrency.max(1),
            policy: HealthPolicy::default(),
            clock: Arc::new(SystemClock),
            time_scale: 1.0,
            gates: Mutex::new(HashMap::new()),
            shared: None,
            shared_gates: Mutex::new(HashMap::new()),
            notifier: Notifier::default(),
        }
    }

    /// Waits (at most `within`) until the breaker's pauses and resumptions this process made
    /// are in the notification outbox: a Lambda invocation does this before it returns, as
    /// its environment may be frozen or reaped after.
    pub async fn told(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let idle = self.notifier.idle.notified();
            if self
                .notifier
                .pending
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }

    /// Tells the circuit breaker's own pauses and resumptions to `notifications` (once; an
    /// admin's are told by the admin API).
    pub fn notify_with(&self, notifications: Arc<Notifications>) {
        let _ = self.notifier.notifications.set(notifications);
    }

    /// Holds the limits in `store`, shared with every other process that sends to the same
    /// receivers (set the time scale first).
    pub fn with_shared(
        mut self,
        store: Arc<dyn touchpoint::limits::SharedLimits>,
        clock: Arc<dyn touchpoint::clock::Clock>,
    ) -> ReceiverLimits {
        self.clock = Arc::clone(&clock);
        self.shared = Some(Arc::new(shared::Shared::new(
            store,
            clock,
            self.time_scale,
            self.policy.clone(),
            Arc::clone(&self.notifier),
        )));
        self
    }

    /// When the circuit breaker opens (set before the first request).
    pub fn with_health_policy(mut self, policy: HealthPolicy) -> ReceiverLimits {
        self.policy = policy;
        self
    }

    /// The clock of the breaker's cool-downs (set before the first request; the shared limits
    /// use the one given to [`ReceiverLimits::with_shared`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> ReceiverLimits {
        self.clock = clock;
        self
    }

    /// Whether the limits are held across processes.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn shared_gate(&self, ctx: &Arc<shared::Shared>, tp: &Touchpoint) -> Arc<shared::SharedGate> {
        let gate = {
            let mut gates = self.shared_gates.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(
                gates
                    .entry((tp.project_id, tp.id.clone()))
                    .or_insert_with(|| Arc::new(shared::SharedGate::new(Arc::clone(ctx), tp))),
            )
        };
        gate.configure(
            self.concurrency(tp),
            tp.spec.max_requests_per_second.map(f64::from),
        );
        gate
    }

    /// Gives back to the other processes every slot this one holds and is not using (the end
    /// of a Lambda invocation: a frozen instance must not keep them until their leases run
    /// out).
    pub async fn release_idle(&self) {
        let gates: Vec<Arc<shared::SharedGate>> = self
            .shared_gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for gate in gates {
            gate.release_if_idle(None).await;
        }
    }

    /// [`ReceiverLimits::release_idle`] at the end of a Lambda invocation, in the `left_ms`
    /// milliseconds left of it and half a second at most: a slot not given back in time is
    /// free when its lease runs out.
    pub async fn release_idle_within(&self, left_ms: i64) {
        let left = Duration::from_millis(left_ms.clamp(0, 500) as u64);
        let _ = tokio::time::timeout(left, self.release_idle()).await;
    }

    /// Back-pressure in compressed time: its floor and steps are `scale` times faster, a
    /// `Retry-After` `scale` times shorter (the configured `maxRequestsPerSecond` is not
    /// scaled: it is the receiver's).
    pub fn with_time_scale(mut self, scale: f64) -> ReceiverLimits {
        self.time_scale = scale.max(f64::MIN_POSITIVE);
        self
    }

    /// Requests in flight at once towards this touchpoint.
    pub fn concurrency(&self, tp: &Touchpoint) -> usize {
        tp.spec
            .max_concurrency
            .map_or(self.default_concurrency, usize::from)
            .max(1)
    }

    fn gate(&self, tp: &Touchpoint) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let gate = gates
            .entry((tp.project_id, tp.id.clone()))
            .or_insert_with(|| {
                Arc::new(Gate {
                    project: tp.project_id,
                    tp: tp.id.clone(),
                    notifier: Arc::clone(&self.notifier),
                    health: Mutex::new(Tracker::new(self.policy.clone(), self.time_scale)),
                    clock: Arc::clone(&self.clock),
                    slots: Mutex::new((0, Arc::new(Semaphore::new(0)))),
                    pace: Mutex::new(Pace {
                        ceiling: None,
                        rate: None,
                        next_at: Instant::now(),
                        paused_until: None,
                        recent: VecDeque::new(),
                        overloaded_at: 0.0,
                        scale: self.time_scale,
                    }),
                })
            });
        let gate = Arc::clone(gate);
        let limit = self.concurrency(tp);
        {
            let mut slots = gate.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.0 != limit {
                *slots = (limit, Arc::new(Semaphore::new(limit)));
            }
        }
        {
            let ceiling = tp.spec.max_requests_per_second.map(f64::from);
            let mut pace = gate.pace.lock().unwrap_or_else(|p| p.into_inner());
            if pace.ceiling != ceiling {
                pace.ceiling = ceiling;
                pace.rate = match (pace.rate, ceiling) {
                    (Some(r), Some(c)) => Some(r.min(c)),
                    (None, c) => c,
                    (Some(r), None) => Some(r),
                };
            }
        }
        gate
    }

    /// Waits for a slot and for the touchpoint's pace; `None` when that takes longer than
    /// `within` (the caller's time is up).
    pub async fn acquire(&self, tp: &Touchpoint, within: Duration) -> Option<Pass> {
        let until = Instant::now() + within;
        let reserved = self.reserve(tp, within).await?;
        reserved
            .pass(until.saturating_duration_since(Instant::now()))
            .await
    }

    /// Waits for a place among this process's requests to the touchpoint (see
    /// [`Reservation`]); `None` when that takes longer than `within`.
    pub async fn reserve(&self, tp: &Touchpoint, within: Duration) -> Option<Reservation> {
        let until = Instant::now() + within;
        let gate = self.gate(tp);
        // Paused longer than the caller can wait (a `Retry-After` known here): nothing is
        // claimed that could not go.
        if tp.paused.is_some() {
            return None;
        }
        let shared = self.shared.as_ref().map(|ctx| self.shared_gate(ctx, tp));
        let (paused_for, cooling) = match &shared {
            Some(shared) => {
                // A pause lifted elsewhere (a probe answered, an admin's resume) is seen here
                // within a read's time.
                shared.refresh().await;
                (shared.paused_for(), shared.cooling())
            }
            None => (gate.paused_for(), gate.cooling()),
        };
        // During the breaker's cool-down nothing is claimed, however long the caller could
        // wait: it comes back at its end.
        if paused_for > within || cooling {
            return None;
        }
        let slots = Arc::clone(&gate.slots.lock().unwrap_or_else(|p| p.into_inner()).1);
        let place = tokio::time::timeout_at(until, slots.acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Reservation {
            place,
            gate,
            shared,
        })
    }
}

impl Reservation {
    /// Waits for the touchpoint's pace (and a shared slot); `None` when that takes longer than
    /// `within`.
    pub async fn pass(self, within: Duration) -> Option<Pass> {
        let until = Instant::now() + within;
        let Reservation {
            place: slot,
            gate,
            shared,
        } = self;
        if let Some(shared) = shared {
            let held = shared.acquire(until).await?;
            return Some(Pass {
                inner: PassOf::Shared {
                    gate: shared,
                    held: Some(held),
                    _place: slot,
                },
            });
        }
        // The breaker: during a cool-down nothing goes; after it, one probe.
        let mut probe = false;
        loop {
            let now_ms = gate.clock.now_ms();
            let gating = {
                let mut health = gate.health.lock().unwrap_or_else(|p| p.into_inner());
                let gating = health.gating(now_ms);
                if gating == Gating::Probe {
                    health.probing_until = now_ms + health.probe_lease();
                }
                gating
            };
            match gating {
                Gating::Go => break,
                Gating::Probe => {
                    probe = true;
                    break;
                }
                // During a cool-down nothing waits for it: the caller comes back at its end.
                Gating::Cooling(_) => return None,
                Gating::Probing(t) => {
                    let wait = Duration::from_millis((t - now_ms).clamp(1, 100) as u64);
                    if Instant::now() + wait > until {
                        return None;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        // The time this request goes out at, reserved now so that requests waiting together
        // are spaced by the rate.
        let at = {
            let mut pace = gate.pace.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let mut at = pace.next_at.max(now);
            if let Some(p) = pace.paused_until {
                at = at.max(p);
            }
            // A pass there at once is taken even with no time to wait.
            if at > until.max(now) {
                if probe {
                    gate.health
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .probing_until = 0;
                }
                return None;
            }
            if let Some(rate) = pace.rate {
                pace.next_at = at + Duration::from_secs_f64(1.0 / rate);
            }
            at
        };
        // Not a zero sleep: the timer rounds up to its next millisecond tick, and a sender
        // that acquires one slot after another would go at most one request a millisecond.
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        {
            let mut pace = gate.pace.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            pace.recent.push_back(now);
            let second = Duration::from_secs(1).div_f64(pace.scale);
            while pace
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > second)
            {
                pace.recent.pop_front();
            }
        }
        Some(Pass {
            inner: PassOf::Local {
                _slot: slot,
                gate,
                probe,
            },
        })
    }
}

impl Gate {
    fn cooling(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cooling(self.clock.now_ms())
    }

    /// How long no request may go: a `Retry-After`, or the breaker's cool-down (or a probe's
    /// answer awaited).
    fn paused_for(&self) -> Duration {
        let retry_after = self
            .pace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paused_until
            .map_or(Duration::ZERO, |p| {
                p.saturating_duration_since(Instant::now())
            });
        let now = self.clock.now_ms();
        let breaker = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paused_until(now)
            .map_or(Duration::ZERO, |t| {
                Duration::from_millis((t - now).max(0) as u64)
            });
        retry_after.max(breaker)
    }
}

impl ReceiverLimits {
    /// The touchpoint's health: paused by an admin, by the breaker, degraded or healthy (read
    /// from the shared store when the limits are shared).
    pub async fn health(&self, tp: &Touchpoint) -> Health {
        if let Some(p) = &tp.paused {
            return Health::manual(p.since, p.reason.as_deref());
        }
        if let Some(ctx) = &self.shared {
            return self.shared_gate(ctx, tp).health().await;
        }
        let now = self.clock.now_ms();
        self.gate(tp)
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .health(now)
    }

    /// When requests to the touchpoint may go again, if they may not now: an admin's pause
    /// (looked at again after `recheck`), the breaker's cool-down or a `Retry-After`.
    pub fn paused_until(&self, tp: &Touchpoint, recheck: Duration) -> Option<Millis> {
        let now = self.clock.now_ms();
        if tp.paused.is_some() {
            return Some(now + recheck.as_millis() as Millis);
        }
        let paused_for = match &self.shared {
            Some(ctx) => self.shared_gate(ctx, tp).paused_for(),
            None => self.gate(tp).paused_for(),
        };
        (!paused_for.is_zero()).then(|| now + paused_for.as_millis() as Millis)
    }

    /// The touchpoint's open breaker as this process last saw it (no read).
    pub fn breaker_known(&self, tp: &Touchpoint) -> Option<touchpoint::health::Breaker> {
        match &self.shared {
            Some(ctx) => self.shared_gate(ctx, tp).breaker(),
            None => self
                .gate(tp)
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .breaker
                .clone(),
        }
    }

    /// The touchpoint's open breaker, read afresh where the limits are shared (an error when
    /// it cannot be read: nothing is decided on what this process remembers).
    pub async fn breaker_now(
        &self,
        tp: &Touchpoint,
    ) -> Result<Option<touchpoint::health::Breaker>, touchpoint::StoreError> {
        if let Some(ctx) = &self.shared {
            return self.shared_gate(ctx, tp).read_breaker().await;
        }
        Ok(self.breaker_known(tp))
    }

    /// Closes the touchpoint's breaker (an admin's resume): requests go again at once.
    pub async fn close_breaker(&self, tp: &Touchpoint) -> Result<(), touchpoint::StoreError> {
        if let Some(ctx) = &self.shared {
            return self.shared_gate(ctx, tp).close().await;
        }
        self.gate(tp)
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&Turn::Close);
        Ok(())
    }

    /// The rate a touchpoint's requests go out at now (`None`: unlimited), for reports.
    pub fn rate(&self, tp: &Touchpoint) -> Option<f64> {
        if let Some(ctx) = &self.shared {
            return self.shared_gate(ctx, tp).rate();
        }
        self.gate(tp)
            .pace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rate
    }
}

impl Pass {
    /// Gives the receiver's answer back: an overload slows the whole touchpoint down, anything
    /// else lets it speed up again (additive increase, multiplicative decrease).
    pub fn answered(mut self, answer: Answer) {
        let (gate, probe) = match &mut self.inner {
            PassOf::Shared { gate, held, .. } => {
                if let Answer::Overloaded(retry_after) = answer {
                    gate.overloaded(retry_after);
                }
                let probe = held.as_mut().and_then(|h| h.probe.take());
                gate.answered(answer, probe);
                return;
            }
            PassOf::Local { gate, probe, .. } => (Arc::clone(gate), std::mem::take(probe)),
        };
        {
            let now = gate.clock.now_ms();
            let mut health = gate.health.lock().unwrap_or_else(|p| p.into_inner());
            let paused_since = health.breaker.as_ref().map(|b| b.since);
            let turn = health.answered(answer, probe, now);
            tell(
                &gate.notifier,
                breaker_notification(gate.project, &gate.tp, &turn, paused_since, now),
            );
            if let Turn::Trip(b) | Turn::Reopen(b) = &turn {
                tracing::warn!(reason = %b.reason, cooldown_ms = b.until - now, "receiver down: touchpoint paused");
            } else if turn == Turn::Close {
                tracing::info!("receiver answered the probe: touchpoint resumed");
            }
            health.apply(&turn);
        }
        let mut pace = gate.pace.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Answer::Overloaded(retry_after) => {
                let (floor, scale) = (MIN_RATE * pace.scale, pace.scale);
                let sent = pace.recent.len().max(1) as f64 * scale;
                let from = pace.rate.map_or(sent, |r| r.min(sent.max(floor)));
                pace.overloaded_at = from;
                pace.rate = Some((from / 2.0).max(floor));
                if let Some(wait) = retry_after {
                    let until = Instant::now() + wait.min(MAX_PAUSE).div_f64(scale);
                    pace.paused_until = Some(pace.paused_until.map_or(until, |p| p.max(until)));
                }
            }
            Answer::Served | Answer::Failed | Answer::Unreachable => {
                if let Some(rate) = pace.rate {
                    let up = rate + INCREASE * pace.scale;
                    pace.rate = match pace.ceiling {
                        Some(c) => Some(up.min(c)),
                        // Back to no limit at twice the rate the overload was met at.
                        None if up >= 2.0 * pace.overloaded_at => None,
                        None => Some(up),
                    };
                }
                if pace.paused_until.is_some_and(|p| p <= Instant::now()) {
                    pace.paused_until = None;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn touchpoint(concurrency: Option<u16>, rps: Option<u16>) -> Touchpoint {
        use touchpoint::model::*;
        Touchpoint {
            id: "tp_1".into(),
            project_id: 1,
            spec: TouchpointSpec {
                name: "n".into(),
                kind: Kind::Notification,
                description: None,
                url: "https://x.example.com/touch".into(),
                batch_size: 1,
                receipt: Receipt::Sync,
                user_attributes: Vec::new(),
                template_params: Vec::new(),
                request_timeout_seconds: None,
                max_concurrency: concurrency,
                max_requests_per_second: rps,
            },
            token: None,
            rotation: None,
            paused: None,
            enabled: true,
            space_ids: Vec::new(),
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_by_the_rate_and_held_to_the_concurrency() {
        let limits = ReceiverLimits::new(4);
        let tp = touchpoint(Some(2), Some(10));
        let started = Instant::now();
        let mut passes = Vec::new();
        for _ in 0..2 {
            passes.push(limits.acquire(&tp, Duration::from_secs(5)).await.unwrap());
        }
        assert_eq!(started.elapsed(), Duration::from_millis(100), "10 a second");
        assert!(
            limits.acquire(&tp, Duration::from_secs(1)).await.is_none(),
            "both slots held"
        );
        passes.pop().unwrap().answered(Answer::Served);
        assert!(limits.acquire(&tp, Duration::from_secs(1)).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_overload_halves_the_rate_and_answers_bring_it_back() {
        let limits = ReceiverLimits::new(4);
        let tp = touchpoint(None, Some(20));
        let pass = limits.acquire(&tp, Duration::from_secs(1)).await.unwrap();
        pass.answered(Answer::Overloaded(Some(Duration::from_secs(2))));
        assert_eq!(
            limits.rate(&tp),
            Some(MIN_RATE.max(0.5)),
            "from what was sent"
        );
        let before = Instant::now();
        let pass = limits.acquire(&tp, Duration::from_secs(5)).await.unwrap();
        assert!(
            before.elapsed() >= Duration::from_secs(2),
            "Retry-After held it"
        );
        for _ in 0..100 {
            pass_served(&limits, &tp).await;
        }
        assert_eq!(
            limits.rate(&tp),
            Some(20.0),
            "back up to the limit, not past it"
        );
        drop(pass);
    }

    /// Wall-clock milliseconds that follow tokio's (paused) time.
    struct TokioClock(Instant);
    impl Clock for TokioClock {
        fn now_ms(&self) -> Millis {
            1_000_000_000 + self.0.elapsed().as_millis() as Millis
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_receiver_down_pauses_the_touchpoint_until_a_probe_is_answered() {
        use touchpoint::health::HealthState;
        let limits = ReceiverLimits::new(4).with_clock(Arc::new(TokioClock(Instant::now())));
        let tp = touchpoint(Some(4), None);
        for _ in 0..19 {
            limits
                .acquire(&tp, Duration::from_secs(1))
                .await
                .unwrap()
                .answered(Answer::of(Some(502), None));
        }
        assert_eq!(limits.health(&tp).await.state, HealthState::Degraded);
        limits
            .acquire(&tp, Duration::from_secs(1))
            .await
            .unwrap()
            .answered(Answer::Failed);
        let health = limits.health(&tp).await;
        assert_eq!(health.state, HealthState::Paused);
        assert_eq!(
            health.reason.as_deref(),
            Some("20 of the last 20 requests failed")
        );
        // Nothing is reserved that could not go before its caller's time is up.
        let asked = Instant::now();
        assert!(limits.acquire(&tp, Duration::from_secs(59)).await.is_none());
        assert!(limits.reserve(&tp, Duration::from_secs(30)).await.is_none());
        assert!(
            limits
                .reserve(&tp, Duration::from_secs(3600))
                .await
                .is_none(),
            "nothing is claimed during a cool-down, however long the caller could wait"
        );
        assert!(asked.elapsed() < Duration::from_secs(1), "refused at once");
        // The cool-down ends: one probe, and nothing else while it is out.
        tokio::time::sleep(Duration::from_secs(61)).await;
        let probe = limits.acquire(&tp, Duration::from_secs(1)).await.unwrap();
        assert!(limits.acquire(&tp, Duration::from_secs(1)).await.is_none());
        // Dropped unsent: the next request probes.
        drop(probe);
        let probe = limits.acquire(&tp, Duration::from_secs(1)).await.unwrap();
        probe.answered(Answer::Failed);
        assert!(
            limits
                .acquire(&tp, Duration::from_secs(110))
                .await
                .is_none(),
            "paused again, for two minutes"
        );
        tokio::time::sleep(Duration::from_secs(121)).await;
        let probe = limits.acquire(&tp, Duration::from_secs(1)).await.unwrap();
        probe.answered(Answer::Served);
        assert_eq!(limits.health(&tp).await.state, HealthState::Healthy);
        for _ in 0..4 {
            pass_served(&limits, &tp).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_touchpoint_paused_by_an_admin_takes_no_request() {
        let limits = ReceiverLimits::new(4);
        let mut tp = touchpoint(Some(4), None);
        tp.paused = Some(touchpoint::model::ManualPause {
            since: 5,
            reason: Some("maintenance".into()),
        });
        assert!(limits.acquire(&tp, Duration::from_secs(10)).await.is_none());
        let health = limits.health(&tp).await;
        assert!(health.manual);
        assert_eq!(health.reason.as_deref(), Some("maintenance"));
        assert!(limits.paused_until(&tp, Duration::from_secs(30)).is_some());
    }

    #[tokio::test]
    async fn a_free_slot_without_a_rate_is_taken_without_waiting() {
        // One sender taking slot after slot (a large dispatch's loop): a wait of no time must
        // not cost a timer tick (a millisecond) each, which held such a dispatch to about a
        // thousand requests a second. Real time: 2,000 takes cost over 2 s with the tick, a
        // few milliseconds without.
        let limits = ReceiverLimits::new(4);
        let tp = touchpoint(Some(64), None);
        let started = Instant::now();
        for _ in 0..2_000 {
            pass_served(&limits, &tp).await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "2,000 free slots took {:?}",
            started.elapsed()
        );
    }

    async fn pass_served(limits: &ReceiverLimits, tp: &Touchpoint) {
        limits
            .acquire(tp, Duration::from_secs(10))
            .await
            .unwrap()
            .answered(Answer::Served);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_touchpoint_is_slowed_by_an_overload_and_freed_again() {
        let limits = ReceiverLimits::new(4);
        let tp = touchpoint(None, None);
        for _ in 0..8 {
            pass_served(&limits, &tp).await;
        }
        assert_eq!(limits.rate(&tp), None);
        limits
            .acquire(&tp, Duration::from_secs(1))
            .await
            .unwrap()
            .answered(Answer::Overloaded(None));
        let rate = limits.rate(&tp).unwrap();
        assert!((4.0..=5.0).contains(&rate), "half of the 9 sent: {rate}");
        for _ in 0..200 {
            pass_served(&limits, &tp).await;
        }
        assert_eq!(limits.rate(&tp), None, "unlimited again");
    }
}
