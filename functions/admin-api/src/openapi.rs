//! The OpenAPI 3.1 document served at `/v1/openapi.json`, generated from the routes' annotations
//! and the contract's types, so it says what the handlers do and carries the domain's limits
//! from the domain's constants.

use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, Response, ResponseBuilder};

use crate::contract::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "touchpoint admin API",
        description = "Register custom touchpoints, authorize spaces, test-send, hand in dispatches \
            and read their delivery. Every /v1 route takes `Authorization: Bearer <key>`; each \
            operation's security names the roles it admits (admin, operator, campaign).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "touchpoints", description = "The touchpoint lifecycle (admins)"),
        (name = "operators", description = "What operators of a space pick from"),
        (name = "campaigns", description = "The campaign system's references and statistics"),
        (name = "dispatches", description = "Hand in dispatches and follow their delivery"),
        (name = "audit", description = "Who changed what, and when (admins)"),
        (name = "notifications", description = "Operational webhooks to the project's operators (admins)"),
        (name = "service", description = "The service itself"),
    ),
    components(schemas(
        UserAttributeInput,
        TemplateParamInput,
        EnumOptionInput,
        DispatchUserInput,
        TestUser,
        touchpoint::Kind,
    ))
)]
pub struct ApiDoc;

/// Adds what every operation shares: the bearer scheme, and the error answers the extractors
/// and the store give on any route (so each route's annotation lists only its own).
pub fn finish(mut doc: Document) -> Document {
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "an API key (locally) or a JWT from the API Gateway authorizer (on AWS)",
                ))
                .build(),
        ),
    );
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_shared_errors(op);
        }
    }
    doc
}

fn error(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            )
            .build(),
    )
}

fn add_shared_errors(op: &mut Operation) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = op.request_body.is_some();
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| error(description));
    };
    if has_params || has_body {
        add(
            "400",
            "The request cannot be read: a path or query parameter that does not decode, a \
             parameter given twice, or a body that is not JSON",
        );
    }
    if has_body {
        add("413", "The body is larger than 1 MiB (code body_too_large)");
        add(
            "415",
            "The body is not sent as application/json (code unsupported_media_type)",
        );
    }
    if secured {
        add("401", "No valid credentials (code unauthorized)");
        add(
            "403",
            "The caller's role or project may not do this (code forbidden)",
        );
        add("500", "Storage failed; try again (code internal)");
    }
}
