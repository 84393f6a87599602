//! Enum parameter options (protocol §4): typed in by hand, or fetched from the content
//! system's options API through the SSRF-guarded client, cached for 5 minutes per parameter.
//! When a refresh fails the last good list is served, marked stale. At most 100 selectable
//! options are kept, and a cut is reported. Two-level answers become categories with children.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use touchpoint::clock::{Clock, Millis};
use touchpoint::model::{EnumSource, ParamType, TemplateParam, Touchpoint};
use touchpoint::protocol::{USER_AGENT, truncate};
use touchpoint_outbound::Outbound;

/// How long fetched options are served without asking again.
pub const OPTIONS_TTL: Duration = Duration::from_secs(300);
/// Most selectable options kept.
pub const MAX_OPTIONS: usize = 100;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One option, or a category whose children are the selectable options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OptionNode {
    pub code: String,
    pub name: String,
    /// A category's selectable options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub children: Vec<OptionNode>,
}

/// What the options endpoint shows.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EnumOptions)]
#[serde(rename_all = "camelCase")]
pub struct OptionsView {
    pub identifier: String,
    pub source: &'static str,
    pub multiple: bool,
    pub options: Vec<OptionNode>,
    /// The list is the last good one: the latest refresh failed.
    pub stale: bool,
    /// The upstream list had more than [`MAX_OPTIONS`] options.
    pub truncated: bool,
    pub fetched_at: Option<Millis>,
    /// Why the latest refresh failed, when it did.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("{0} is not an enum parameter")]
    NotEnum(String),
    /// No list could be fetched and none was ever cached.
    #[error("the options API failed: {0}")]
    Upstream(String),
}

#[derive(Clone)]
struct Entry {
    options: Vec<OptionNode>,
    truncated: bool,
    fetched_at: Millis,
}

type Key = (i64, touchpoint::ids::TouchpointId, String, String);

/// The per-process cache.
pub struct EnumOptions {
    outbound: Outbound,
    clock: Arc<dyn Clock>,
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<Entry>>>>>,
}

/// The selectable codes of a list: leaves, and the children of categories.
pub fn selectable_codes(options: &[OptionNode]) -> HashSet<String> {
    options
        .iter()
        .flat_map(|o| {
            if o.children.is_empty() {
                vec![o.code.clone()]
            } else {
                o.children.iter().map(|c| c.code.clone()).collect()
            }
        })
        .collect()
}

/// Reads an options API answer: `{"code":0,"enumArgs":[{"code","description","childEnumArgs"?}]}`.
pub fn parse_options(body: &[u8]) -> Result<(Vec<OptionNode>, bool), String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_owned())?;
    match v.get("code").and_then(Value::as_i64) {
        Some(0) => {}
        Some(code) => {
            let message = v.get("message").and_then(Value::as_str).unwrap_or_default();
            return Err(format!("code {code} {}", truncate(message, 200))
                .trim_end()
                .to_owned());
        }
        None => return Err("the answer has no integer code".into()),
    }
    let Some(args) = v.get("enumArgs").and_then(Value::as_array) else {
        return Err("the answer has no enumArgs list".into());
    };
    let node = |a: &Value| -> Option<OptionNode> {
        let code = a
            .get("code")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())?;
        let name = a.get("description").and_then(Value::as_str).unwrap_or(code);
        Some(OptionNode {
            code: truncate(code, 100),
            name: truncate(name, 100),
            children: Vec::new(),
        })
    };
    let mut out = Vec::new();
    let mut kept = 0;
    let mut truncated = false;
    for a in args {
        if kept >= MAX_OPTIONS {
            truncated = true;
            break;
        }
        let Some(mut n) = node(a) else { continue };
        if let Some(children) = a
            .get("childEnumArgs")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
        {
            for c in children {
                if kept >= MAX_OPTIONS {
                    truncated = true;
                    break;
                }
                if let Some(child) = node(c) {
                    n.children.push(child);
                    kept += 1;
                }
            }
            if n.children.is_empty() {
                continue;
            }
        } else {
            kept += 1;
        }
        out.push(n);
    }
    Ok((out, truncated))
}

impl EnumOptions {
    pub fn new(outbound: Outbound, clock: Arc<dyn Clock>) -> EnumOptions {
        EnumOptions {
            outbound,
            clock,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The options of an enum parameter, fetching (at most once per 5 minutes) when they
    /// come from an API.
    pub async fn options(
        &self,
        tp: &Touchpoint,
        param: &TemplateParam,
    ) -> Result<OptionsView, OptionsError> {
        let spec = match (&param.param_type, &param.enum_spec) {
            (ParamType::Enum, Some(spec)) => spec,
            _ => return Err(OptionsError::NotEnum(param.identifier.clone())),
        };
        let mut view = OptionsView {
            identifier: param.identifier.clone(),
            source: "manual",
            multiple: spec.multiple,
            options: Vec::new(),
            stale: false,
            truncated: false,
            fetched_at: None,
            error: None,
        };
        let url = match &spec.source {
            EnumSource::Manual { options } => {
                view.options = options
                    .iter()
                    .map(|o| OptionNode {
                        code: o.code.clone(),
                        name: o.name.clone(),
                        children: Vec::new(),
                    })
                    .collect();
                return Ok(view);
            }
            EnumSource::Api { options_url } => options_url,
        };
        view.source = "api";
        let key = (
            tp.project_id,
            tp.id.clone(),
            param.identifier.clone(),
            url.clone(),
        );
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(slots.entry(key).or_default())
        };
        // One refresh per parameter at a time; concurrent readers wait for it.
        let mut entry = slot.lock().await;
        let now = self.clock.now_ms();
        let fresh = entry
            .as_ref()
            .is_some_and(|e| now - e.fetched_at < OPTIONS_TTL.as_millis() as i64);
        if !fresh {
            match self.fetch(tp, param, url).await {
                Ok((options, truncated)) => {
                    if truncated {
                        tracing::warn!(touchpoint = %tp.id, param = %param.identifier, "options API returned more than {MAX_OPTIONS} options; truncated");
                    }
                    *entry = Some(Entry {
                        options,
                        truncated,
                        fetched_at: now,
                    });
                }
                Err(e) => {
                    tracing::warn!(touchpoint = %tp.id, param = %param.identifier, error = %e, "options refresh failed");
                    if entry.is_none() {
                        return Err(OptionsError::Upstream(e));
                    }
                    view.stale = true;
                    view.error = Some(e);
                }
            }
        }
        if let Some(e) = entry.as_ref() {
            view.options = e.options.clone();
            view.truncated = e.truncated;
            view.fetched_at = Some(e.fetched_at);
        }
        Ok(view)
    }

    /// Selectable codes of every API-backed enum parameter of `tp` whose list can be had, for
    /// validating a dispatch; a parameter with no list is left out (its codes are accepted).
    pub async fn api_codes(&self, tp: &Touchpoint) -> HashMap<String, HashSet<String>> {
        let mut out = HashMap::new();
        for p in &tp.spec.template_params {
            if !matches!(
                p.enum_spec.as_ref().map(|e| &e.source),
                Some(EnumSource::Api { .. })
            ) {
                continue;
            }
            match self.options(tp, p).await {
                Ok(view) => {
                    out.insert(p.identifier.clone(), selectable_codes(&view.options));
                }
                Err(e) => {
                    tracing::warn!(touchpoint = %tp.id, param = %p.identifier, error = %e, "no options list; accepting the dispatch's codes unverified");
                }
            }
        }
        out
    }

    async fn fetch(
        &self,
        tp: &Touchpoint,
        param: &TemplateParam,
        url: &str,
    ) -> Result<(Vec<OptionNode>, bool), String> {
        let body = serde_json::to_vec(&json!({
            "projectId": tp.project_id,
            "paramDescription": param.display_name,
            "paramName": param.identifier,
        }))
        .unwrap_or_default();
        let reply = self
            .outbound
            .post_json(
                url,
                body,
                &[("user-agent", USER_AGENT.to_owned())],
                FETCH_TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())?;
        if !(200..300).contains(&reply.status) {
            return Err(format!("HTTP {}", reply.status));
        }
        if reply.truncated {
            return Err(format!(
                "the answer is larger than {} bytes",
                touchpoint_outbound::MAX_RESPONSE_BYTES
            ));
        }
        parse_options(&reply.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flat_and_two_level_lists() {
        let body = br#"{"code":0,"enumArgs":[
            {"code":"JUMP_H5","description":"h5"},
            {"code":"CAT","description":"category","childEnumArgs":[{"code":"A","description":"a"},{"code":"B"}]},
            {"code":"","description":"no code"}]}"#;
        let (options, truncated) = parse_options(body).unwrap();
        assert!(!truncated);
        assert_eq!(options.len(), 2);
        assert_eq!(options[1].children.len(), 2);
        assert_eq!(options[1].children[1].name, "B");
        assert_eq!(
            selectable_codes(&options),
            HashSet::from(["JUMP_H5".into(), "A".into(), "B".into()])
        );
    }

    #[test]
    fn refuses_other_shapes_and_cuts_at_100() {
        assert!(
            parse_options(br#"{"code":1,"message":"denied"}"#)
                .unwrap_err()
                .contains("denied")
        );
        assert!(parse_options(b"[]").is_err());
        assert!(parse_options(br#"{"code":0}"#).is_err());
        let many: Vec<Value> = (0..150)
            .map(|i| json!({"code": format!("c{i}"), "description": "x"}))
            .collect();
        let body = serde_json::to_vec(&json!({"code": 0, "enumArgs": many})).unwrap();
        let (options, truncated) = parse_options(&body).unwrap();
        assert_eq!((options.len(), truncated), (100, true));
    }
}
