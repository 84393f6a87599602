//! The port through which a touchpoint's limits hold across processes: on AWS every dispatcher
//! invocation, receipt poll and test send runs in a Lambda instance of its own, so the
//! `maxConcurrency` slots and the back-pressure of a touchpoint live in a shared store.
//!
//! A touchpoint has `maxConcurrency` slots. A process sends only through a slot it holds: it
//! takes a free one (never taken, given back, or its lease expired) for a lease, keeps it over
//! many requests, renews it before it runs out and gives it back when it has nothing more to
//! send. Each slot is paced at `maxRequestsPerSecond ÷ maxConcurrency`, so the touchpoint never
//! sees more than its limits whichever processes hold the slots. A holder sends only while its
//! lease outlasts the request's pace, so a slot whose holder crashed is free again, at the
//! right pace, when its lease expires.
//!
//! The back-pressure is one record per touchpoint: the last cut of the rate (a 429 or 503 from
//! the receiver) and a `Retry-After` pause, read by every process that sends to it. It also
//! holds the receiver's health: the counts of recent requests and failures every process adds
//! to, and the circuit breaker ([`crate::health`]).

use async_trait::async_trait;

use crate::clock::Millis;
use crate::health::{Breaker, Window};
use crate::ids::TouchpointId;
use crate::model::ProjectId;
use crate::ports::StoreError;

/// One slot as the shared store holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlotState {
    pub slot: u16,
    /// The lease holding it; `None`: given back.
    pub lease: Option<String>,
    /// When the lease runs out (epoch ms).
    pub until: Millis,
}

/// The touchpoint's shared back-pressure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pressure {
    /// The last cut: the rate it set (requests a second), the rate it was met at, and when.
    pub cut: Option<Cut>,
    /// Every request waits until then (a `Retry-After`); 0: none.
    pub paused_until: Millis,
    /// Requests and failures of the recent slots, every process's.
    pub window: Window,
    /// The circuit breaker, when open.
    pub breaker: Option<Breaker>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cut {
    pub to: f64,
    pub from: f64,
    pub at: Millis,
}

/// What one read of a touchpoint's limits returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitsState {
    pub slots: Vec<SlotState>,
    pub pressure: Pressure,
}

#[async_trait]
pub trait SharedLimits: Send + Sync {
    /// Every slot ever taken and the back-pressure, in one read.
    async fn state(&self, project: ProjectId, tp: &TouchpointId)
    -> Result<LimitsState, StoreError>;

    /// The back-pressure alone: what every sending process reads again every few hundred
    /// milliseconds, one small item instead of every slot.
    async fn pressure(&self, project: ProjectId, tp: &TouchpointId)
    -> Result<Pressure, StoreError>;

    /// Takes `slot` for `lease` until `until` if it is free at `now`; answers when its pace lets
    /// the next request go (the previous holder's last request plus one interval), or `None`
    /// when another lease holds it.
    async fn take(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        slot: u16,
        lease: &str,
        now: Millis,
        until: Millis,
    ) -> Result<Option<Millis>, StoreError>;

    /// Extends a lease; `false` when it was lost (it expired and another took the slot).
    async fn renew(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        slot: u16,
        lease: &str,
        until: Millis,
    ) -> Result<bool, StoreError>;

    /// Gives the slot back; the next holder's first request waits until `free_at`.
    async fn release(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        slot: u16,
        lease: &str,
        free_at: Millis,
    ) -> Result<(), StoreError>;

    /// Records a cut of the rate unless another was recorded at or after `unless_since` (an
    /// overload seen by many requests at once halves the rate once).
    async fn cut(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        cut: Cut,
        unless_since: Millis,
    ) -> Result<(), StoreError>;

    /// Adds one process's requests and failures to window slot `slot` (a slot of an older
    /// number is replaced); answers the back-pressure as it is after.
    async fn report(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        slot: i64,
        requests: u32,
        failures: u32,
    ) -> Result<Pressure, StoreError>;

    /// Opens the breaker as `breaker` unless it is open; answers whether this call opened it.
    async fn trip(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        breaker: &Breaker,
    ) -> Result<bool, StoreError>;

    /// Takes the probe of an open breaker whose cool-down has ended at `now`, until `until`,
    /// unless another process holds it; answers whether this one does.
    async fn probe(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError>;

    /// After a probe (or an admin's resume): `Some` opens the breaker again as given, `None`
    /// closes it and empties the window. `probe`: the probe's lease as [`SharedLimits::probe`]
    /// wrote it; the write is made only while that probe still holds it (a probe answered after
    /// its lease ran out, or after an admin's resume, changes nothing). `None`: an admin's
    /// resume, made whatever holds it.
    async fn settle(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        next: Option<&Breaker>,
        probe: Option<Millis>,
    ) -> Result<bool, StoreError>;

    /// Gives back a probe taken and not sent (its lease `probe`), so that another request may
    /// probe at once rather than after the lease.
    async fn release_probe(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        probe: Millis,
    ) -> Result<(), StoreError>;

    /// Holds every request until `until`, unless a longer pause is recorded.
    async fn pause(
        &self,
        project: ProjectId,
        tp: &TouchpointId,
        until: Millis,
    ) -> Result<(), StoreError>;
}
