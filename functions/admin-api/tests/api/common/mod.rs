//! What the admin API tests share: the Router on an in-memory SQLite store, the keys of each
//! role, and a valid touchpoint body.

#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use touchpoint::SystemClock;
use touchpoint_admin_api::{ApiKeys, router};
use touchpoint_dispatcher::Dispatcher;
use touchpoint_embedded::SqliteStore;
use touchpoint_outbound::Outbound;
use touchpoint_services::{Services, Settings};
use tower::ServiceExt;

pub const ADMIN: &str = "admin-key-project-1";
pub const ADMIN_2: &str = "admin-key-project-2";
pub const OPERATOR_A: &str = "operator-key-space-a";
pub const CAMPAIGN: &str = "campaign-key-project-1";
pub const OPERATOR_2: &str = "operator-key-project-2-space-a";
pub const CAMPAIGN_2: &str = "campaign-key-project-2";
/// Every token in these tests contains this, so a leak is easy to spot.
pub const SECRET: &str = "SECRET-tok";

pub struct Api {
    pub app: Router,
    pub dispatcher: Arc<Dispatcher>,
    pub store: SqliteStore,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn error_paths(&self) -> Vec<String> {
        self.body["error"]["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|e| e["path"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Api {
    pub fn new() -> Api {
        let store = SqliteStore::in_memory().expect("in-memory store");
        let keys = ApiKeys::parse(&format!(
            "{ADMIN}=1:admin,{ADMIN_2}=2:admin,{OPERATOR_A}=1:operator:space-a,{CAMPAIGN}=1:campaign,{OPERATOR_2}=2:operator:space-a,{CAMPAIGN_2}=2:campaign"
        ))
        .unwrap();
        let services = Services::embedded(
            &store,
            Outbound::new(false).unwrap(),
            Arc::new(SystemClock),
            Settings::default(),
        );
        Api {
            app: router(services.app_state(Arc::new(keys))),
            dispatcher: services.dispatcher,
            store,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(SECRET), "a response carried a token: {text}");
        assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "500: {text}");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        Reply { status, body }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(ADMIN), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(ADMIN), Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(ADMIN), Some(body)).await
    }

    pub async fn create(&self, body: Value) -> Value {
        let r = self.post("/v1/touchpoints", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }

    pub async fn disable(&self, id: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/v1/touchpoints/{id}/disable"),
            Some(ADMIN),
            None,
        )
        .await
    }

    pub async fn campaign(&self, id: &str, campaign: &str, state: &str) -> Reply {
        self.call(
            Method::PUT,
            &format!("/v1/touchpoints/{id}/campaigns/{campaign}"),
            Some(CAMPAIGN),
            Some(json!({"state": state, "name": format!("活动 {campaign}")})),
        )
        .await
    }
}

pub fn coupon() -> Value {
    json!({
        "name": "券中心",
        "kind": "benefit",
        "description": "coupon issuing",
        "url": "https://coupons.example.com/touch",
        "token": format!("{SECRET}-abc123"),
        "batchSize": 500,
        "receipt": {"mode": "async", "receiptUrl": "https://coupons.example.com/receipt", "timeoutMinutes": 60},
        "userAttributes": [
            {"attribute": "usr_phone", "identifier": "phone", "displayName": "手机号"},
            {"attribute": "usr_name", "identifier": "name", "displayName": "姓名", "default": "会员"}
        ],
        "templateParams": [
            {"identifier": "title", "displayName": "标题", "type": "text", "required": true},
            {"identifier": "startDate", "displayName": "开始日期", "type": "date", "required": true},
            {"identifier": "amount", "displayName": "金额", "type": "number", "required": false, "default": 10},
            {"identifier": "jump", "displayName": "跳转类型", "type": "enum", "required": true,
             "enum": {"multiple": false, "source": "manual",
                      "options": [{"code": "JUMP_H5", "name": "跳转到 h5 页面"}, {"code": "NO_JUMP", "name": "无跳转"}]}},
            {"identifier": "material", "displayName": "素材", "type": "enum", "required": false,
             "enum": {"multiple": true, "source": "api", "optionsUrl": "https://cms.example.com/enum-options"}}
        ]
    })
}

pub fn named(name: &str) -> Value {
    let mut body = coupon();
    body["name"] = json!(name);
    body
}

pub fn id_of(tp: &Value) -> String {
    tp["id"].as_str().unwrap().to_owned()
}
