//! One process's view of a touchpoint's health and circuit breaker ([`touchpoint::health`]):
//! the same decisions whether the limits are held in this process or shared.

use touchpoint::clock::Millis;
use touchpoint::health::{Breaker, Health, HealthPolicy, Window};

use super::Answer;

/// What a request may do now, as far as the breaker goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Gating {
    /// No breaker: go.
    Go,
    /// The cool-down is over and no probe is out: this request may be the probe.
    Probe,
    /// The cool-down runs until then: nothing goes, and nobody should wait for it in a
    /// request (the batch goes back, and its delivery comes back then).
    Cooling(Millis),
    /// Another request probes: look again then (a probe's answer comes within a request's
    /// time).
    Probing(Millis),
}

/// What an answer makes of the breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Turn {
    None,
    /// Open it.
    Trip(Breaker),
    /// The probe was answered: close it.
    Close,
    /// The probe failed: open it again.
    Reopen(Breaker),
}

#[derive(Clone, Debug)]
pub(super) struct Tracker {
    pub policy: HealthPolicy,
    pub scale: f64,
    /// Every process's counts, as far as this one knows them (with its own).
    pub window: Window,
    /// This process's counts not yet added to the shared window: (slot, requests, failures).
    pub unreported: Option<(i64, u32, u32)>,
    /// Counts of an earlier slot not yet added (the slot turned before they went): they go
    /// first, at once.
    pub overdue: Option<(i64, u32, u32)>,
    /// Connection failures in a row, this process's.
    pub unreachable: u32,
    pub breaker: Option<Breaker>,
    /// A probe of this process is out (until then).
    pub probing_until: Millis,
}

/// How long a probe may stay out before another process may probe (its answer, or its
/// process, was lost): more than the longest request timeout (60 s) and its pace.
pub(super) const PROBE_LEASE_MS: i64 = 90_000;

/// While a probe is out, a request that cannot wait for its answer comes back this much later.
pub(super) const PROBE_WAIT_MS: i64 = 2_000;

impl Tracker {
    pub fn new(policy: HealthPolicy, scale: f64) -> Tracker {
        Tracker {
            policy,
            scale,
            window: Window::default(),
            unreported: None,
            overdue: None,
            unreachable: 0,
            breaker: None,
            probing_until: 0,
        }
    }

    fn slot(&self, now: Millis) -> i64 {
        Window::slot_of(now, self.policy.slot_ms(self.scale))
    }

    pub fn probe_lease(&self) -> i64 {
        (PROBE_LEASE_MS as f64 / self.scale).max(50.0) as i64
    }

    /// When requests may go again, if they may not now: the cool-down's end, or a little later
    /// while a probe is out.
    pub fn paused_until(&self, now: Millis) -> Option<Millis> {
        match self.gating(now) {
            Gating::Cooling(t) => Some(t),
            Gating::Probing(_) => Some(now + (PROBE_WAIT_MS as f64 / self.scale).max(50.0) as i64),
            Gating::Go | Gating::Probe => None,
        }
    }

    /// Whether a cool-down runs (nothing is claimed then).
    pub fn cooling(&self, now: Millis) -> bool {
        matches!(self.gating(now), Gating::Cooling(_))
    }

    pub fn gating(&self, now: Millis) -> Gating {
        match &self.breaker {
            None => Gating::Go,
            Some(b) if now < b.until => Gating::Cooling(b.until),
            Some(b) if b.probe_until > now || self.probing_until > now => {
                Gating::Probing(b.probe_until.max(self.probing_until).min(now + 100))
            }
            Some(_) => Gating::Probe,
        }
    }

    /// Counts an answer (`probe`: it answered the probe) and says what it does to the breaker.
    pub fn answered(&mut self, answer: Answer, probe: bool, now: Millis) -> Turn {
        let failed = !matches!(answer, Answer::Served);
        if probe {
            self.probing_until = 0;
            return match &self.breaker {
                Some(_) if !failed => Turn::Close,
                Some(b) => Turn::Reopen(self.reopened(b, now)),
                None => Turn::None,
            };
        }
        let slot = self.slot(now);
        self.window.add(slot, 1, u32::from(failed));
        self.unreported = Some(match self.unreported {
            Some((s, r, f)) if s == slot => (s, r + 1, f + u32::from(failed)),
            earlier => {
                if earlier.is_some() {
                    self.overdue = earlier;
                }
                (slot, 1, u32::from(failed))
            }
        });
        self.unreachable = if matches!(answer, Answer::Unreachable) {
            self.unreachable + 1
        } else {
            0
        };
        self.judge(now)
    }

    /// Opens the breaker if the window (or this process's streak) says so.
    pub fn judge(&self, now: Millis) -> Turn {
        if self.breaker.is_some() {
            return Turn::None;
        }
        match self
            .policy
            .should_open(self.window.totals(self.slot(now)), self.unreachable)
        {
            Some(reason) => Turn::Trip(Breaker {
                since: now,
                reason,
                until: now + self.policy.cooldown_ms(1, self.scale),
                probe_until: 0,
                opened: 1,
            }),
            None => Turn::None,
        }
    }

    fn reopened(&self, b: &Breaker, now: Millis) -> Breaker {
        let opened = b.opened.saturating_add(1);
        Breaker {
            since: b.since,
            reason: b.reason.clone(),
            until: now + self.policy.cooldown_ms(opened, self.scale),
            probe_until: 0,
            opened,
        }
    }

    /// Whether this process's unreported counts should go within a [`super::shared::REPORT`]
    /// (a failure among them, or an earlier slot's), rather than within a
    /// [`super::shared::QUIET_REPORT`].
    pub fn report_urgent(&self) -> bool {
        self.overdue.is_some() || self.unreported.is_some_and(|(_, _, f)| f > 0)
    }

    /// The next counts to add to the shared window: an earlier slot's first.
    pub fn take_unreported(&mut self) -> Option<(i64, u32, u32)> {
        self.overdue.take().or_else(|| self.unreported.take())
    }

    /// Applies a turn to what this process knows.
    pub fn apply(&mut self, turn: &Turn) {
        match turn {
            Turn::None => {}
            Turn::Trip(b) | Turn::Reopen(b) => {
                self.breaker = Some(b.clone());
                self.unreachable = 0;
            }
            Turn::Close => {
                self.breaker = None;
                self.window = Window::default();
                self.unreported = None;
                self.overdue = None;
                self.unreachable = 0;
            }
        }
    }

    /// The touchpoint's health as this process knows it.
    pub fn health(&self, now: Millis) -> Health {
        if let Some(b) = &self.breaker {
            return Health::broken(b);
        }
        let totals = self.window.totals(self.slot(now));
        if self.policy.degraded(totals) {
            return Health::degraded(format!(
                "{} of the last {} requests failed",
                totals.1, totals.0
            ));
        }
        Health::healthy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_failures_trip_a_probe_closes_and_a_failed_probe_doubles_the_pause() {
        let mut t = Tracker::new(HealthPolicy::default(), 1.0);
        let mut now = 1_000_000;
        for i in 0..19 {
            assert_eq!(t.answered(Answer::Failed, false, now + i), Turn::None);
        }
        let turn = t.answered(Answer::Failed, false, now + 19);
        let Turn::Trip(b) = &turn else {
            panic!("{turn:?}")
        };
        assert_eq!(b.until, now + 19 + 60_000);
        t.apply(&turn);
        assert_eq!(t.gating(now + 20), Gating::Cooling(b.until));
        now = b.until;
        assert_eq!(t.gating(now), Gating::Probe);
        t.probing_until = now + t.probe_lease();
        assert!(
            matches!(t.gating(now + 1), Gating::Probing(_)),
            "one probe at a time"
        );
        let turn = t.answered(Answer::Unreachable, true, now + 5);
        let Turn::Reopen(again) = &turn else {
            panic!("{turn:?}")
        };
        assert_eq!(again.until, now + 5 + 120_000, "twice as long");
        assert_eq!(again.since, b.since, "paused since the first time");
        t.apply(&turn);
        assert_eq!(
            t.answered(Answer::Served, true, again.until + 1),
            Turn::Close
        );
        t.apply(&Turn::Close);
        assert_eq!(t.gating(again.until + 2), Gating::Go);
        assert_eq!(
            t.window.totals(t.slot(again.until + 2)),
            (0, 0),
            "a fresh window"
        );
    }

    #[test]
    fn ten_refused_connections_in_a_row_trip_and_an_answer_between_resets_them() {
        let mut t = Tracker::new(HealthPolicy::default(), 1.0);
        for _ in 0..9 {
            assert_eq!(t.answered(Answer::Unreachable, false, 5), Turn::None);
        }
        assert_eq!(t.answered(Answer::Served, false, 5), Turn::None);
        for _ in 0..9 {
            assert_eq!(t.answered(Answer::Unreachable, false, 5), Turn::None);
        }
        assert!(matches!(
            t.answered(Answer::Unreachable, false, 5),
            Turn::Trip(_)
        ));
    }
}
