//! The touchpoints' tokens as they are now, for signing: a token rotated while a dispatch is
//! being delivered signs that dispatch's next batches within [`KEYS_FRESH`], not only the next
//! dispatch's. An admin's pause reaches the deliveries under way the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use touchpoint::clock::Millis;
use touchpoint::ids::TouchpointId;
use touchpoint::model::{Signing, Token, TokenRotation, Touchpoint};
use touchpoint::ports::TouchpointStore;

/// How old a touchpoint's tokens may be when a batch is signed: one read a second per
/// touchpoint at most, from each process with deliveries under way.
pub const KEYS_FRESH: Duration = Duration::from_secs(1);

/// A touchpoint's token and rotation, and whether an admin paused it.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    token: Option<Token>,
    rotation: Option<TokenRotation>,
    pub paused: bool,
}

impl KeySet {
    pub fn of(tp: &Touchpoint) -> KeySet {
        KeySet {
            token: tp.token.clone(),
            rotation: tp.rotation.clone(),
            paused: tp.paused.is_some(),
        }
    }

    pub fn signing(&self, now: Millis) -> Signing<'_> {
        Signing::of(self.token.as_ref(), self.rotation.as_ref(), now)
    }
}

type Key = (i64, TouchpointId);

pub struct Keys {
    store: Arc<dyn TouchpointStore>,
    known: Mutex<HashMap<Key, (Instant, KeySet)>>,
    /// One re-read of a touchpoint at a time: its batches in flight that find its keys old
    /// wait for it (another touchpoint's do not).
    reading: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

impl Keys {
    pub fn new(store: Arc<dyn TouchpointStore>) -> Keys {
        Keys {
            store,
            known: Mutex::default(),
            reading: Mutex::default(),
        }
    }

    /// Notes a touchpoint just read.
    pub fn note(&self, tp: &Touchpoint) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        // Touchpoints not signed with for a while are forgotten.
        if known.len() > 1_000 {
            known.retain(|_, (at, _)| at.elapsed() < KEYS_FRESH * 60);
        }
        known.insert(
            (tp.project_id, tp.id.clone()),
            (Instant::now(), KeySet::of(tp)),
        );
    }

    fn fresh(&self, key: &Key) -> Option<KeySet> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(key)
            .filter(|(at, _)| at.elapsed() < KEYS_FRESH)
            .map(|(_, keys)| keys.clone())
    }

    /// The keys of `tp` as stored now (at most [`KEYS_FRESH`] old). When the touchpoint cannot
    /// be read (or is gone), the keys it was delivered with.
    pub async fn current(&self, tp: &Touchpoint) -> KeySet {
        let key = (tp.project_id, tp.id.clone());
        if let Some(keys) = self.fresh(&key) {
            return keys;
        }
        let lock = {
            let mut reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
            if reading.len() > 1_000 {
                reading.retain(|_, l| Arc::strong_count(l) > 1);
            }
            Arc::clone(reading.entry(key.clone()).or_default())
        };
        let _reading = lock.lock().await;
        if let Some(keys) = self.fresh(&key) {
            return keys;
        }
        match self.store.get(tp.project_id, &tp.id).await {
            Ok(Some(now)) => {
                self.note(&now);
                KeySet::of(&now)
            }
            other => {
                if let Err(e) = other {
                    tracing::warn!(touchpoint = %tp.id, error = %e, "cannot read the touchpoint's tokens; signing with those it was read with");
                }
                // Not read again for a while: the keys last read stand in (or, never read, those
                // it was delivered with), never older ones.
                let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                let keys = known
                    .get(&key)
                    .map_or_else(|| KeySet::of(tp), |(_, k)| k.clone());
                known.insert(key, (Instant::now(), keys.clone()));
                keys
            }
        }
    }
}
