//! Reading an admin's touchpoint JSON into a [`TouchpointSpec`], reporting every broken rule at
//! once, each with its JSON path.
//!
//! The body is read from a `serde_json::Value` by hand rather than derived, because a derived
//! deserializer stops at the first wrong type and an admin filling a long form wants them all.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::model::*;
use crate::template::placeholders;

/// What the deployment accepts as an outbound URL when a touchpoint is registered. (Where the
/// URL resolves to is checked again at connection time; this only checks its form.)
#[derive(Clone, Copy, Debug)]
pub struct UrlPolicy {
    /// Accept `http://` (the local quick start does; production deployments should not).
    pub allow_plain_http: bool,
}

/// What a write does to the stored token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenPatch {
    /// `token` absent: keep whatever is stored (none, on create).
    Keep,
    /// `"token": null`: remove it.
    Clear,
    /// `"token": "…"`: replace it.
    Set(Token),
}

/// A validated create or replace request.
#[derive(Clone, Debug)]
pub struct TouchpointInput {
    pub spec: TouchpointSpec,
    pub token: TokenPatch,
    /// The version the change is based on (required to replace).
    pub version: Option<u64>,
}

pub const MAX_URL_LEN: usize = 2_048;
pub const MAX_TOKEN_CHARS: usize = 256;
pub const MAX_DESCRIPTION_CHARS: usize = 500;
pub const MAX_DISPLAY_NAME_CHARS: usize = 50;
pub const MAX_IDENTIFIER_CHARS: usize = 64;
pub const MAX_ATTRIBUTE_CHARS: usize = 128;
pub const MAX_OPTION_CHARS: usize = 100;
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Fields the API returns but a client cannot set; accepted and ignored so a fetched
/// touchpoint can be edited and sent back as it is.
const READ_ONLY_FIELDS: [&str; 9] = [
    "id",
    "projectId",
    "tokenSet",
    "tokenOverlapUntil",
    "health",
    "enabled",
    "spaceIds",
    "createdAt",
    "updatedAt",
];

/// Collects field errors while reading.
#[derive(Default)]
struct Reader {
    errors: Vec<FieldError>,
}

impl Reader {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn object<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            _ => {
                self.err(path, "must be an object");
                None
            }
        }
    }

    fn unknown_fields(&mut self, m: &Map<String, Value>, path: &str, known: &[&str]) {
        for key in m.keys() {
            if !known.contains(&key.as_str()) {
                self.err(join(path, key), "unknown field");
            }
        }
    }

    /// A text field: trimmed, without control characters, 1..=max characters.
    fn text(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
        max: usize,
    ) -> Option<String> {
        let path = join(path, key);
        match m.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.err(path, "is required");
                }
                None
            }
            Some(Value::String(s)) => self.check_text(s, &path, max),
            Some(_) => {
                self.err(path, "must be a string");
                None
            }
        }
    }

    fn check_text(&mut self, s: &str, path: &str, max: usize) -> Option<String> {
        let s = s.trim();
        let chars = s.chars().count();
        if chars == 0 {
            self.err(path, "must not be empty");
            None
        } else if chars > max {
            self.err(
                path,
                format!("must be at most {max} characters (got {chars})"),
            );
            None
        } else if s.chars().any(char::is_control) {
            self.err(path, "must not contain control characters");
            None
        } else {
            Some(s.to_owned())
        }
    }

    fn identifier(&mut self, v: Option<&Value>, path: &str) -> Option<String> {
        match v {
            None | Some(Value::Null) => {
                self.err(path, "is required");
                None
            }
            Some(Value::String(s)) if is_identifier(s) => Some(s.clone()),
            Some(Value::String(_)) => {
                self.err(
                    path,
                    format!(
                        "must be 1 to {MAX_IDENTIFIER_CHARS} characters of letters, digits, '_', '-', '.' or '$'"
                    ),
                );
                None
            }
            Some(_) => {
                self.err(path, "must be a string");
                None
            }
        }
    }

    fn boolean(&mut self, m: &Map<String, Value>, key: &str, path: &str, default: bool) -> bool {
        match m.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.err(join(path, key), "must be true or false");
                default
            }
        }
    }

    /// An integer field within `range`.
    fn integer(
        &mut self,
        v: Option<&Value>,
        path: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<u64> {
        let n = match v {
            None | Some(Value::Null) => {
                self.err(path, "is required");
                return None;
            }
            Some(Value::Number(n)) => n,
            Some(_) => {
                self.err(path, "must be an integer");
                return None;
            }
        };
        let whole = n.as_u64().or_else(|| {
            crate::json::whole_i64(n)
                .filter(|v| *v >= 0)
                .map(|v| v as u64)
        });
        match whole {
            Some(n) if range.contains(&n) => Some(n),
            _ if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                self.err(
                    path,
                    format!("must be between {} and {}", range.start(), range.end()),
                );
                None
            }
            _ => {
                self.err(path, "must be an integer");
                None
            }
        }
    }

    fn url(&mut self, v: Option<&Value>, path: &str, policy: &UrlPolicy) -> Option<String> {
        match v {
            None | Some(Value::Null) => {
                self.err(path, "is required");
                None
            }
            Some(Value::String(s)) => match check_url(s, policy) {
                Ok(u) => Some(u),
                Err(message) => {
                    self.err(path, message);
                    None
                }
            },
            Some(_) => {
                self.err(path, "must be a string");
                None
            }
        }
    }

    fn array<'v>(
        &mut self,
        v: Option<&'v Value>,
        path: &str,
        min: usize,
        max: usize,
        what: &str,
    ) -> &'v [Value] {
        match v {
            None | Some(Value::Null) => {
                self.err(path, format!("at least {min} {what} required"));
                &[]
            }
            Some(Value::Array(items)) if items.len() < min => {
                self.err(path, format!("at least {min} {what} required"));
                &[]
            }
            Some(Value::Array(items)) if items.len() > max => {
                self.err(path, format!("at most {max} {what} allowed"));
                &[]
            }
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.err(path, "must be an array");
                &[]
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Identifiers are JSON keys the receiver reads and `{{…}}` placeholder names.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_IDENTIFIER_CHARS
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
}

/// Checks the form of an outbound URL and returns it as given (trimmed).
pub fn check_url(raw: &str, policy: &UrlPolicy) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    if raw.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("is not an absolute URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_plain_http => {}
        "http" => {
            return Err("must use https (plain http is not allowed by this deployment)".into());
        }
        _ => return Err("must be an http or https URL".into()),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials; use the token instead".into());
    }
    if url.fragment().is_some() {
        return Err("must not contain a fragment".into());
    }
    Ok(raw.to_owned())
}

/// Whether `s` is a date template value: `yyyy-MM-dd` or `yyyy-MM-dd HH:mm:ss`.
pub fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r.clone()].iter().all(u8::is_ascii_digit);
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let date_ok = b.len() >= 10
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && {
            let (y, m, d) = (num(0..4), num(5..7), num(8..10));
            (1..=12).contains(&m) && d >= 1 && d <= crate::clock::days_in_month(i64::from(y), m)
        };
    match b.len() {
        10 => date_ok,
        19 => {
            date_ok
                && b[10] == b' '
                && digits(11..13)
                && b[13] == b':'
                && digits(14..16)
                && b[16] == b':'
                && digits(17..19)
                && num(11..13) < 24
                && num(14..16) < 60
                && num(17..19) < 60
        }
        _ => false,
    }
}

/// Reads a create (`require_version == false`) or replace body.
pub fn parse_touchpoint(
    body: &Value,
    policy: &UrlPolicy,
    require_version: bool,
) -> Result<TouchpointInput, Vec<FieldError>> {
    let mut r = Reader::default();
    let Some(m) = r.object(body, "") else {
        return Err(r.errors);
    };
    let mut known: Vec<&str> = vec![
        "name",
        "kind",
        "description",
        "url",
        "token",
        "batchSize",
        "receipt",
        "userAttributes",
        "templateParams",
        "requestTimeoutSeconds",
        "maxConcurrency",
        "maxRequestsPerSecond",
        "version",
    ];
    known.extend(READ_ONLY_FIELDS);
    r.unknown_fields(m, "", &known);

    let name = r.text(m, "name", "", true, MAX_NAME_CHARS);
    let kind = match m.get("kind") {
        None | Some(Value::Null) => {
            r.err("kind", "is required");
            None
        }
        Some(Value::String(s)) => Kind::parse(s).or_else(|| {
            r.err("kind", "must be one of notification, benefit, other");
            None
        }),
        Some(_) => {
            r.err("kind", "must be a string");
            None
        }
    };
    let description = r.text(m, "description", "", false, MAX_DESCRIPTION_CHARS);
    let url = r.url(m.get("url"), "url", policy);
    let token = match m.get("token") {
        None => TokenPatch::Keep,
        Some(Value::Null) => TokenPatch::Clear,
        Some(Value::String(s)) => match check_token(s) {
            Ok(()) => TokenPatch::Set(Token::new(s.clone())),
            Err(message) => {
                r.err("token", message);
                TokenPatch::Keep
            }
        },
        Some(_) => {
            r.err("token", "must be a string or null");
            TokenPatch::Keep
        }
    };
    let batch_size = match m.get("batchSize") {
        None | Some(Value::Null) => Some(DEFAULT_BATCH_SIZE),
        v => r
            .integer(
                v,
                "batchSize",
                u64::from(*BATCH_SIZE_RANGE.start())..=u64::from(*BATCH_SIZE_RANGE.end()),
            )
            .map(|n| n as u16),
    };
    let mut optional_int = |key: &str, range: std::ops::RangeInclusive<u64>| match m.get(key) {
        None | Some(Value::Null) => None,
        v => r.integer(v, key, range),
    };
    let request_timeout_seconds = optional_int(
        "requestTimeoutSeconds",
        u64::from(*REQUEST_TIMEOUT_SECONDS_RANGE.start())
            ..=u64::from(*REQUEST_TIMEOUT_SECONDS_RANGE.end()),
    )
    .map(|n| n as u8);
    let max_concurrency = optional_int(
        "maxConcurrency",
        u64::from(*MAX_CONCURRENCY_RANGE.start())..=u64::from(*MAX_CONCURRENCY_RANGE.end()),
    )
    .map(|n| n as u16);
    let max_requests_per_second = optional_int(
        "maxRequestsPerSecond",
        u64::from(*MAX_REQUESTS_PER_SECOND_RANGE.start())
            ..=u64::from(*MAX_REQUESTS_PER_SECOND_RANGE.end()),
    )
    .map(|n| n as u16);
    let receipt = parse_receipt(&mut r, m.get("receipt"), policy);
    let user_attributes = parse_user_attributes(&mut r, m.get("userAttributes"));
    let attribute_ids: HashSet<&str> = user_attributes
        .iter()
        .map(|a| a.identifier.as_str())
        .collect();
    let template_params =
        parse_template_params(&mut r, m.get("templateParams"), policy, &attribute_ids);
    // A create ignores the version, but a wrong one is still refused (it is not a field to
    // fill with anything).
    let version = match m.get("version") {
        None | Some(Value::Null) if !require_version => None,
        v => r.integer(v, "version", 1..=u64::MAX),
    };

    match (name, kind, url, batch_size, receipt) {
        (Some(name), Some(kind), Some(url), Some(batch_size), Some(receipt))
            if r.errors.is_empty() =>
        {
            Ok(TouchpointInput {
                spec: TouchpointSpec {
                    name,
                    kind,
                    description,
                    url,
                    batch_size,
                    receipt,
                    user_attributes,
                    template_params,
                    request_timeout_seconds,
                    max_concurrency,
                    max_requests_per_second,
                },
                token,
                version,
            })
        }
        _ => Err(r.errors),
    }
}

pub fn check_token(s: &str) -> Result<(), String> {
    let chars = s.chars().count();
    if chars == 0 {
        return Err("must not be empty; send null to remove the token".into());
    }
    if chars > MAX_TOKEN_CHARS {
        return Err(format!("must be at most {MAX_TOKEN_CHARS} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if let Some(encoded) = s.strip_prefix("whsec_") {
        use base64::Engine;
        match base64::engine::general_purpose::STANDARD.decode(encoded) {
            Ok(key) if !key.is_empty() => {}
            _ => return Err("a whsec_ token must be followed by non-empty base64".into()),
        }
    }
    Ok(())
}

fn parse_receipt(r: &mut Reader, v: Option<&Value>, policy: &UrlPolicy) -> Option<Receipt> {
    let v = match v {
        None | Some(Value::Null) => return Some(Receipt::Sync),
        Some(v) => v,
    };
    let m = r.object(v, "receipt")?;
    match m.get("mode") {
        Some(Value::String(mode)) if mode == "sync" => {
            r.unknown_fields(m, "receipt", &["mode"]);
            Some(Receipt::Sync)
        }
        Some(Value::String(mode)) if mode == "async" => {
            r.unknown_fields(m, "receipt", &["mode", "receiptUrl", "timeoutMinutes"]);
            let url = r.url(m.get("receiptUrl"), "receipt.receiptUrl", policy);
            let timeout = match m.get("timeoutMinutes") {
                None | Some(Value::Null) => Some(u64::from(DEFAULT_RECEIPT_TIMEOUT_MINUTES)),
                v => r.integer(
                    v,
                    "receipt.timeoutMinutes",
                    u64::from(*RECEIPT_TIMEOUT_RANGE.start())
                        ..=u64::from(*RECEIPT_TIMEOUT_RANGE.end()),
                ),
            };
            Some(Receipt::Async {
                receipt_url: url?,
                timeout_minutes: timeout? as u32,
            })
        }
        _ => {
            r.err("receipt.mode", "must be sync or async");
            None
        }
    }
}

fn parse_user_attributes(r: &mut Reader, v: Option<&Value>) -> Vec<UserAttribute> {
    let items = r.array(
        v,
        "userAttributes",
        1,
        MAX_USER_ATTRIBUTES,
        "user attribute(s)",
    );
    let mut out = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("userAttributes[{i}]");
        let Some(m) = r.object(item, &path) else {
            continue;
        };
        r.unknown_fields(
            m,
            &path,
            &["attribute", "identifier", "displayName", "default"],
        );
        let attribute = r.text(m, "attribute", &path, true, MAX_ATTRIBUTE_CHARS);
        // The identifier defaults to the attribute's own key.
        let identifier = match (m.get("identifier"), &attribute) {
            (None | Some(Value::Null), Some(a)) if is_identifier(a) => Some(a.clone()),
            (None | Some(Value::Null), Some(_)) => {
                r.err(
                    format!("{path}.identifier"),
                    "is required because the attribute key is not a valid identifier",
                );
                None
            }
            (None | Some(Value::Null), None) => None,
            (v, _) => r.identifier(v, &format!("{path}.identifier")),
        };
        if let Some(id) = &identifier
            && !seen.insert(id.clone())
        {
            r.err(
                format!("{path}.identifier"),
                format!("duplicate identifier {id:?}"),
            );
        }
        let display_name = r.text(m, "displayName", &path, true, MAX_DISPLAY_NAME_CHARS);
        let default = match m.get("default") {
            None | Some(Value::Null) => None,
            Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
                if v.as_str()
                    .is_some_and(|s| s.chars().count() > MAX_TEXT_CHARS)
                {
                    r.err(
                        format!("{path}.default"),
                        format!("must be at most {MAX_TEXT_CHARS} characters"),
                    );
                }
                Some(v.clone())
            }
            Some(_) => {
                r.err(
                    format!("{path}.default"),
                    "must be a string, number or boolean",
                );
                None
            }
        };
        if let (Some(attribute), Some(identifier), Some(display_name)) =
            (attribute, identifier, display_name)
        {
            out.push(UserAttribute {
                attribute,
                identifier,
                display_name,
                default,
            });
        }
    }
    out
}

fn parse_template_params(
    r: &mut Reader,
    v: Option<&Value>,
    policy: &UrlPolicy,
    attribute_ids: &HashSet<&str>,
) -> Vec<TemplateParam> {
    let items = r.array(
        v,
        "templateParams",
        1,
        MAX_TEMPLATE_PARAMS,
        "template parameter(s)",
    );
    let mut out = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("templateParams[{i}]");
        let Some(m) = r.object(item, &path) else {
            continue;
        };
        r.unknown_fields(
            m,
            &path,
            &[
                "identifier",
                "displayName",
                "type",
                "required",
                "default",
                "enum",
            ],
        );
        let identifier = r.identifier(m.get("identifier"), &format!("{path}.identifier"));
        if let Some(id) = &identifier {
            if attribute_ids.contains(id.as_str()) {
                r.err(
                    format!("{path}.identifier"),
                    format!("identifier {id:?} is already used by a user attribute"),
                );
            } else if !seen.insert(id.clone()) {
                r.err(
                    format!("{path}.identifier"),
                    format!("duplicate identifier {id:?}"),
                );
            }
        }
        let display_name = r.text(m, "displayName", &path, true, MAX_DISPLAY_NAME_CHARS);
        let param_type = match m.get("type") {
            Some(Value::String(s)) => ParamType::parse(s),
            _ => None,
        };
        if param_type.is_none() {
            r.err(
                format!("{path}.type"),
                "must be one of date, number, enum, text",
            );
        }
        let required = r.boolean(m, "required", &path, false);
        let enum_spec = match (param_type, m.get("enum")) {
            (Some(ParamType::Enum), v) => parse_enum(r, v, &format!("{path}.enum"), policy),
            (_, None | Some(Value::Null)) => None,
            (Some(_), Some(_)) => {
                r.err(
                    format!("{path}.enum"),
                    "is only allowed for enum parameters",
                );
                None
            }
            (None, Some(_)) => None,
        };
        let default = match (m.get("default"), param_type) {
            (None | Some(Value::Null), _) | (_, None) => None,
            (Some(v), Some(t)) => {
                let ctx = ValueContext {
                    param_type: t,
                    enum_spec: enum_spec.as_ref(),
                    attribute_ids,
                    api_codes: None,
                };
                match check_template_value(v, &ctx) {
                    Ok(v) => Some(v),
                    Err(message) => {
                        r.err(format!("{path}.default"), message);
                        None
                    }
                }
            }
        };
        let enum_ok = param_type != Some(ParamType::Enum) || enum_spec.is_some();
        if let (Some(identifier), Some(display_name), Some(param_type), true) =
            (identifier, display_name, param_type, enum_ok)
        {
            out.push(TemplateParam {
                identifier,
                display_name,
                param_type,
                required,
                default,
                enum_spec,
            });
        }
    }
    out
}

fn parse_enum(
    r: &mut Reader,
    v: Option<&Value>,
    path: &str,
    policy: &UrlPolicy,
) -> Option<EnumSpec> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        r.err(path, "is required for enum parameters");
        return None;
    };
    let m = r.object(v, path)?;
    let multiple = r.boolean(m, "multiple", path, false);
    let source = match m.get("source") {
        Some(Value::String(s)) if s == "manual" => {
            r.unknown_fields(m, path, &["multiple", "source", "options"]);
            let opts_path = format!("{path}.options");
            let items = r.array(
                m.get("options"),
                &opts_path,
                1,
                MAX_ENUM_OPTIONS,
                "option(s)",
            );
            let mut options = Vec::with_capacity(items.len());
            let mut codes = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let p = format!("{opts_path}[{i}]");
                let Some(o) = r.object(item, &p) else {
                    continue;
                };
                r.unknown_fields(o, &p, &["code", "name"]);
                let code = r.text(o, "code", &p, true, MAX_OPTION_CHARS);
                let name = r.text(o, "name", &p, true, MAX_OPTION_CHARS);
                if let Some(c) = &code
                    && !codes.insert(c.clone())
                {
                    r.err(format!("{p}.code"), format!("duplicate code {c:?}"));
                }
                if let (Some(code), Some(name)) = (code, name) {
                    options.push(EnumOption { code, name });
                }
            }
            (!items.is_empty()).then_some(EnumSource::Manual { options })
        }
        Some(Value::String(s)) if s == "api" => {
            r.unknown_fields(m, path, &["multiple", "source", "optionsUrl"]);
            r.url(m.get("optionsUrl"), &format!("{path}.optionsUrl"), policy)
                .map(|options_url| EnumSource::Api { options_url })
        }
        _ => {
            r.err(format!("{path}.source"), "must be manual or api");
            None
        }
    };
    source.map(|source| EnumSpec { multiple, source })
}

/// What a template value is checked against.
pub struct ValueContext<'a> {
    pub param_type: ParamType,
    pub enum_spec: Option<&'a EnumSpec>,
    /// User-attribute identifiers that text placeholders may name.
    pub attribute_ids: &'a HashSet<&'a str>,
    /// For an enum whose options come from an API: the selectable codes last fetched, if any
    /// list was ever fetched (otherwise codes are accepted unverified).
    pub api_codes: Option<&'a HashSet<String>>,
}

/// Checks a template value (a default or, later, a dispatch's value) against its parameter and
/// returns it in the form sent to the receiver (numeric strings become numbers).
pub fn check_template_value(v: &Value, ctx: &ValueContext<'_>) -> Result<Value, String> {
    match ctx.param_type {
        ParamType::Date => match v {
            Value::String(s) if is_date(s) => Ok(v.clone()),
            _ => Err("must be a date yyyy-MM-dd or yyyy-MM-dd HH:mm:ss".into()),
        },
        ParamType::Number => match v {
            Value::Number(_) => Ok(v.clone()),
            Value::String(s) => s
                .trim()
                .parse::<serde_json::Number>()
                .map(Value::Number)
                .map_err(|_| "must be a number".to_owned()),
            _ => Err("must be a number".into()),
        },
        ParamType::Text => match v {
            Value::String(s) if s.chars().count() > MAX_TEXT_CHARS => {
                Err(format!("must be at most {MAX_TEXT_CHARS} characters"))
            }
            Value::String(s) => {
                let unknown: Vec<&str> = placeholders(s)
                    .filter(|p| !ctx.attribute_ids.contains(p))
                    .collect();
                if unknown.is_empty() {
                    Ok(v.clone())
                } else {
                    Err(format!(
                        "names unknown user attribute(s): {}",
                        unknown
                            .iter()
                            .map(|u| format!("{{{{{u}}}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
            _ => Err("must be a string".into()),
        },
        ParamType::Enum => {
            let Some(spec) = ctx.enum_spec else {
                return Err("has no options".into());
            };
            let codes: Vec<&str> = match (v, spec.multiple) {
                (Value::String(s), _) => vec![s.as_str()],
                (Value::Array(items), true) if !items.is_empty() => {
                    let mut codes = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Value::String(s) => codes.push(s.as_str()),
                            _ => return Err("must be an array of option codes".into()),
                        }
                    }
                    codes
                }
                (Value::Array(_), true) => return Err("must select at least one option".into()),
                _ if spec.multiple => {
                    return Err("must be an option code or an array of option codes".into());
                }
                _ => return Err("must be an option code".into()),
            };
            let known = |c: &str| match &spec.source {
                EnumSource::Manual { options } => options.iter().any(|o| o.code == c),
                EnumSource::Api { .. } => ctx.api_codes.is_none_or(|codes| codes.contains(c)),
            };
            let unknown: Vec<&str> = codes.iter().copied().filter(|c| !known(c)).collect();
            if !unknown.is_empty() {
                return Err(format!("unknown option code(s): {}", unknown.join(", ")));
            }
            // A single code for a multiple-choice parameter is sent as a one-element array.
            Ok(if spec.multiple {
                Value::Array(codes.into_iter().map(|c| Value::String(c.into())).collect())
            } else {
                v.clone()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LAX: UrlPolicy = UrlPolicy {
        allow_plain_http: true,
    };
    const STRICT: UrlPolicy = UrlPolicy {
        allow_plain_http: false,
    };

    fn valid() -> Value {
        json!({
            "name": "券中心",
            "kind": "benefit",
            "url": "https://coupons.example.com/touch",
            "token": "abc123",
            "batchSize": 500,
            "receipt": {"mode": "async", "receiptUrl": "https://coupons.example.com/receipt", "timeoutMinutes": 60},
            "userAttributes": [
                {"attribute": "usr_phone", "identifier": "phone", "displayName": "手机号"},
                {"attribute": "usr_name", "identifier": "name", "displayName": "姓名", "default": "会员"}
            ],
            "templateParams": [
                {"identifier": "title", "displayName": "标题", "type": "text", "required": true, "default": "Hi {{name}}"},
                {"identifier": "startDate", "displayName": "开始日期", "type": "date", "required": true},
                {"identifier": "amount", "displayName": "金额", "type": "number", "required": false, "default": "10"},
                {"identifier": "jump", "displayName": "跳转类型", "type": "enum", "required": true,
                 "enum": {"multiple": false, "source": "manual",
                          "options": [{"code": "JUMP_H5", "name": "跳转到 h5 页面"}, {"code": "NO_JUMP", "name": "无跳转"}]}},
                {"identifier": "material", "displayName": "素材", "type": "enum", "required": false,
                 "enum": {"multiple": true, "source": "api", "optionsUrl": "https://cms.example.com/enum-options"}}
            ]
        })
    }

    fn paths(body: &Value, policy: &UrlPolicy) -> Vec<String> {
        match parse_touchpoint(body, policy, false) {
            Ok(_) => vec![],
            Err(errors) => errors.into_iter().map(|e| e.path).collect(),
        }
    }

    #[test]
    fn given_the_documented_example_when_parsed_then_it_is_accepted_as_written() {
        let input = parse_touchpoint(&valid(), &STRICT, false).unwrap();
        assert_eq!(input.spec.name, "券中心");
        assert_eq!(input.spec.kind, Kind::Benefit);
        assert_eq!(input.token, TokenPatch::Set(Token::new("abc123")));
        assert_eq!(input.spec.template_params[2].default, Some(json!(10)));
        assert_eq!(
            input.spec.receipt,
            Receipt::Async {
                receipt_url: "https://coupons.example.com/receipt".into(),
                timeout_minutes: 60
            }
        );
    }

    #[test]
    fn given_several_broken_rules_when_parsed_then_all_are_reported_with_paths() {
        let mut body = valid();
        body["name"] = json!("");
        body["batchSize"] = json!(501);
        body["kind"] = json!("sms");
        body["templateParams"][2]["identifier"] = json!("phone");
        body["templateParams"][3]["enum"]["options"] = json!([]);
        body["receipt"] = json!({"mode": "async"});
        let got = paths(&body, &STRICT);
        for want in [
            "name",
            "kind",
            "batchSize",
            "receipt.receiptUrl",
            "templateParams[2].identifier",
            "templateParams[3].enum.options",
        ] {
            assert!(
                got.contains(&want.to_owned()),
                "{want} missing from {got:?}"
            );
        }
    }

    #[test]
    fn name_length_counts_characters_not_bytes() {
        let mut body = valid();
        body["name"] = json!("一二三四五六七八九十一二三四五");
        assert!(paths(&body, &STRICT).is_empty());
        body["name"] = json!("一二三四五六七八九十一二三四五六");
        assert_eq!(paths(&body, &STRICT), ["name"]);
        body["name"] = json!("abcdefghijklmno");
        assert!(paths(&body, &STRICT).is_empty());
        body["name"] = json!("abcdefghijklmnop");
        assert_eq!(paths(&body, &STRICT), ["name"]);
    }

    #[test]
    fn batch_size_is_bounded_and_defaults_to_500() {
        let mut body = valid();
        for (n, ok) in [
            (0, false),
            (1, true),
            (500, true),
            (501, false),
            (-1, false),
        ] {
            body["batchSize"] = json!(n);
            assert_eq!(paths(&body, &STRICT).is_empty(), ok, "batch {n}");
        }
        body["batchSize"] = json!(2.5);
        assert_eq!(paths(&body, &STRICT), ["batchSize"]);
        body.as_object_mut().unwrap().remove("batchSize");
        let input = parse_touchpoint(&body, &STRICT, false).unwrap();
        assert_eq!(input.spec.batch_size, 500);
    }

    #[test]
    fn urls_must_be_absolute_http_and_https_only_when_allowed() {
        let mut body = valid();
        body["url"] = json!("http://127.0.0.1:9000/touch");
        assert_eq!(paths(&body, &STRICT), ["url"]);
        assert!(paths(&body, &LAX).is_empty());
        for bad in [
            "/touch",
            "ftp://x.example.com/",
            "https://user:pw@x.example.com/",
            "https://x.example.com/#f",
            "not a url",
        ] {
            body["url"] = json!(bad);
            assert_eq!(paths(&body, &LAX), ["url"], "{bad}");
        }
    }

    #[test]
    fn identifier_defaults_to_the_attribute_and_must_be_unique_across_lists() {
        let mut body = valid();
        body["userAttributes"] = json!([{"attribute": "usr_name", "displayName": "n"}]);
        body["templateParams"] =
            json!([{"identifier": "usr_name", "displayName": "t", "type": "text"}]);
        assert_eq!(paths(&body, &STRICT), ["templateParams[0].identifier"]);
        body["templateParams"] = json!([{"identifier": "t", "displayName": "t", "type": "text"},
                                        {"identifier": "t", "displayName": "t", "type": "number"}]);
        assert_eq!(paths(&body, &STRICT), ["templateParams[1].identifier"]);
    }

    #[test]
    fn text_placeholders_must_name_user_attributes() {
        let mut body = valid();
        body["templateParams"][0]["default"] = json!("Hi {{nickname}}");
        assert_eq!(paths(&body, &STRICT), ["templateParams[0].default"]);
    }

    #[test]
    fn defaults_are_checked_against_their_type() {
        let mut body = valid();
        body["templateParams"][1]["default"] = json!("2026-02-30");
        body["templateParams"][2]["default"] = json!("ten");
        body["templateParams"][3]["default"] = json!("NOPE");
        assert_eq!(
            paths(&body, &STRICT),
            [
                "templateParams[1].default",
                "templateParams[2].default",
                "templateParams[3].default"
            ]
        );
    }

    #[test]
    fn dates_have_two_forms() {
        assert!(is_date("2026-12-01"));
        assert!(is_date("2024-02-29 23:59:59"));
        assert!(!is_date("2025-02-29"));
        assert!(!is_date("2026-12-01T10:00:00"));
        assert!(!is_date("2026-1-01"));
        assert!(!is_date("2026-12-01 24:00:00"));
        assert!(!is_date("２０２６-12-01"));
    }

    #[test]
    fn unknown_fields_are_refused_and_read_only_ones_ignored() {
        let mut body = valid();
        body["id"] = json!("tp_x");
        body["tokenSet"] = json!(true);
        assert!(paths(&body, &STRICT).is_empty());
        body["colour"] = json!("red");
        body["userAttributes"][0]["extra"] = json!(1);
        assert_eq!(paths(&body, &STRICT), ["colour", "userAttributes[0].extra"]);
    }

    #[test]
    fn token_null_clears_and_absent_keeps() {
        let mut body = valid();
        body["token"] = Value::Null;
        assert_eq!(
            parse_touchpoint(&body, &STRICT, false).unwrap().token,
            TokenPatch::Clear
        );
        body.as_object_mut().unwrap().remove("token");
        assert_eq!(
            parse_touchpoint(&body, &STRICT, false).unwrap().token,
            TokenPatch::Keep
        );
        body["token"] = json!("whsec_!!!");
        assert_eq!(paths(&body, &STRICT), ["token"]);
    }

    #[test]
    fn delivery_settings_are_optional_and_bounded() {
        let mut body = valid();
        body["requestTimeoutSeconds"] = json!(60);
        body["maxConcurrency"] = json!(16);
        body["maxRequestsPerSecond"] = json!(10_000);
        let spec = parse_touchpoint(&body, &STRICT, false).unwrap().spec;
        assert_eq!(
            (
                spec.request_timeout_seconds,
                spec.max_concurrency,
                spec.max_requests_per_second
            ),
            (Some(60), Some(16), Some(10_000))
        );
        body["requestTimeoutSeconds"] = json!(61);
        body["maxConcurrency"] = json!(0);
        body["maxRequestsPerSecond"] = json!(10_001);
        assert_eq!(
            paths(&body, &STRICT),
            [
                "requestTimeoutSeconds",
                "maxConcurrency",
                "maxRequestsPerSecond"
            ]
        );
        body["maxRequestsPerSecond"] = json!(0);
        assert!(paths(&body, &STRICT).contains(&"maxRequestsPerSecond".to_owned()));
    }

    #[test]
    fn replace_needs_a_version() {
        let body = valid();
        let errors = parse_touchpoint(&body, &STRICT, true).unwrap_err();
        assert_eq!(errors[0].path, "version");
    }
}
