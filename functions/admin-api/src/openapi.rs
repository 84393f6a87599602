//! The OpenAPI 3.1 document served at `/v1/openapi.json`, built from the domain's own limits
//! and enumerations so it cannot drift from what the validators enforce. A test walks every
//! operation listed here against the router.

use serde_json::{Value, json};
use touchpoint::model::*;
use touchpoint::service::MAX_PAGE_SIZE;

/// Every operation: method, path, summary, roles allowed, request schema, success status and
/// response schema.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub roles: &'static str,
    pub request: Option<&'static str>,
    pub status: u16,
    pub response: Option<&'static str>,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    roles: &'static str,
    request: Option<&'static str>,
    status: u16,
    response: Option<&'static str>,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        roles,
        request,
        status,
        response,
    }
}

pub const OPERATIONS: &[Operation] = &[
    op(
        "get",
        "/healthz",
        "Liveness",
        "none",
        None,
        200,
        Some("Health"),
    ),
    op(
        "get",
        "/v1/openapi.json",
        "This document",
        "none",
        None,
        200,
        None,
    ),
    op(
        "post",
        "/v1/touchpoints",
        "Register a touchpoint (enabled, authorized for no space)",
        "admin",
        Some("TouchpointInput"),
        201,
        Some("Touchpoint"),
    ),
    op(
        "get",
        "/v1/touchpoints",
        "List touchpoints, filtered and paged",
        "admin",
        None,
        200,
        Some("TouchpointPage"),
    ),
    op(
        "get",
        "/v1/touchpoints/{id}",
        "Read a touchpoint",
        "admin",
        None,
        200,
        Some("Touchpoint"),
    ),
    op(
        "put",
        "/v1/touchpoints/{id}",
        "Replace the editable fields of a disabled touchpoint",
        "admin",
        Some("TouchpointReplace"),
        200,
        Some("Touchpoint"),
    ),
    op(
        "delete",
        "/v1/touchpoints/{id}",
        "Delete a disabled touchpoint (optional ?version=N)",
        "admin",
        None,
        204,
        None,
    ),
    op(
        "post",
        "/v1/touchpoints/{id}/enable",
        "Enable",
        "admin",
        Some("VersionInput"),
        200,
        Some("Touchpoint"),
    ),
    op(
        "post",
        "/v1/touchpoints/{id}/disable",
        "Disable, unless active campaigns use it",
        "admin",
        Some("VersionInput"),
        200,
        Some("Touchpoint"),
    ),
    op(
        "put",
        "/v1/touchpoints/{id}/spaces",
        "Replace the authorized spaces",
        "admin",
        Some("SpacesInput"),
        200,
        Some("Touchpoint"),
    ),
    op(
        "get",
        "/v1/touchpoints/{id}/campaigns",
        "Campaigns that reference the touchpoint",
        "admin, campaign",
        None,
        200,
        Some("CampaignRefList"),
    ),
    op(
        "put",
        "/v1/touchpoints/{id}/campaigns/{campaignId}",
        "Record a campaign's reference and state",
        "admin, campaign",
        Some("CampaignRefInput"),
        200,
        Some("CampaignRef"),
    ),
    op(
        "delete",
        "/v1/touchpoints/{id}/campaigns/{campaignId}",
        "Remove a campaign's reference",
        "admin, campaign",
        None,
        204,
        None,
    ),
    op(
        "post",
        "/v1/touchpoints/{id}/test",
        "Test send: one real signed request, enabled or not, not counted",
        "admin",
        Some("TestSendInput"),
        200,
        Some("TestSendReport"),
    ),
    op(
        "get",
        "/v1/touchpoints/{id}/stats",
        "Users sent, succeeded, failed and pending through the touchpoint; the last `hours` hour by hour and their most frequent failure reasons",
        "admin",
        None,
        200,
        Some("Statistics"),
    ),
    op(
        "get",
        "/v1/touchpoints/{id}/params/{identifier}/options",
        "An enum parameter's options (manual, or from its options API, cached 5 minutes)",
        "admin, operator of an authorized space",
        None,
        200,
        Some("EnumOptions"),
    ),
    op(
        "post",
        "/v1/dispatches",
        "Hand in a dispatch (202 queued; 200 when the dispatchId was seen before)",
        "campaign, admin",
        Some("Dispatch"),
        202,
        Some("DispatchAccepted"),
    ),
    op(
        "get",
        "/v1/dispatches/{dispatchId}",
        "A dispatch's state, counts and batches (URL-encode the id)",
        "campaign, admin",
        None,
        200,
        Some("DispatchState"),
    ),
    op(
        "get",
        "/v1/batches/{orderNo}",
        "A batch: per-user results, pending users, attempts, polls, last HTTP status and error, response excerpt",
        "campaign, admin",
        None,
        200,
        Some("BatchState"),
    ),
    op(
        "get",
        "/v1/campaigns/{campaignId}/stats",
        "Users sent, succeeded, failed and pending for a campaign; the last `hours` hour by hour and their most frequent failure reasons",
        "campaign, admin",
        None,
        200,
        Some("Statistics"),
    ),
    op(
        "get",
        "/v1/spaces/{spaceId}/touchpoints",
        "What operators of a space may pick, with each parameter's input",
        "admin, operator of the space",
        None,
        200,
        Some("SpaceTouchpoints"),
    ),
];

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn names<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter().map(|x| name(*x)).collect()
}

fn schemas() -> Value {
    let kinds = names(&Kind::ALL, Kind::as_str);
    let types = names(&ParamType::ALL, ParamType::as_str);
    let states = names(&CampaignState::ALL, CampaignState::as_str);
    let url = json!({"type": "string", "format": "uri", "maxLength": 2048});
    let receipt = json!({"oneOf": [
        {"type": "object", "required": ["mode"], "properties": {"mode": {"const": "sync"}}},
        {"type": "object", "required": ["mode", "receiptUrl"], "properties": {
            "mode": {"const": "async"},
            "receiptUrl": url,
            "timeoutMinutes": {"type": "integer", "minimum": RECEIPT_TIMEOUT_RANGE.start(), "maximum": RECEIPT_TIMEOUT_RANGE.end(), "default": DEFAULT_RECEIPT_TIMEOUT_MINUTES}
        }}
    ]});
    let user_attribute = json!({"type": "object", "required": ["attribute", "displayName"], "properties": {
        "attribute": {"type": "string", "description": "source attribute or identity in the data center"},
        "identifier": {"type": "string", "pattern": "^[A-Za-z0-9_$.-]{1,64}$", "description": "key sent in dynamicData; defaults to attribute"},
        "displayName": {"type": "string"},
        "default": {"type": ["string", "number", "boolean"], "description": "sent when the user's value is empty"}
    }});
    let enum_spec = json!({"oneOf": [
        {"type": "object", "required": ["source", "options"], "properties": {
            "multiple": {"type": "boolean", "default": false},
            "source": {"const": "manual"},
            "options": {"type": "array", "minItems": 1, "maxItems": MAX_ENUM_OPTIONS, "items": {
                "type": "object", "required": ["code", "name"],
                "properties": {"code": {"type": "string"}, "name": {"type": "string"}}}}
        }},
        {"type": "object", "required": ["source", "optionsUrl"], "properties": {
            "multiple": {"type": "boolean", "default": false},
            "source": {"const": "api"},
            "optionsUrl": url
        }}
    ]});
    let template_param = json!({"type": "object", "required": ["identifier", "displayName", "type"], "properties": {
        "identifier": {"type": "string", "pattern": "^[A-Za-z0-9_$.-]{1,64}$", "description": "key sent in temData"},
        "displayName": {"type": "string"},
        "type": {"enum": types},
        "required": {"type": "boolean", "default": false},
        "default": {"description": "date: yyyy-MM-dd or yyyy-MM-dd HH:mm:ss; number; enum: option code (array when multiple); text: may contain {{identifier}} placeholders"},
        "enum": enum_spec
    }});
    let editable = json!({
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS, "description": "unique in the project; counted in Unicode characters"},
        "kind": {"enum": kinds, "description": "cannot change after creation"},
        "description": {"type": "string", "maxLength": 500},
        "url": url,
        "token": {"type": ["string", "null"], "writeOnly": true, "maxLength": 256, "description": "signing secret; never returned. On PUT: absent keeps it, null clears it"},
        "batchSize": {"type": "integer", "minimum": BATCH_SIZE_RANGE.start(), "maximum": BATCH_SIZE_RANGE.end(), "default": DEFAULT_BATCH_SIZE},
        "receipt": receipt,
        "userAttributes": {"type": "array", "minItems": 1, "maxItems": MAX_USER_ATTRIBUTES, "items": user_attribute},
        "templateParams": {"type": "array", "minItems": 1, "maxItems": MAX_TEMPLATE_PARAMS, "items": template_param},
        "requestTimeoutSeconds": {"type": "integer", "minimum": REQUEST_TIMEOUT_SECONDS_RANGE.start(), "maximum": REQUEST_TIMEOUT_SECONDS_RANGE.end(), "description": "per request to the receiver; default 15"},
        "maxConcurrency": {"type": "integer", "minimum": MAX_CONCURRENCY_RANGE.start(), "maximum": MAX_CONCURRENCY_RANGE.end(), "description": "requests in flight per process; default 4"}
    });
    let mut replace = editable.clone();
    replace["version"] = json!({"type": "integer", "minimum": 1, "description": "the version this edit is based on"});
    let mut touchpoint = editable.clone();
    if let Some(props) = touchpoint.as_object_mut() {
        props.remove("token");
        for (k, v) in [
            ("id", json!({"type": "string", "readOnly": true})),
            ("projectId", json!({"type": "integer", "readOnly": true})),
            ("tokenSet", json!({"type": "boolean", "readOnly": true})),
            ("enabled", json!({"type": "boolean", "readOnly": true})),
            (
                "spaceIds",
                json!({"type": "array", "items": {"type": "string"}, "readOnly": true}),
            ),
            ("version", json!({"type": "integer", "readOnly": true})),
            (
                "createdAt",
                json!({"type": "string", "format": "date-time", "readOnly": true}),
            ),
            (
                "updatedAt",
                json!({"type": "string", "format": "date-time", "readOnly": true}),
            ),
        ] {
            props.insert(k.into(), v);
        }
    }
    let campaign_ref = json!({"type": "object", "properties": {
        "campaignId": {"type": "string"}, "name": {"type": "string"}, "state": {"enum": states},
        "blocksDisable": {"type": "boolean"}, "updatedAt": {"type": "string", "format": "date-time"}
    }});
    json!({
        "Health": {"type": "object", "properties": {"status": {"const": "ok"}, "version": {"type": "string"}}},
        "TouchpointInput": {"type": "object", "additionalProperties": false, "required": ["name", "kind", "url", "userAttributes", "templateParams"], "properties": editable},
        "TouchpointReplace": {"type": "object", "additionalProperties": false, "required": ["name", "kind", "url", "userAttributes", "templateParams", "version"], "properties": replace},
        "Touchpoint": {"type": "object", "properties": touchpoint},
        "TouchpointPage": {"type": "object", "properties": {
            "items": {"type": "array", "items": schema_ref("Touchpoint")},
            "nextCursor": {"type": ["string", "null"], "description": "pass as ?cursor= for the next page"}
        }},
        "VersionInput": {"type": "object", "properties": {"version": {"type": "integer", "minimum": 1}}},
        "SpacesInput": {"type": "object", "required": ["spaceIds"], "properties": {
            "spaceIds": {"type": "array", "maxItems": MAX_SPACES, "items": {"type": "string", "minLength": 1, "maxLength": 64}},
            "version": {"type": "integer", "minimum": 1}
        }},
        "CampaignRefInput": {"type": "object", "required": ["state"], "properties": {
            "state": {"enum": states, "description": "running, paused, not_started, pending_publish and in_approval block disabling"},
            "name": {"type": "string", "maxLength": 100}
        }},
        "CampaignRef": campaign_ref,
        "CampaignRefList": {"type": "object", "properties": {"items": {"type": "array", "items": schema_ref("CampaignRef")}}},
        "SpaceTouchpoints": {"type": "object", "properties": {
            "spaceId": {"type": "string"},
            "items": {"type": "array", "items": {"type": "object", "description": "id, name, kind, receiptMode, userAttributes and templateParams, each parameter with its input: date-picker, number-input, select, multi-select or text-input"}}
        }},
        "Dispatch": {"type": "object", "required": ["dispatchId", "projectId", "spaceId", "campaignId", "touchpointId", "users"], "properties": {
            "dispatchId": {"type": "string", "description": "the producer's idempotency key, unique per project"},
            "projectId": {"type": "integer"}, "spaceId": {"type": "string"}, "campaignId": {"type": "string"},
            "strategyId": {"type": "string"}, "touchpointId": {"type": "string"},
            "templateValues": {"type": "object"},
            "users": {"type": "array", "minItems": 1, "maxItems": touchpoint::dispatch::MAX_USERS, "items": {"type": "object", "required": ["gid"], "properties": {
                "gid": {"type": "integer"}, "attributes": {"type": "object"}}}}
        }},
        "DispatchAccepted": {"type": "object", "properties": {"dispatchId": {"type": "string"}, "status": {"enum": ["queued", "duplicate"]}}},
        "DispatchState": {"type": "object", "properties": {"state": {"enum": ["queued", "dead_lettered", "in_progress", "completed", "rejected"]}, "counts": {"type": "object"}, "batches": {"type": "array"}}},
        "BatchState": {"type": "object", "properties": {"orderNo": {"type": "string"}, "state": {"enum": ["in_flight", "retry_wait", "accepted", "final"]}, "results": {"type": "array"}}},
        "EnumOptions": {"type": "object", "properties": {
            "identifier": {"type": "string"}, "source": {"enum": ["manual", "api"]}, "multiple": {"type": "boolean"},
            "options": {"type": "array", "items": {"type": "object", "properties": {"code": {"type": "string"}, "name": {"type": "string"},
                "children": {"type": "array", "description": "a category's selectable options"}}}},
            "stale": {"type": "boolean", "description": "the latest refresh failed; this is the last good list"},
            "truncated": {"type": "boolean", "description": "the API offered more than 100 options"},
            "fetchedAt": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]}}},
        "Statistics": {"type": "object", "properties": {
            "sent": {"type": "integer"}, "succeeded": {"type": "integer"}, "failed": {"type": "integer"}, "pending": {"type": "integer"},
            "window": {"type": "object", "properties": {"hours": {"type": "integer"}, "from": {"type": "string", "format": "date-time"}, "to": {"type": "string", "format": "date-time"},
                "succeeded": {"type": "integer"}, "failed": {"type": "integer"}, "successRate": {"type": ["number", "null"], "description": "succeeded / (succeeded + failed) in the window"}}},
            "series": {"type": "array", "description": "every hour of the window, oldest first: users sent in it and users that became final in it", "items": {"type": "object", "properties": {
                "hour": {"type": "string", "format": "date-time"}, "sent": {"type": "integer"}, "succeeded": {"type": "integer"}, "failed": {"type": "integer"}, "pending": {"type": "integer", "description": "users still pending at the end of the hour"},
                "lastOrderNo": {"type": ["string", "null"], "description": "a batch settled in the hour"}}}},
            "failureReasons": {"type": "array", "maxItems": 10, "description": "most frequent first; each settled batch adds its 5 most frequent reasons, cut to 120 characters", "items": {"type": "object", "properties": {
                "reason": {"type": "string"}, "count": {"type": "integer"}, "sampleOrderNo": {"type": ["string", "null"], "description": "a batch with users that failed for this reason"}}}}}},
        "TestSendInput": {"type": "object", "required": ["users"], "properties": {
            "users": {"type": "array", "minItems": 1, "maxItems": 10, "items": {"type": "object", "properties": {"gid": {"type": "integer"}, "attributes": {"type": "object"}}}},
            "templateValues": {"type": "object"}}},
        "TestSendReport": {"type": "object", "properties": {"orderNo": {"type": "string"}, "request": {"type": "object"}, "httpStatus": {"type": ["integer", "null"]},
            "latencyMs": {"type": ["integer", "null"]}, "ok": {"type": "boolean"}, "error": {"type": ["string", "null"]}, "responseExcerpt": {"type": ["string", "null"]}, "results": {"type": "array"}}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object", "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}},
            "campaigns": {"type": "array", "items": schema_ref("CampaignRef"), "description": "on touchpoint_in_use: the campaigns that block disabling"},
            "currentVersion": {"type": "integer", "description": "on version_conflict"}
        }}}}
    })
}

fn parameters(path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for name in [
        "id",
        "campaignId",
        "spaceId",
        "dispatchId",
        "orderNo",
        "identifier",
    ] {
        if path.contains(&format!("{{{name}}}")) {
            out.push(
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}),
            );
        }
    }
    if path.ends_with("/stats") {
        out.push(json!({"name": "hours", "in": "query", "description": "the window of the series and failure reasons", "schema": {"type": "integer", "minimum": 1, "maximum": 168, "default": 24}}));
    }
    if path == "/v1/touchpoints" {
        out.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 20}}));
        out.push(json!({"name": "cursor", "in": "query", "schema": {"type": "string"}}));
        out.push(json!({"name": "kind", "in": "query", "schema": {"enum": names(&Kind::ALL, Kind::as_str)}}));
        out.push(json!({"name": "enabled", "in": "query", "schema": {"type": "boolean"}}));
        out.push(json!({"name": "q", "in": "query", "description": "name contains", "schema": {"type": "string"}}));
    }
    out
}

/// The document.
pub fn document() -> Value {
    let error = |d: &str| json!({"description": d, "content": {"application/json": {"schema": schema_ref("Error")}}});
    let mut paths = serde_json::Map::new();
    for o in OPERATIONS {
        let mut responses = serde_json::Map::new();
        let ok = match o.response {
            Some(s) => {
                json!({"description": "success", "content": {"application/json": {"schema": schema_ref(s)}}})
            }
            None => json!({"description": "success"}),
        };
        responses.insert(o.status.to_string(), ok);
        if o.roles != "none" {
            responses.insert("401".into(), error("missing or unknown credentials"));
            responses.insert("403".into(), error("the caller's role may not do this"));
            responses.insert(
                "404".into(),
                error("no such resource in the caller's project"),
            );
        }
        if o.request.is_some() {
            responses.insert("400".into(), error("malformed JSON"));
            responses.insert("409".into(), error("lifecycle or version conflict"));
            responses.insert("413".into(), error("body over 1 MiB"));
            responses.insert(
                "422".into(),
                error("validation failed; details name each field"),
            );
        }
        let mut operation = json!({
            "summary": o.summary,
            "description": format!("Roles: {}.", o.roles),
            "parameters": parameters(o.path),
            "responses": responses,
        });
        if o.roles != "none" {
            operation["security"] = json!([{"bearer": []}]);
        }
        if let Some(r) = o.request {
            operation["requestBody"] = json!({"required": r != "VersionInput", "content": {"application/json": {"schema": schema_ref(r)}}});
        }
        let entry = paths.entry(o.path.to_owned()).or_insert_with(|| json!({}));
        entry[o.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "touchpoint admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Register custom touchpoints (webhooks), authorize spaces, enable, disable and delete them."
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}
