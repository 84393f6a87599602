//! The wire contract with receivers (protocol §1–2): the touch request, `sign`, the Standard
//! Webhooks signature headers, and reading receipts. Pure functions, no I/O.

use std::collections::HashMap;

use crate::model::Signing;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

/// `User-Agent` of every outbound request.
pub const USER_AGENT: &str = concat!("touchpoint/", env!("CARGO_PKG_VERSION"));
pub const STATUS_SUCCESS: &str = "TOU_SUCC";
pub const STATUS_FAILURE: &str = "TOU_FAIL";

/// One user of a touch request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserData {
    pub gid: i64,
    #[serde(rename = "dynamicData")]
    pub dynamic_data: Map<String, Value>,
    #[serde(rename = "temData")]
    pub tem_data: Map<String, Value>,
}

/// The body POSTed to a touchpoint's URL; field order is the documented one.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TouchRequest<'a> {
    pub time_stamp: i64,
    pub order_no: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign: Option<String>,
    pub data_list: &'a [UserData],
}

/// The body POSTed to an async touchpoint's receipt URL.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptRequest<'a> {
    pub time_stamp: i64,
    pub order_no: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign: Option<String>,
}

/// A request to a receiver, ready to send: its JSON body and its headers (the user agent, and
/// the Standard Webhooks signature when the touchpoint has a token).
#[derive(Debug)]
pub struct SignedRequest {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Builds the body with `sign` (when there is a token for it) and signs it for the headers.
fn signed(
    signing: &Signing<'_>,
    order_no: &str,
    now: i64,
    body: impl FnOnce(Option<String>) -> Vec<u8>,
) -> SignedRequest {
    let body = body(signing.sign.map(|t| sign(t, now, order_no)));
    let mut headers = vec![("user-agent", USER_AGENT.to_owned())];
    if signing.signature_tokens().next().is_some() {
        headers.extend(signature_headers(
            signing.signature_tokens(),
            order_no,
            now.div_euclid(1000),
            &body,
        ));
    }
    SignedRequest { body, headers }
}

/// The touch request of a batch (§1), signed with the touchpoint's tokens of the moment.
pub fn touch_request(
    signing: &Signing<'_>,
    order_no: &str,
    now: i64,
    users: &[UserData],
) -> SignedRequest {
    signed(signing, order_no, now, |sign| {
        serde_json::to_vec(&TouchRequest {
            time_stamp: now,
            order_no,
            sign,
            data_list: users,
        })
        .unwrap_or_default()
    })
}

/// The receipt poll of an accepted batch (§3), signed like a touch request.
pub fn receipt_poll(signing: &Signing<'_>, order_no: &str, now: i64) -> SignedRequest {
    signed(signing, order_no, now, |sign| {
        serde_json::to_vec(&ReceiptRequest {
            time_stamp: now,
            order_no,
            sign,
        })
        .unwrap_or_default()
    })
}

/// `UPPER(HEX(MD5(token + "&" + timeStamp + "&" + orderNo)))`.
pub fn sign(token: &str, time_stamp: i64, order_no: &str) -> String {
    hex::encode_upper(Md5::digest(
        format!("{token}&{time_stamp}&{order_no}").as_bytes(),
    ))
}

/// The HMAC key of the Standard Webhooks headers: a `whsec_<base64>` token's decoded bytes,
/// otherwise the token's UTF-8 bytes.
pub fn signing_key(token: &str) -> Vec<u8> {
    token
        .strip_prefix("whsec_")
        .and_then(|b64| STANDARD.decode(b64).ok())
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// `v1,<base64(HMAC-SHA256(key, "<id>.<seconds>.<body>"))>`.
pub fn webhook_signature(key: &[u8], id: &str, seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The headers a signed request carries, as (name, value) pairs: `webhook-signature` lists a
/// signature per token, space-separated, in the order given.
pub fn signature_headers<'t>(
    tokens: impl IntoIterator<Item = &'t str>,
    order_no: &str,
    seconds: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let signatures: Vec<String> = tokens
        .into_iter()
        .map(|t| webhook_signature(&signing_key(t), order_no, seconds, body))
        .collect();
    [
        ("webhook-id", order_no.to_owned()),
        ("webhook-timestamp", seconds.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ]
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// For receiver authors: checks a request's `sign` in constant time.
pub fn verify_sign(token: &str, time_stamp: i64, order_no: &str, given: &str) -> bool {
    constant_time_eq(
        sign(token, time_stamp, order_no).as_bytes(),
        given.as_bytes(),
    )
}

/// For receiver authors: checks a `webhook-signature` header (which may list several
/// space-separated signatures) in constant time. Reject old timestamps separately.
pub fn verify_webhook_signature(
    token: &str,
    id: &str,
    seconds: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let expected = webhook_signature(&signing_key(token), id, seconds, body);
    header
        .split(' ')
        .filter(|s| !s.is_empty())
        .fold(false, |ok, candidate| {
            ok | constant_time_eq(candidate.as_bytes(), expected.as_bytes())
        })
}

/// One user's final result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status")]
pub enum UserStatus {
    #[serde(rename = "TOU_SUCC")]
    Succeeded,
    #[serde(rename = "TOU_FAIL")]
    Failed { reason: String },
}

impl UserStatus {
    pub fn failed(reason: impl Into<String>) -> UserStatus {
        UserStatus::Failed {
            reason: reason.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            UserStatus::Succeeded => STATUS_SUCCESS,
            UserStatus::Failed { .. } => STATUS_FAILURE,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            UserStatus::Succeeded => "",
            UserStatus::Failed { reason } => reason,
        }
    }
}

/// What a receipt body says, before it is applied to a batch.
#[derive(Debug, PartialEq)]
pub enum ReceiptReading {
    /// `code` 0: the statuses it lists (first entry wins for a repeated gid).
    Statuses(HashMap<i64, UserStatus>),
    /// `code` ≠ 0: the whole batch failed with this reason.
    Rejected(String),
    /// Not the documented shape.
    Invalid(String),
}

/// Reads a receipt body (touch response or receipt poll). `require_list` is true for a sync
/// touch response, where the list is the result.
pub fn read_receipt(body: &[u8], require_list: bool) -> ReceiptReading {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return ReceiptReading::Invalid("invalid receipt: not a JSON object".into());
    };
    let code = match m.get("code") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let Some(code) = code else {
        return ReceiptReading::Invalid("invalid receipt: no integer code".into());
    };
    if code != 0 {
        let message = m
            .get("message")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| truncate(s, crate::delivery::REASON_MAX_CHARS))
            .unwrap_or_else(|| format!("receiver answered code {code}"));
        return ReceiptReading::Rejected(message);
    }
    let list = match m.get("sendStatusList") {
        Some(Value::Array(items)) => items.as_slice(),
        None | Some(Value::Null) if !require_list => &[],
        _ => return ReceiptReading::Invalid("invalid receipt: no sendStatusList".into()),
    };
    let mut statuses = HashMap::with_capacity(list.len());
    for entry in list {
        let Some(gid) = entry.get("gid").and_then(Value::as_i64) else {
            continue;
        };
        let error = entry
            .get("errorMsg")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| truncate(s, crate::delivery::REASON_MAX_CHARS));
        let status = match entry.get("status").and_then(Value::as_str) {
            Some(STATUS_SUCCESS) => UserStatus::Succeeded,
            Some(STATUS_FAILURE) => {
                UserStatus::failed(error.unwrap_or_else(|| "receiver reported TOU_FAIL".into()))
            }
            Some(other) => UserStatus::failed(format!("invalid status {:?}", truncate(other, 40))),
            None => UserStatus::failed("invalid status: missing"),
        };
        statuses.entry(gid).or_insert(status);
    }
    ReceiptReading::Statuses(statuses)
}

/// Applies a sync touch response to a batch: every gid of the batch gets exactly one status.
/// Returns the statuses in batch order and the gids the receiver named that are not in it.
pub fn settle_sync(batch: &[i64], reading: ReceiptReading) -> (Vec<UserStatus>, Vec<i64>) {
    match reading {
        ReceiptReading::Statuses(mut statuses) => {
            let out = batch
                .iter()
                .map(|gid| {
                    statuses
                        .remove(gid)
                        .unwrap_or_else(|| UserStatus::failed("no status returned"))
                })
                .collect();
            let mut unknown: Vec<i64> = statuses.into_keys().collect();
            unknown.sort_unstable();
            (out, unknown)
        }
        ReceiptReading::Rejected(reason) | ReceiptReading::Invalid(reason) => (
            batch
                .iter()
                .map(|_| UserStatus::failed(reason.clone()))
                .collect(),
            Vec::new(),
        ),
    }
}

/// Cuts `s` to at most `max` characters.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = "1f1d0ea0c457453ab3c80ed376e5c66c";

    #[test]
    fn sign_matches_the_protocol_vectors() {
        assert_eq!(
            sign("abc123", 1_664_590_280_000, ORDER),
            "81E38062BE2451B655F10AC3AD1EDB39"
        );
        assert_eq!(
            sign("中文token", 1_664_590_280_000, ORDER),
            "F835AC742954144FE6FF9FA210773BF1"
        );
        assert!(verify_sign(
            "abc123",
            1_664_590_280_000,
            ORDER,
            "81E38062BE2451B655F10AC3AD1EDB39"
        ));
        assert!(!verify_sign(
            "abc123",
            1_664_590_280_001,
            ORDER,
            "81E38062BE2451B655F10AC3AD1EDB39"
        ));
    }

    #[test]
    fn request_body_and_webhook_signature_match_the_protocol_vector() {
        let mut dynamic = Map::new();
        dynamic.insert("memberId".into(), Value::from("01"));
        let mut tem = Map::new();
        tem.insert("title".into(), Value::from("Hi"));
        let users = [UserData {
            gid: 123,
            dynamic_data: dynamic,
            tem_data: tem,
        }];
        let body = serde_json::to_vec(&TouchRequest {
            time_stamp: 1_664_590_280_000,
            order_no: ORDER,
            sign: Some(sign("abc123", 1_664_590_280_000, ORDER)),
            data_list: &users,
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"timeStamp":1664590280000,"orderNo":"1f1d0ea0c457453ab3c80ed376e5c66c","sign":"81E38062BE2451B655F10AC3AD1EDB39","dataList":[{"gid":123,"dynamicData":{"memberId":"01"},"temData":{"title":"Hi"}}]}"#
        );
        let expected = "v1,zVrVkXVXRFUzoQ2a6omcEhduHVt3BtCSm4R3B2mw/z8=";
        assert_eq!(
            webhook_signature(&signing_key("abc123"), ORDER, 1_664_590_280, &body),
            expected
        );
        assert!(verify_webhook_signature(
            "abc123",
            ORDER,
            1_664_590_280,
            &body,
            &format!("v1,bogus {expected}")
        ));
        let mut tampered = body.clone();
        tampered[20] ^= 1;
        assert!(!verify_webhook_signature(
            "abc123",
            ORDER,
            1_664_590_280,
            &tampered,
            expected
        ));
    }

    #[test]
    fn during_a_rotation_sign_keeps_the_old_token_and_the_header_signs_with_both() {
        let users = [UserData {
            gid: 1,
            dynamic_data: Map::new(),
            tem_data: Map::new(),
        }];
        let now = 1_664_590_280_000;
        let rotating = Signing {
            sign: Some("old-token"),
            signatures: [Some("new-token"), Some("old-token")],
        };
        let req = touch_request(&rotating, ORDER, now, &users);
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["sign"], sign("old-token", now, ORDER));
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let signatures = header("webhook-signature");
        let listed: Vec<&str> = signatures.split(' ').collect();
        assert_eq!(listed.len(), 2, "{signatures}");
        // The new token's first.
        assert_eq!(
            listed[0],
            webhook_signature(&signing_key("new-token"), ORDER, now / 1000, &req.body)
        );
        for token in ["new-token", "old-token"] {
            assert!(verify_webhook_signature(
                token,
                ORDER,
                now / 1000,
                &req.body,
                &signatures
            ));
        }
        assert!(!verify_webhook_signature(
            "other",
            ORDER,
            now / 1000,
            &req.body,
            &signatures
        ));
        // No token at all: neither `sign` nor the headers.
        let bare = touch_request(&Signing::single(None), ORDER, now, &users);
        assert!(bare.headers.iter().all(|(n, _)| !n.starts_with("webhook-")));
        let body: Value = serde_json::from_slice(&bare.body).unwrap();
        assert!(body.get("sign").is_none());
    }

    #[test]
    fn whsec_tokens_sign_with_their_decoded_bytes() {
        assert_eq!(signing_key("whsec_AQID"), vec![1, 2, 3]);
        assert_eq!(signing_key("abc"), b"abc".to_vec());
    }

    #[test]
    fn sync_receipts_settle_every_gid_of_the_batch_once() {
        let body = br#"{"code":0,"message":"","orderNo":"x","sendStatusList":[
            {"gid":1,"status":"TOU_SUCC","errorMsg":""},
            {"gid":2,"status":"TOU_FAIL","errorMsg":"blacklisted"},
            {"gid":2,"status":"TOU_SUCC"},
            {"gid":4,"status":"tou_succ"},
            {"gid":99,"status":"TOU_SUCC"}]}"#;
        let (statuses, unknown) = settle_sync(&[1, 2, 3, 4], read_receipt(body, true));
        assert_eq!(
            statuses,
            vec![
                UserStatus::Succeeded,
                UserStatus::failed("blacklisted"),
                UserStatus::failed("no status returned"),
                UserStatus::failed("invalid status \"tou_succ\""),
            ]
        );
        assert_eq!(unknown, vec![99]);
    }

    #[test]
    fn a_nonzero_code_or_garbage_fails_the_whole_batch() {
        let (s, _) = settle_sync(
            &[1, 2],
            read_receipt(r#"{"code":500,"message":"服务调用异常"}"#.as_bytes(), true),
        );
        assert_eq!(s, vec![UserStatus::failed("服务调用异常"); 2]);
        for garbage in [&b"<html>"[..], b"{}", b"{\"code\":0}", b"[]", b"\xff"] {
            let (s, _) = settle_sync(&[7], read_receipt(garbage, true));
            assert!(
                s[0].reason().starts_with("invalid receipt"),
                "{garbage:?}: {s:?}"
            );
        }
        // Async acceptance may carry no list at all.
        assert_eq!(
            read_receipt(b"{\"code\":0}", false),
            ReceiptReading::Statuses(HashMap::new())
        );
    }
}
