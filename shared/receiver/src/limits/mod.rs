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

mod shared;

pub use shared::{IDLE, LEASE, REFRESH};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use touchpoint::ProjectId;
use touchpoint::ids::TouchpointId;
use touchpoint::model::Touchpoint;

/// Requests a second a 429 or 503 never takes the rate below.
pub const MIN_RATE: f64 = 0.5;
/// Requests a second added back by each answer that is not an overload.
pub const INCREASE: f64 = 0.5;
/// The longest `Retry-After` honoured for the whole touchpoint.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The limits of every touchpoint this process sends to.
pub struct ReceiverLimits {
    default_concurrency: usize,
    /// Divides durations and multiplies rates of the back-pressure (1 in production; compressed
    /// time in simulations, where a second is shorter).
    time_scale: f64,
    gates: Mutex<HashMap<(ProjectId, TouchpointId), Arc<Gate>>>,
    /// Limits held across processes, when set.
    shared: Option<Arc<shared::Shared>>,
    shared_gates: Mutex<HashMap<(ProjectId, TouchpointId), Arc<shared::SharedGate>>>,
}

struct Gate {
    /// Keyed by the limit too: an edited `maxConcurrency` takes effect at once.
    slots: Mutex<(usize, Arc<Semaphore>)>,
    pace: Mutex<Pace>,
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
        if let PassOf::Shared { gate, held, .. } = &mut self.inner
            && let Some(h) = held.take()
        {
            gate.give_back(h);
        }
    }
}

/// How the receiver answered, as far as its limits care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Anything but an overload (a success, a failure, no answer).
    Served,
    /// 429 or 503, with its `Retry-After`.
    Overloaded(Option<Duration>),
}

impl Answer {
    /// The answer of an HTTP status and its `Retry-After`.
    pub fn of(status: Option<u16>, retry_after: Option<Duration>) -> Answer {
        match status {
            Some(429 | 503) => Answer::Overloaded(retry_after),
            _ => Answer::Served,
        }
    }
}

impl ReceiverLimits {
    /// `default_concurrency`: requests in flight per touchpoint when it sets none.
    pub fn new(default_concurrency: usize) -> ReceiverLimits {
        ReceiverLimits {
            default_concurrency: default_concurrency.max(1),
            time_scale: 1.0,
            gates: Mutex::new(HashMap::new()),
            shared: None,
            shared_gates: Mutex::new(HashMap::new()),
        }
    }

    /// Holds the limits in `store`, shared with every other process that sends to the same
    /// receivers (set the time scale first).
    pub fn with_shared(
        mut self,
        store: Arc<dyn touchpoint::limits::SharedLimits>,
        clock: Arc<dyn touchpoint::clock::Clock>,
    ) -> ReceiverLimits {
        self.shared = Some(Arc::new(shared::Shared::new(store, clock, self.time_scale)));
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
        let shared = self.shared.as_ref().map(|ctx| self.shared_gate(ctx, tp));
        let paused_for = match &shared {
            Some(shared) => shared.paused_for(),
            None => gate
                .pace
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .paused_until
                .map_or(Duration::ZERO, |p| {
                    p.saturating_duration_since(Instant::now())
                }),
        };
        if paused_for > within {
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
            inner: PassOf::Local { _slot: slot, gate },
        })
    }
}

impl ReceiverLimits {
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
    pub fn answered(self, answer: Answer) {
        let gate = match &self.inner {
            PassOf::Shared { gate, .. } => {
                if let Answer::Overloaded(retry_after) = answer {
                    gate.overloaded(retry_after);
                }
                return;
            }
            PassOf::Local { gate, .. } => gate,
        };
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
            Answer::Served => {
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
