//! Identifiers: `tp_` followed by a ULID, so ids sort by creation time and page stably; and
//! the string ids that are easy to swap (a touchpoint's, a dispatch's, a batch's `orderNo`) as
//! types of their own, so that a function taking two of them cannot be handed them the wrong
//! way round.

use crate::clock::Millis;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> $name {
                $name(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// Made from text explicitly (`.into()` at an edge); never from another kind of id.
        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl From<&$name> for String {
            fn from(id: &$name) -> String {
                id.0.clone()
            }
        }

        /// Reads as the text it is.
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(
    /// A touchpoint's id (`tp_` and a ULID; any text when read from outside, until checked).
    TouchpointId
);
string_id!(
    /// A dispatch's id, chosen by the campaign system.
    DispatchId
);
string_id!(
    /// A batch's `orderNo` (protocol §1): derived from the project, dispatch and batch index.
    OrderNo
);

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Prefix of every touchpoint id.
pub const TOUCHPOINT_PREFIX: &str = "tp_";

/// A new touchpoint id for a touchpoint created at `now`.
pub fn new_touchpoint_id(now: Millis) -> TouchpointId {
    TouchpointId(format!("{TOUCHPOINT_PREFIX}{}", ulid(now)))
}

/// A 26-character ULID: 48 bits of milliseconds, then 80 random bits, in Crockford base 32.
///
/// Monotonic within the process: an id made in the same millisecond as the previous one (or
/// after the clock stepped back) takes the previous random part plus one, so ids always sort in
/// creation order and a listing's cursor never skips a touchpoint.
pub fn ulid(now: Millis) -> String {
    use std::sync::Mutex;
    static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));
    const RANDOM_MASK: u128 = (1 << 80) - 1;

    let mut random = [0u8; 16];
    // The OS random source failing is not something a caller can handle; the monotonic
    // increment below still keeps ids unique within the process.
    let _ = getrandom::fill(&mut random[6..]);
    let fresh = u128::from_be_bytes(random) & RANDOM_MASK;
    let ms = (now.max(0) as u64) & 0xFFFF_FFFF_FFFF;
    let (ms, rand) = {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let next = if ms > last.0 {
            (ms, fresh)
        } else if last.1 < RANDOM_MASK {
            (last.0, last.1 + 1)
        } else {
            (last.0 + 1, fresh)
        };
        *last = next;
        next
    };
    let value: u128 = (u128::from(ms) << 80) | rand;
    let mut out = String::with_capacity(26);
    for i in 0..26u32 {
        let shift = 125 - 5 * i;
        out.push(CROCKFORD[((value >> shift) & 0x1F) as usize] as char);
    }
    out
}

/// Whether `id` has the shape of a touchpoint id (cheap check before touching storage).
pub fn is_touchpoint_id(id: &str) -> bool {
    id.strip_prefix(TOUCHPOINT_PREFIX)
        .is_some_and(|rest| rest.len() == 26 && rest.bytes().all(|b| CROCKFORD.contains(&b)))
}

/// 32 random lower-case hex characters (an `orderNo` for a test send).
pub fn random_order_no() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Still unique within the process: a hash of a monotonic id.
        use sha2::Digest;
        let digest = sha2::Sha256::digest(ulid(0).as_bytes());
        bytes.copy_from_slice(&digest[..16]);
    }
    hex::encode(bytes)
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
        let (c, d) = (new_touchpoint_id(2_000), new_touchpoint_id(2_000));
        assert!(
            b < c && c < d,
            "same-millisecond ids still sort in creation order"
        );
        assert!(
            new_touchpoint_id(1_000) > d,
            "a clock stepping back does not reorder ids"
        );
        assert!(!is_touchpoint_id("tp_short"));
        assert!(!is_touchpoint_id("../etc/passwd"));
    }
}
