//! Identifiers: `tp_` followed by a ULID, so ids sort by creation time and page stably.

use crate::clock::Millis;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Prefix of every touchpoint id.
pub const TOUCHPOINT_PREFIX: &str = "tp_";

/// A new touchpoint id for a touchpoint created at `now`.
pub fn new_touchpoint_id(now: Millis) -> String {
    format!("{TOUCHPOINT_PREFIX}{}", ulid(now))
}

/// A 26-character ULID: 48 bits of milliseconds, then 80 random bits, in Crockford base 32.
pub fn ulid(now: Millis) -> String {
    let mut random = [0u8; 10];
    // The OS random source failing is not something a caller can handle; fall back to the
    // clock's low bits mixed with a counter so ids stay unique within the process.
    if getrandom::fill(&mut random).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        random[..8].copy_from_slice(&n.to_be_bytes());
    }
    let mut value: u128 = (u128::from(now.max(0) as u64) & 0xFFFF_FFFF_FFFF) << 80;
    for (i, b) in random.iter().enumerate() {
        value |= u128::from(*b) << (72 - 8 * i);
    }
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as u32;
        *slot = CROCKFORD[((value >> shift) & 0x1F) as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

/// Whether `id` has the shape of a touchpoint id (cheap check before touching storage).
pub fn is_touchpoint_id(id: &str) -> bool {
    id.strip_prefix(TOUCHPOINT_PREFIX)
        .is_some_and(|rest| rest.len() == 26 && rest.bytes().all(|b| CROCKFORD.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_unique_and_time_ordered() {
        let a = new_touchpoint_id(1_000);
        let b = new_touchpoint_id(2_000);
        assert!(is_touchpoint_id(&a), "{a}");
        assert!(a < b);
        assert_ne!(new_touchpoint_id(1_000), new_touchpoint_id(1_000));
        assert!(!is_touchpoint_id("tp_short"));
        assert!(!is_touchpoint_id("../etc/passwd"));
    }
}
