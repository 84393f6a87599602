//! Reading untrusted JSON strictly: a key that appears twice in one object is an error (a
//! lenient reader keeps one of them silently, so two readers of the same body can disagree on
//! what it says), and nesting is bounded by `serde_json`'s recursion limit (128).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `bytes` as one JSON value, refusing duplicate keys, invalid UTF-8, trailing data and
/// nesting deeper than 128 levels. The error says where.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// [`parse_strict`] on a string.
pub fn parse_strict_str(s: &str) -> Result<Value, serde_json::Error> {
    parse_strict(s.as_bytes())
}

/// `text` (valid JSON) without the white space between its tokens: the same document, as few
/// bytes as the producer's own escapes allow (what a queue message's size limit counts).
pub fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

/// A JSON value inside a derived type, read as strictly as [`parse_strict`] reads a document
/// (a key twice in one object is an error).
#[derive(Clone, Debug, PartialEq)]
pub struct Strict(pub Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        StrictValue.deserialize(d).map(Strict)
    }
}

#[derive(Clone, Copy)]
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if m.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {key:?} in one object"
                )));
            }
            let v = map.next_value_seed(StrictValue)?;
            m.insert(key, v);
        }
        Ok(Value::Object(m))
    }
}

/// A JSON number that is a whole number within i64 (`3` or `3.0`: JSON Schema's `integer`).
pub fn whole_i64(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f > i64::MIN as f64 && *f < i64::MAX as f64)
            .map(|f| f as i64)
    })
}

/// [`whole_i64`] of a JSON value.
pub fn as_whole_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => whole_i64(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_serde_json_reads() {
        let text = r#"{"a":[1,-2,3.5,true,null,"x\u00e9"],"b":{"c":{}},"d":18446744073709551615}"#;
        assert_eq!(
            parse_strict_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth_and_says_which() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":{"b":1,"b":1}}"#,
            r#"[{"k":1},{"k":1,"k":2}]"#,
        ] {
            let e = parse_strict_str(text).unwrap_err().to_string();
            assert!(e.contains("duplicate key"), "{text}: {e}");
        }
        // The same key in sibling objects is fine.
        assert!(parse_strict_str(r#"[{"k":1},{"k":2}]"#).is_ok());
    }

    #[test]
    fn refuses_deep_nesting_trailing_data_and_invalid_utf8() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse_strict_str(&deep).is_err());
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_strict_str(&fine).is_ok());
        assert!(parse_strict_str("{} {}").is_err());
        assert!(parse_strict(b"\"\xff\"").is_err());
    }

    #[test]
    fn minifying_keeps_the_document_and_drops_only_the_space_between_tokens() {
        let text = "{ \"a\" : [ 1 , 2 ],\n\t\"b\": \"x y \\\" z\\\\\" , \"c\": \"\\u0041\" }";
        let small = minify(text);
        assert_eq!(small, r#"{"a":[1,2],"b":"x y \" z\\","c":"\u0041"}"#);
        assert_eq!(
            parse_strict_str(&small).unwrap(),
            parse_strict_str(text).unwrap()
        );
    }

    #[test]
    fn whole_numbers_may_carry_a_zero_fraction() {
        let n = |s: &str| serde_json::from_str::<Number>(s).unwrap();
        assert_eq!(whole_i64(&n("3")), Some(3));
        assert_eq!(whole_i64(&n("3.0")), Some(3));
        assert_eq!(whole_i64(&n("-7.0")), Some(-7));
        assert_eq!(whole_i64(&n("1161001.0")), Some(1_161_001));
        assert_eq!(whole_i64(&n("3.5")), None);
        assert_eq!(whole_i64(&n("1e300")), None);
        assert_eq!(whole_i64(&n("-9223372036854775809")), None);
    }
}
