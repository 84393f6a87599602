//! A receiver's health, and the circuit breaker that pauses a touchpoint whose receiver is down.
//!
//! Every request to a touchpoint (batches, receipt polls, test sends) is counted, across every
//! process that sends to it, in a window of five one-minute slots. When most of the recent
//! requests failed (transport errors, 5xx, 429: by default 90 % of at least 20 in five minutes)
//! or a process saw ten connection failures in a row, the breaker opens: the touchpoint is
//! `paused` for a cool-down, during which no request goes to it. Then one request, the probe,
//! goes; if it is answered the touchpoint resumes, otherwise it is paused again, for twice as
//! long (at most [`HealthPolicy::max_cooldown`]). A paused touchpoint's batches wait without
//! using up their attempts.

use serde::Serialize;
use utoipa::ToSchema;

use crate::clock::{Millis, rfc3339};

/// When the breaker opens, and for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthPolicy {
    /// The window over which failures are counted (five one-minute slots).
    pub window: std::time::Duration,
    /// Requests the window must hold before its failure ratio counts.
    pub min_requests: u32,
    /// The share of failed requests that opens the breaker.
    pub failure_ratio: f64,
    /// Connection failures in a row, seen by one process, that open it.
    pub unreachable_in_a_row: u32,
    /// The first pause; each failed probe doubles it.
    pub cooldown: std::time::Duration,
    pub max_cooldown: std::time::Duration,
    /// The share of failed requests (of at least a quarter of `min_requests`) that marks the
    /// touchpoint `degraded`.
    pub degraded_ratio: f64,
}

impl Default for HealthPolicy {
    fn default() -> HealthPolicy {
        HealthPolicy {
            window: std::time::Duration::from_secs(300),
            min_requests: 20,
            failure_ratio: 0.9,
            unreachable_in_a_row: 10,
            cooldown: std::time::Duration::from_secs(60),
            max_cooldown: std::time::Duration::from_secs(600),
            degraded_ratio: 0.5,
        }
    }
}

/// Slots of the window.
pub const SLOTS: usize = 5;

/// Requests and failures per slot; a slot is `window / SLOTS` long and numbered from the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// (slot number, requests, failures), at `number % SLOTS`.
    pub slots: [(i64, u32, u32); SLOTS],
}

impl Window {
    /// The slot number of `now` for slots `slot_ms` long.
    pub fn slot_of(now: Millis, slot_ms: i64) -> i64 {
        now.div_euclid(slot_ms.max(1))
    }

    pub fn add(&mut self, slot: i64, requests: u32, failures: u32) {
        let at = &mut self.slots[slot.rem_euclid(SLOTS as i64) as usize];
        if at.0 == slot {
            at.1 = at.1.saturating_add(requests);
            at.2 = at.2.saturating_add(failures);
        } else if at.0 < slot {
            *at = (slot, requests, failures);
        }
    }

    /// Requests and failures of the slots within the window ending with `slot`.
    pub fn totals(&self, slot: i64) -> (u32, u32) {
        self.slots
            .iter()
            .filter(|(n, _, _)| *n > slot - SLOTS as i64 && *n <= slot)
            .fold((0, 0), |(r, f), (_, sr, sf)| {
                (r.saturating_add(*sr), f.saturating_add(*sf))
            })
    }

    /// The slots of both, newest kept where they differ.
    pub fn merge(&mut self, other: &Window) {
        for (i, theirs) in other.slots.iter().enumerate() {
            let ours = &mut self.slots[i];
            if theirs.0 > ours.0 || (theirs.0 == ours.0 && theirs.1 > ours.1) {
                *ours = *theirs;
            }
        }
    }
}

/// An open breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    /// When it opened (the first time in a row).
    pub since: Millis,
    pub reason: String,
    /// The end of the current cool-down: then one probe may go.
    pub until: Millis,
    /// A probe under way until then (0: none).
    pub probe_until: Millis,
    /// Cool-downs in a row (1 for the first).
    pub opened: u32,
}

impl HealthPolicy {
    /// The length of a window slot, in compressed time.
    pub fn slot_ms(&self, scale: f64) -> i64 {
        ms(self.window.div_f64(scale.max(f64::MIN_POSITIVE)) / SLOTS as u32).max(1)
    }

    /// The cool-down after `opened` pauses in a row.
    pub fn cooldown_ms(&self, opened: u32, scale: f64) -> i64 {
        let doubled = self
            .cooldown
            .saturating_mul(1 << opened.saturating_sub(1).min(16))
            .min(self.max_cooldown);
        ms(doubled.div_f64(scale.max(f64::MIN_POSITIVE))).max(1)
    }

    /// Why the breaker should open, if it should: `totals` of the window, and the connection
    /// failures in a row one process saw.
    pub fn should_open(
        &self,
        (requests, failures): (u32, u32),
        unreachable: u32,
    ) -> Option<String> {
        if unreachable >= self.unreachable_in_a_row {
            return Some(format!("{unreachable} connection failures in a row"));
        }
        if requests >= self.min_requests
            && f64::from(failures) >= self.failure_ratio * f64::from(requests)
        {
            return Some(format!("{failures} of the last {requests} requests failed"));
        }
        None
    }

    /// Whether the window marks a touchpoint that is not paused as degraded.
    pub fn degraded(&self, (requests, failures): (u32, u32)) -> bool {
        requests >= (self.min_requests / 4).max(1)
            && f64::from(failures) >= self.degraded_ratio * f64::from(requests)
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How a touchpoint's receiver is doing, as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Healthy,
    Degraded,
    Paused,
}

/// A touchpoint's `health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = ReceiverHealth)]
pub struct Health {
    pub state: HealthState,
    /// Since when (absent for a healthy touchpoint with no history).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Paused by an admin (`POST …/pause`), not by the breaker.
    pub manual: bool,
    /// While paused by the breaker: when the next probe may go.
    #[serde(rename = "probeAt", skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub probe_at: Option<String>,
}

impl Health {
    pub fn healthy() -> Health {
        Health {
            state: HealthState::Healthy,
            since: None,
            reason: None,
            manual: false,
            probe_at: None,
        }
    }

    pub fn manual(since: Millis, reason: Option<&str>) -> Health {
        Health {
            state: HealthState::Paused,
            since: Some(rfc3339(since)),
            reason: reason.map(str::to_owned),
            manual: true,
            probe_at: None,
        }
    }

    pub fn broken(b: &Breaker) -> Health {
        Health {
            state: HealthState::Paused,
            since: Some(rfc3339(b.since)),
            reason: Some(b.reason.clone()),
            manual: false,
            probe_at: Some(rfc3339(b.until)),
        }
    }

    pub fn degraded(reason: String) -> Health {
        Health {
            state: HealthState::Degraded,
            since: None,
            reason: Some(reason),
            manual: false,
            probe_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_the_last_five_slots_only() {
        let mut w = Window::default();
        w.add(10, 5, 1);
        w.add(12, 3, 3);
        w.add(12, 2, 2);
        assert_eq!(w.totals(12), (10, 6));
        assert_eq!(w.totals(14), (10, 6));
        assert_eq!(w.totals(15), (5, 5), "slot 10 left the window");
        w.add(15, 1, 0);
        assert_eq!(w.totals(15), (6, 5), "slot 15 took slot 10's place");
        // A late report for a slot already replaced is dropped, not added to the new one.
        w.add(10, 100, 100);
        assert_eq!(w.totals(15), (6, 5));
    }

    #[test]
    fn the_breaker_opens_on_most_requests_failing_or_connections_refused_in_a_row() {
        let p = HealthPolicy::default();
        assert_eq!(p.should_open((19, 19), 0), None, "too few to judge");
        assert!(p.should_open((20, 18), 0).is_some());
        assert_eq!(p.should_open((20, 17), 0), None);
        assert!(p.should_open((0, 0), 10).is_some());
        assert!(p.degraded((10, 5)) && !p.degraded((10, 4)) && !p.degraded((4, 4)));
        assert_eq!(p.cooldown_ms(1, 1.0), 60_000);
        assert_eq!(p.cooldown_ms(2, 1.0), 120_000);
        assert_eq!(p.cooldown_ms(9, 1.0), 600_000, "at most ten minutes");
        assert_eq!(p.cooldown_ms(1, 60.0), 1_000, "compressed");
        assert_eq!(p.slot_ms(1.0), 60_000);
    }
}
