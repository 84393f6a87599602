//! The delivery state machine: every decision about claiming, settling, retrying, giving up and
//! polling a batch, as pure functions. The SQLite and DynamoDB adapters only persist what these
//! decide (each in its own atomic write), and the dispatcher and the receipt poller only act on
//! them, so the local service and the AWS one follow exactly the same rules.
//!
//! The rules, in one place:
//! - A batch is claimed before it is sent. A claim takes a batch that has no record (attempt 1),
//!   a batch waiting for a retry that is due, or a batch whose sender's lease ran out (it died);
//!   anything else waits (another sender holds it, or its retry is not due) or is done.
//! - A final or accepted outcome is recorded once: the first one wins, a later one changes
//!   nothing. A retry is recorded only by the holder of the attempt it reports.
//! - A user fails only for its own reason: a final answer of the receiver, its batch's attempts
//!   exhausted, its receipt timeout, or an invalid dispatch. Waiting for a retry, handing work back
//!   before a time limit, a crash or a neighbour's failure never uses up an attempt.
//! - The guard against poison messages counts consecutive deliveries of a dispatch that made no
//!   progress (a crash or a storage error each time), never waits or retry rounds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::delivery::{AttemptOutcome, BatchState, Claim};

/// How transient failures are retried: the waits between attempts (attempts = waits + 1).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub waits: Vec<Duration>,
    /// ± this fraction of each wait, so retries of many dispatches spread out.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Protocol §3: 6 attempts, waiting about 30 s, 2 min, 10 min, 30 min and 1 h.
    fn default() -> Self {
        RetryPolicy {
            waits: [30, 120, 600, 1800, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    pub fn max_attempts(&self) -> u32 {
        self.waits.len() as u32 + 1
    }

    /// Parses `30s,2m,10m,30m,1h`.
    pub fn parse(s: &str) -> Result<RetryPolicy, String> {
        let waits = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetryPolicy { waits, jitter: 0.2 })
    }

    /// The same schedule with every wait divided by `factor` (compressed time in tests).
    pub fn scaled(&self, factor: f64) -> RetryPolicy {
        RetryPolicy {
            waits: self.waits.iter().map(|w| w.div_f64(factor)).collect(),
            jitter: self.jitter,
        }
    }

    /// The whole schedule, without jitter: from the first attempt to the last.
    pub fn horizon(&self) -> Duration {
        self.waits.iter().sum()
    }

    /// After transient failure of attempt `attempt` (1-based): how long to wait before the next
    /// one, or `None` when the attempts are exhausted. `unit` is a random number in `[0, 1]`
    /// (the jitter); a receiver's `Retry-After` is honoured up to the schedule's longest wait.
    pub fn wait_after(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts() {
            return None;
        }
        let base = self
            .waits
            .get(attempt.saturating_sub(1) as usize)
            .copied()
            .unwrap_or_default();
        let cap = self.waits.iter().max().copied().unwrap_or_default();
        let jittered =
            base.mul_f64((1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0)).max(0.0));
        Some(retry_after.map_or(jittered, |r| r.min(cap).max(jittered)))
    }
}

/// The reason users get when their batch's attempts ran out.
pub fn exhausted_reason(attempts: u32, last_error: Option<&str>) -> String {
    format!(
        "retries exhausted after {attempts} attempts: {}",
        last_error.unwrap_or("transient failure")
    )
}

/// `500ms`, `30s`, `2m`, `1h`, `1h 30m` (humantime); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too large"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s ({e})"))
}

/// What the ledger holds of a batch, as far as a claim is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    pub state: BatchState,
    pub attempts: u32,
    pub lease_until: Option<Millis>,
    pub next_attempt_at: Option<Millis>,
    pub sent_at: Option<Millis>,
    /// Attempts whose sender died before recording an outcome (its lease ran out).
    pub lost: u32,
}

/// What a claim does to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimDecision {
    /// No record yet: create it in flight, attempt 1 (only if there is still none).
    Create,
    /// Take it for `attempt`, only if its attempts are still `attempt - 1`; `lost` is its
    /// count of attempts lost to a dead sender after this take.
    Take {
        attempt: u32,
        sent_at: Millis,
        lost: u32,
    },
    /// Someone holds it, or its retry is not due, until then.
    Wait(Millis),
    /// Final, or accepted by an async receiver: nothing to send.
    Done,
}

impl ClaimDecision {
    /// The answer the dispatcher gets once the decision is persisted.
    pub fn claim(&self, now: Millis) -> Claim {
        match self {
            ClaimDecision::Create => Claim::Send {
                attempt: 1,
                sent_at: now,
                counted: 1,
            },
            ClaimDecision::Take {
                attempt,
                sent_at,
                lost,
            } => Claim::Send {
                attempt: *attempt,
                sent_at: *sent_at,
                counted: attempt.saturating_sub(*lost).max(1),
            },
            ClaimDecision::Wait(t) => Claim::NotBefore(*t),
            ClaimDecision::Done => Claim::Done,
        }
    }
}

/// Decides a claim of a batch at `now` from what the ledger holds of it.
pub fn decide_claim(current: Option<&BatchRecord>, now: Millis) -> ClaimDecision {
    let Some(b) = current else {
        return ClaimDecision::Create;
    };
    match b.state {
        BatchState::Final | BatchState::Accepted => ClaimDecision::Done,
        BatchState::InFlight if b.lease_until.unwrap_or(0) > now => {
            ClaimDecision::Wait(b.lease_until.unwrap_or(now))
        }
        BatchState::RetryWait if b.next_attempt_at.unwrap_or(0) > now => {
            ClaimDecision::Wait(b.next_attempt_at.unwrap_or(now))
        }
        // Due for a retry, or its sender's lease ran out (the sender died): send it again
        // under the same orderNo. The attempt number still goes up (it fences the dead
        // sender's late record), but an attempt lost to a crash does not count against the
        // retry budget: a user's attempts are used up only by answers and transport failures.
        BatchState::InFlight => ClaimDecision::Take {
            attempt: b.attempts + 1,
            sent_at: b.sent_at.unwrap_or(now),
            lost: b.lost + 1,
        },
        BatchState::RetryWait => ClaimDecision::Take {
            attempt: b.attempts + 1,
            sent_at: b.sent_at.unwrap_or(now),
            lost: b.lost,
        },
    }
}

/// The condition under which an attempt's outcome is written: the states the batch may be in,
/// and whether its attempts must still be the attempt reported. Adapters turn it into their
/// own atomic condition (a `WHERE` clause, a condition expression).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordCondition {
    pub states: &'static [BatchState],
    pub same_attempt: bool,
}

impl RecordCondition {
    pub fn holds(&self, state: BatchState, attempts: u32, reported_attempt: u32) -> bool {
        self.states.contains(&state) && (!self.same_attempt || attempts == reported_attempt)
    }
}

/// When an outcome may be recorded: a final or accepted one once, whoever reports it (the
/// receiver answered for that orderNo: the first answer wins); a retry only by the holder of
/// that attempt, so a stale sender never moves a batch someone else took back to waiting.
pub fn record_condition(outcome: &AttemptOutcome) -> RecordCondition {
    match outcome {
        AttemptOutcome::Retry { .. } => RecordCondition {
            states: &[BatchState::InFlight],
            same_attempt: true,
        },
        AttemptOutcome::Final(_) | AttemptOutcome::Accepted { .. } => RecordCondition {
            states: &[BatchState::InFlight, BatchState::RetryWait],
            same_attempt: false,
        },
    }
}

/// How far a dispatch's delivery has come, kept on the dispatch record so that a redelivery
/// resumes where the last one stopped instead of reading every finished batch again. It is an
/// over-approximation of the work left: every batch below `frontier` and not in `open` was seen
/// final or accepted by the writer (the ledger stays the authority; a stale record only costs
/// reads).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Batches from here on were never seen finished.
    pub frontier: u32,
    /// Batches below `frontier` not seen finished (waiting for a retry, in flight elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open: Vec<u32>,
    /// Set when the dispatch is being given up (the poison guard fired, or it became invalid):
    /// every later delivery fails the remaining users with this reason instead of sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<String>,
}

impl Progress {
    /// The batches still to look at, in order: the open ones, then the frontier onwards.
    pub fn work(&self, batches: u32) -> impl Iterator<Item = u32> + '_ {
        self.open
            .iter()
            .copied()
            .filter(move |i| *i < batches)
            .chain(self.frontier.min(batches)..batches)
    }

    /// The progress after a delivery that looked at some batches: `finished` holds the indices
    /// it saw final or accepted, `looked` every index it looked at (in `work` order, a prefix of
    /// the work).
    pub fn after(&self, batches: u32, looked: &[u32], finished: &[u32]) -> Progress {
        let looked_set: std::collections::BTreeSet<u32> = looked.iter().copied().collect();
        let finished: std::collections::BTreeSet<u32> = finished.iter().copied().collect();
        // The new frontier: past every index looked at from the old frontier on, as long as
        // they were looked at without a gap.
        let mut frontier = self.frontier.min(batches);
        while frontier < batches && looked_set.contains(&frontier) {
            frontier += 1;
        }
        let open = self
            .open
            .iter()
            .copied()
            .chain(self.frontier.min(batches)..frontier)
            .filter(|i| *i < batches && !finished.contains(i))
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .collect();
        Progress {
            frontier,
            open,
            abandoned: self.abandoned.clone(),
        }
    }

    /// This (stored) progress with a delivery's `advance` applied.
    pub fn advanced(&self, advance: &crate::delivery::Advance<'_>) -> Progress {
        let mut next = self.after(advance.batches, advance.looked, advance.finished);
        if let Some(why) = advance.abandoned {
            next.abandoned = Some(why.to_owned());
        }
        next
    }

    /// Whether batch `index` is marked finished (and, where the ledger counts at checkpoints,
    /// counted).
    pub fn is_finished(&self, index: u32) -> bool {
        index < self.frontier && !self.open.contains(&index)
    }

    /// Every batch seen finished.
    pub fn is_complete(&self, batches: u32) -> bool {
        self.open.is_empty() && self.frontier >= batches
    }
}

/// When a dispatch should come back, given the times its waiting batches become due, so that
/// one retry round costs one redelivery: the latest time of the earliest group. `spread` is how
/// long the delivery that produced them took (its batches failed one after another over it).
/// A group holds the times within half the earliest wait (the jitter's range) plus `spread` of
/// the earliest; delays are rounded up to the group's last, never down.
pub fn next_round(now: Millis, times: &[Millis], spread: Millis) -> Option<Millis> {
    let earliest = *times.iter().min()?;
    let spread = spread.max(0);
    // The earliest wait, measured from when its batch may have failed.
    let wait = (earliest - now).max(0) + spread;
    let window = wait / 2 + spread;
    times
        .iter()
        .copied()
        .filter(|t| *t <= earliest + window)
        .max()
}

/// Whether a delivery may still claim a batch at `now`: only when the batch can be sent, answered
/// and recorded before the invocation's `deadline` (`budget`: the request timeout plus the time to
/// record).
pub fn may_claim(now: Millis, deadline: Millis, budget: Duration) -> bool {
    now.saturating_add(budget.as_millis() as i64) <= deadline
}

/// The poison guard: a dispatch whose message was delivered `receives` times in a row without
/// any delivery making progress (each crashed or hit a storage error) is given up once
/// `receives` passes `max`. A delivery that makes progress starts the count again (a fresh
/// message on SQS, a reset counter locally), so waits and retry rounds never count.
pub fn stalled(receives: u32, max: u32) -> Option<String> {
    (receives > max).then(|| {
        format!(
            "delivery stalled: {} deliveries in a row made no progress",
            receives - 1
        )
    })
}

/// When an accepted batch is polled next, after a poll at `now`: on the interval's grid from
/// its acceptance (so polls never drift later), and at the deadline at the latest (so a batch is
/// always polled at its deadline before its pending users time out).
pub fn next_poll_at(
    accepted_at: Millis,
    interval: Duration,
    deadline: Millis,
    now: Millis,
) -> Millis {
    let step = (interval.as_millis() as i64).max(1);
    let elapsed = (now - accepted_at).max(0);
    let next = accepted_at + (elapsed / step + 1) * step;
    next.min(deadline)
}

/// What a receipt round does with a due batch at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollDecision {
    /// Poll; the users still pending afterwards wait for the next poll.
    Poll,
    /// The deadline has passed: poll once more, then every user still pending fails with
    /// "receipt timeout".
    FinalPoll,
}

pub fn decide_poll(now: Millis, deadline: Millis) -> PollDecision {
    if now >= deadline {
        PollDecision::FinalPoll
    } else {
        PollDecision::Poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: BatchState, attempts: u32) -> BatchRecord {
        BatchRecord {
            state,
            attempts,
            lease_until: Some(100),
            next_attempt_at: Some(200),
            sent_at: Some(10),
            lost: 0,
        }
    }

    #[test]
    fn an_attempt_lost_to_a_crash_does_not_count_against_the_retry_budget() {
        let policy = RetryPolicy::default();
        let max = policy.max_attempts();
        // Five transient failures, then the sixth attempt's sender dies, and the batch is taken
        // again: still the sixth attempt against the budget, so one more retry is allowed.
        let mut b = BatchRecord {
            lost: 0,
            ..record(BatchState::InFlight, max)
        };
        let ClaimDecision::Take { attempt, lost, .. } = decide_claim(Some(&b), 100) else {
            panic!("taken");
        };
        let Claim::Send { counted, .. } = decide_claim(Some(&b), 100).claim(100) else {
            panic!("sent");
        };
        assert_eq!((attempt, lost, counted), (max + 1, 1, max));
        // Crashes do not add up either: after three lost attempts the count is where it was.
        b.lost = 2;
        b.attempts = max + 2;
        let Claim::Send {
            attempt, counted, ..
        } = decide_claim(Some(&b), 100).claim(100)
        else {
            panic!("sent");
        };
        assert_eq!((attempt, counted), (max + 3, max));
        // A retry that was due is counted.
        b.state = BatchState::RetryWait;
        let Claim::Send { counted, .. } = decide_claim(Some(&b), 200).claim(200) else {
            panic!("sent");
        };
        assert_eq!(counted, max + 1);
        assert!(policy.wait_after(counted, None, 0.5).is_none(), "exhausted");
    }

    #[test]
    fn claims_create_take_wait_or_finish() {
        assert_eq!(decide_claim(None, 50), ClaimDecision::Create);
        assert_eq!(
            decide_claim(Some(&record(BatchState::InFlight, 1)), 50),
            ClaimDecision::Wait(100),
            "a live lease holds the batch"
        );
        assert_eq!(
            decide_claim(Some(&record(BatchState::InFlight, 1)), 100),
            ClaimDecision::Take {
                attempt: 2,
                sent_at: 10,
                lost: 1
            },
            "a dead sender's batch is taken again; its attempt was lost"
        );
        assert_eq!(
            decide_claim(Some(&record(BatchState::RetryWait, 3)), 150),
            ClaimDecision::Wait(200)
        );
        assert_eq!(
            decide_claim(Some(&record(BatchState::RetryWait, 3)), 200),
            ClaimDecision::Take {
                attempt: 4,
                sent_at: 10,
                lost: 0
            }
        );
        for done in [BatchState::Final, BatchState::Accepted] {
            assert_eq!(
                decide_claim(Some(&record(done, 1)), 1_000),
                ClaimDecision::Done
            );
        }
        assert_eq!(
            ClaimDecision::Create.claim(7),
            Claim::Send {
                attempt: 1,
                sent_at: 7,
                counted: 1
            }
        );
    }

    #[test]
    fn outcomes_are_recorded_once_and_retries_only_by_their_holder() {
        let retry = record_condition(&AttemptOutcome::Retry { next_attempt_at: 5 });
        assert!(retry.holds(BatchState::InFlight, 2, 2));
        assert!(
            !retry.holds(BatchState::InFlight, 3, 2),
            "someone took it since"
        );
        assert!(!retry.holds(BatchState::Final, 2, 2));
        let fin = record_condition(&AttemptOutcome::Final(Vec::new()));
        assert!(
            fin.holds(BatchState::InFlight, 3, 2),
            "any answer settles it"
        );
        assert!(fin.holds(BatchState::RetryWait, 3, 2));
        assert!(
            !fin.holds(BatchState::Final, 3, 3),
            "the first outcome wins"
        );
        assert!(!fin.holds(BatchState::Accepted, 3, 3));
    }

    #[test]
    fn retries_wait_by_the_schedule_and_run_out_after_the_last_attempt() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 6);
        assert_eq!(p.wait_after(1, None, 0.5), Some(Duration::from_secs(30)));
        assert_eq!(p.wait_after(1, None, 0.0), Some(Duration::from_secs(24)));
        assert_eq!(p.wait_after(1, None, 1.0), Some(Duration::from_secs(36)));
        assert_eq!(p.wait_after(5, None, 0.5), Some(Duration::from_secs(3600)));
        assert_eq!(p.wait_after(6, None, 0.5), None);
        assert_eq!(
            p.wait_after(1, Some(Duration::from_secs(7200)), 0.5),
            Some(Duration::from_secs(3600)),
            "Retry-After is capped at the longest wait"
        );
        assert_eq!(
            p.wait_after(2, Some(Duration::from_secs(10)), 0.5),
            Some(Duration::from_secs(120)),
            "never sooner than the schedule"
        );
        assert_eq!(
            p.horizon(),
            Duration::from_secs(30 + 120 + 600 + 1800 + 3600)
        );
        assert_eq!(p.scaled(60.0).waits[0], Duration::from_millis(500));
        assert!(
            exhausted_reason(6, Some("HTTP 503")).starts_with("retries exhausted after 6 attempts")
        );
        assert_eq!(
            RetryPolicy::parse("500ms, 2s,1m").unwrap().waits,
            [
                Duration::from_millis(500),
                Duration::from_secs(2),
                Duration::from_secs(60)
            ]
        );
        assert!(RetryPolicy::parse("soon").is_err());
    }

    #[test]
    fn one_retry_round_is_one_redelivery() {
        // Twenty batches that failed one after another over 10 s, each waiting 30 s ± 20 %.
        let now = 100_000;
        let times: Vec<Millis> = (0..20)
            .map(|i| now - 10_000 + i * 500 + 24_000 + (i * 613) % 12_000)
            .collect();
        let round = next_round(now, &times, 10_000).unwrap();
        assert_eq!(
            round,
            *times.iter().max().unwrap(),
            "everything of the round is due then"
        );
        // A batch of a much later round (waiting an hour) is not pulled in, nor does it delay
        // the round.
        let mut mixed = times.clone();
        mixed.push(now + 3_600_000);
        assert_eq!(next_round(now, &mixed, 10_000), Some(round));
        assert_eq!(next_round(now, &[], 0), None);
        assert_eq!(
            next_round(now, &[now - 5], 0),
            Some(now - 5),
            "overdue: at once"
        );
    }

    #[test]
    fn progress_skips_what_was_seen_finished_and_keeps_the_rest() {
        let p = Progress::default();
        assert_eq!(p.work(5).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        // A delivery looked at 0..3, saw 0 and 2 finished, stopped at the deadline.
        let next = p.after(5, &[0, 1, 2], &[0, 2]);
        assert_eq!(next.frontier, 3);
        assert_eq!(next.open, [1]);
        assert_eq!(next.work(5).collect::<Vec<_>>(), [1, 3, 4]);
        let done = next.after(5, &[1, 3, 4], &[1, 3, 4]);
        assert!(done.is_complete(5));
        assert!(!next.is_complete(5));
        // A stale writer never hides work: what it did not look at stays.
        let stale = Progress::default().after(5, &[], &[]);
        assert_eq!(stale.work(5).count(), 5);
        let kept = Progress {
            abandoned: Some("why".into()),
            ..Progress::default()
        }
        .after(5, &[0], &[0]);
        assert_eq!(kept.abandoned.as_deref(), Some("why"));
    }

    #[test]
    fn deadlines_stop_claims_in_time() {
        assert!(may_claim(0, 20_000, Duration::from_secs(20)));
        assert!(!may_claim(1, 20_000, Duration::from_secs(20)));
        assert!(may_claim(0, i64::MAX, Duration::from_secs(60)));
    }

    #[test]
    fn the_poison_guard_counts_only_deliveries_without_progress() {
        assert_eq!(stalled(10, 10), None);
        assert!(stalled(11, 10).unwrap().contains("10 deliveries in a row"));
    }

    #[test]
    fn polls_follow_the_grid_from_acceptance_and_meet_the_deadline() {
        let min = Duration::from_secs(60);
        // Accepted at 0, polled late at 7.5 min: next at 10 min, not 12.5.
        assert_eq!(next_poll_at(0, 5 * min, 60 * 60_000, 450_000), 600_000);
        // The deadline comes first.
        assert_eq!(next_poll_at(0, 5 * min, 420_000, 300_000), 420_000);
        // The first poll of a 5-minute timeout is at its deadline, and that poll is a final one.
        assert_eq!(next_poll_at(0, 5 * min, 300_000, 0), 300_000);
        assert_eq!(decide_poll(300_000, 300_000), PollDecision::FinalPoll);
        assert_eq!(decide_poll(299_999, 300_000), PollDecision::Poll);
    }
}
