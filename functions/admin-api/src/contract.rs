//! The API's bodies, query strings and answers as types. Their schemas make the OpenAPI document
//! (with the domain's limits taken from the domain's constants), and the small bodies are read
//! through them. The touchpoint body is the exception on the way in: the domain's reader reports
//! every broken rule at its JSON path at once, so its type here only describes it.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use touchpoint::dispatch::{MAX_ID_CHARS, MAX_USERS};
use touchpoint::input::{
    MAX_ATTRIBUTE_CHARS, MAX_DESCRIPTION_CHARS, MAX_DISPLAY_NAME_CHARS, MAX_IDENTIFIER_CHARS,
    MAX_OPTION_CHARS, MAX_TEXT_CHARS, MAX_TOKEN_CHARS, MAX_URL_LEN,
};
use touchpoint::model::*;
use touchpoint::reporting::{DEFAULT_STATS_HOURS, MAX_STATS_HOURS};
use touchpoint::service::{
    DEFAULT_PAGE_SIZE, MAX_CAMPAIGN_ID_CHARS, MAX_CAMPAIGN_NAME_CHARS, MAX_PAGE_SIZE,
    MAX_SPACE_ID_CHARS,
};
use touchpoint::view::{CampaignRefView, OperatorTouchpoint, TouchpointView};
use touchpoint::{FieldError, Kind, ParamType};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::{IntoParams, ToSchema};

/// Text the service accepts: at least one character that is not white space, no control
/// characters (white space around it is trimmed).
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$";
/// What an identifier (a key the receiver reads, a `{{placeholder}}` name) is made of.
pub const IDENTIFIER_PATTERN: &str = r"^[A-Za-z0-9_$.-]+$";
/// An outbound URL: http or https (the deployment may refuse http), with a host and without
/// credentials or a fragment.
pub const URL_PATTERN: &str = r"^\s*[Hh][Tt][Tt][Pp][Ss]?://[^/?#@\s]+([/?][^#]*)?\s*$";

fn types(t: Type, nullable: bool) -> SchemaType {
    if nullable {
        SchemaType::from_iter([t, Type::Null])
    } else {
        SchemaType::from(t)
    }
}

fn integer(min: u64, max: u64, nullable: bool) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(types(Type::Integer, nullable))
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
}

fn text(max: usize, nullable: bool) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(types(Type::String, nullable))
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(TEXT_PATTERN))
}

fn reference(name: &str) -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(name))
}

fn array_of(item: &str, min: usize, max: usize) -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .items(reference(item))
        .min_items(Some(min))
        .max_items(Some(max))
        .build()
}

fn name() -> Object {
    text(MAX_NAME_CHARS, false)
        .description(Some("unique in the project; counted in Unicode characters"))
        .build()
}
fn description() -> Object {
    text(MAX_DESCRIPTION_CHARS, true).build()
}
fn url() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_URL_LEN))
        .pattern(Some(URL_PATTERN))
        .build()
}
fn token() -> Object {
    ObjectBuilder::new()
        .schema_type(types(Type::String, true))
        .min_length(Some(1))
        .max_length(Some(MAX_TOKEN_CHARS))
        .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]+$"))
        .write_only(true)
        .description(Some(
            "signing secret; never returned. On PUT: absent keeps it, null clears it. \
             `whsec_` followed by base64 is used as Standard Webhooks key material",
        ))
        .build()
}
fn batch_size() -> Object {
    integer(
        u64::from(*BATCH_SIZE_RANGE.start()),
        u64::from(*BATCH_SIZE_RANGE.end()),
        true,
    )
    .default(Some(DEFAULT_BATCH_SIZE.into()))
    .description(Some("users per touch request"))
    .build()
}
fn request_timeout() -> Object {
    integer(
        u64::from(*REQUEST_TIMEOUT_SECONDS_RANGE.start()),
        u64::from(*REQUEST_TIMEOUT_SECONDS_RANGE.end()),
        true,
    )
    .description(Some("per request to the receiver; default 15"))
    .build()
}
fn max_requests_per_second() -> Object {
    integer(
        u64::from(*MAX_REQUESTS_PER_SECOND_RANGE.start()),
        u64::from(*MAX_REQUESTS_PER_SECOND_RANGE.end()),
        true,
    )
    .description(Some(
        "requests a second towards the receiver at most; default none (429 and 503 answers slow it down)",
    ))
    .build()
}
fn max_concurrency() -> Object {
    integer(
        u64::from(*MAX_CONCURRENCY_RANGE.start()),
        u64::from(*MAX_CONCURRENCY_RANGE.end()),
        true,
    )
    .description(Some(
        "requests in flight at once towards the receiver; default 4",
    ))
    .build()
}
fn receipt_timeout() -> Object {
    integer(
        u64::from(*RECEIPT_TIMEOUT_RANGE.start()),
        u64::from(*RECEIPT_TIMEOUT_RANGE.end()),
        true,
    )
    .default(Some(DEFAULT_RECEIPT_TIMEOUT_MINUTES.into()))
    .build()
}
fn pause_reason() -> Object {
    text(MAX_PAUSE_REASON_CHARS, true)
        .description(Some("shown in the touchpoint's health"))
        .build()
}
fn new_token() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_TOKEN_CHARS))
        .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]+$"))
        .write_only(true)
        .description(Some("the new signing secret; never returned"))
        .build()
}
fn overlap_hours() -> Object {
    ObjectBuilder::new()
        .schema_type(types(Type::Number, true))
        .minimum(Some(0.0))
        .maximum(Some(MAX_OVERLAP_HOURS))
        .default(Some(DEFAULT_OVERLAP_HOURS.into()))
        .description(Some(
            "hours during which `sign` keeps the old token and `webhook-signature` carries both; \
             0 switches at once",
        ))
        .build()
}
fn version() -> Object {
    integer(1, i64::MAX as u64, true)
        .description(Some("the version the change is based on"))
        .build()
}
fn required_version() -> Object {
    integer(1, i64::MAX as u64, false)
        .description(Some("the version the change is based on"))
        .build()
}
fn identifier() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_IDENTIFIER_CHARS))
        .pattern(Some(IDENTIFIER_PATTERN))
        .build()
}
fn optional_identifier() -> Object {
    ObjectBuilder::new()
        .schema_type(types(Type::String, true))
        .min_length(Some(1))
        .max_length(Some(MAX_IDENTIFIER_CHARS))
        .pattern(Some(IDENTIFIER_PATTERN))
        .description(Some(
            "key sent in dynamicData; defaults to the attribute when it is an identifier",
        ))
        .build()
}
fn attribute() -> Object {
    text(MAX_ATTRIBUTE_CHARS, false)
        .description(Some("source attribute or identity in the data center"))
        .build()
}
fn display_name() -> Object {
    text(MAX_DISPLAY_NAME_CHARS, false).build()
}
fn option_text() -> Object {
    text(MAX_OPTION_CHARS, false).build()
}
fn attribute_default() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::String,
            Type::Number,
            Type::Boolean,
            Type::Null,
        ]))
        .max_length(Some(MAX_TEXT_CHARS))
        .description(Some("sent when the user's value is empty"))
        .build()
}
fn user_attributes() -> utoipa::openapi::schema::Array {
    array_of("UserAttributeInput", 1, MAX_USER_ATTRIBUTES)
}
fn template_params() -> utoipa::openapi::schema::Array {
    array_of("TemplateParamInput", 1, MAX_TEMPLATE_PARAMS)
}
fn enum_options() -> utoipa::openapi::schema::Array {
    array_of("EnumOption", 1, MAX_ENUM_OPTIONS)
}
fn space_ids() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_SPACE_ID_CHARS))
                .pattern(Some(r"^[^/\u0000-\u001F\u007F-\u009F]+$")),
        )
        .max_items(Some(MAX_SPACES))
        .build()
}
fn campaign_name() -> Object {
    text(MAX_CAMPAIGN_NAME_CHARS, true)
        .description(Some("shown when disabling is refused; defaults to the id"))
        .build()
}
fn test_users() -> utoipa::openapi::schema::Array {
    array_of("TestUser", 1, MAX_TEST_USERS)
}
fn page_limit() -> Object {
    integer(1, MAX_PAGE_SIZE as u64, false)
        .default(Some(DEFAULT_PAGE_SIZE.into()))
        .build()
}
fn stats_hours() -> Object {
    integer(1, u64::from(MAX_STATS_HOURS), false)
        .default(Some(DEFAULT_STATS_HOURS.into()))
        .build()
}
fn batch_index() -> Object {
    integer(0, u64::from(u32::MAX), false)
        .default(Some(0.into()))
        .build()
}
fn kind() -> RefOr<Schema> {
    reference("Kind")
}
fn boolean() -> Object {
    ObjectBuilder::new().schema_type(Type::Boolean).build()
}
fn delete_version() -> Object {
    integer(1, i64::MAX as u64, false).build()
}

/// Most users one test send may carry.
pub const MAX_TEST_USERS: usize = 10;

/// Declares the create and the replace body from one field list (they differ in `version`).
macro_rules! touchpoint_body {
    ($(#[$meta:meta])* $name:ident, $version:ident, $required:literal) => {
        $(#[$meta])*
        #[derive(Deserialize, ToSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            #[schema(schema_with = name)]
            pub name: String,
            /// Cannot change after creation.
            pub kind: Kind,
            #[schema(schema_with = description)]
            pub description: Option<String>,
            #[schema(schema_with = url)]
            pub url: String,
            #[schema(schema_with = token)]
            pub token: Option<String>,
            #[schema(schema_with = batch_size)]
            pub batch_size: Option<u16>,
            /// Sync when absent.
            #[schema(nullable)]
            pub receipt: Option<ReceiptInput>,
            #[schema(schema_with = user_attributes)]
            pub user_attributes: Vec<UserAttributeInput>,
            #[schema(schema_with = template_params)]
            pub template_params: Vec<TemplateParamInput>,
            #[schema(schema_with = request_timeout)]
            pub request_timeout_seconds: Option<u8>,
            #[schema(schema_with = max_concurrency)]
            pub max_concurrency: Option<u16>,
            #[schema(schema_with = max_requests_per_second)]
            pub max_requests_per_second: Option<u16>,
            #[schema(schema_with = $version, required = $required)]
            pub version: Option<u64>,
            #[schema(read_only)]
            pub id: Option<Value>,
            #[schema(read_only)]
            pub project_id: Option<Value>,
            #[schema(read_only)]
            pub token_set: Option<Value>,
            #[schema(read_only)]
            pub enabled: Option<Value>,
            #[schema(read_only)]
            pub space_ids: Option<Value>,
            #[schema(read_only)]
            pub created_at: Option<Value>,
            #[schema(read_only)]
            pub updated_at: Option<Value>,
        }
    };
}

touchpoint_body!(
    /// A touchpoint to register. Read by the domain's reader, which reports every broken rule
    /// (including those a schema cannot say: unique identifiers, defaults of the parameter's
    /// type, placeholders naming a user attribute) at its JSON path.
    TouchpointInput,
    version,
    false
);
touchpoint_body!(
    /// The editable fields of a disabled touchpoint, replaced whole.
    TouchpointReplace,
    required_version,
    true
);

/// How results come back: in the touch response (`sync`), or polled from `receiptUrl`
/// (`async`) every 5 minutes until `timeoutMinutes`.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum ReceiptInput {
    Sync,
    Async {
        #[serde(rename = "receiptUrl")]
        #[schema(schema_with = url)]
        receipt_url: String,
        #[serde(rename = "timeoutMinutes")]
        #[schema(schema_with = receipt_timeout)]
        timeout_minutes: Option<u32>,
    },
}

/// A user attribute sent in `dynamicData`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserAttributeInput {
    #[schema(schema_with = attribute)]
    pub attribute: String,
    #[schema(schema_with = optional_identifier)]
    pub identifier: Option<String>,
    #[schema(schema_with = display_name)]
    pub display_name: String,
    #[schema(schema_with = attribute_default)]
    pub default: Option<Value>,
}

/// A template parameter sent in `temData`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateParamInput {
    /// Key sent in temData.
    #[schema(schema_with = identifier)]
    pub identifier: String,
    #[schema(schema_with = display_name)]
    pub display_name: String,
    #[serde(rename = "type")]
    pub param_type: ParamType,
    #[schema(nullable)]
    pub required: Option<bool>,
    /// date: yyyy-MM-dd or yyyy-MM-dd HH:mm:ss; number; enum: an option code (an array of
    /// codes when multiple); text: may contain `{{identifier}}` placeholders naming user
    /// attributes.
    pub default: Option<Value>,
    /// Required for (and only for) enum parameters.
    #[serde(rename = "enum")]
    #[schema(nullable)]
    pub enum_spec: Option<EnumInput>,
}

/// Where an enum parameter's options come from.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum EnumInput {
    /// Entered by hand.
    Manual {
        #[schema(nullable)]
        multiple: Option<bool>,
        #[schema(schema_with = enum_options)]
        options: Vec<EnumOptionInput>,
    },
    /// Fetched from the content system's options API.
    Api {
        #[schema(nullable)]
        multiple: Option<bool>,
        #[serde(rename = "optionsUrl")]
        #[schema(schema_with = url)]
        options_url: String,
    },
}

/// One option of a manual enum.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EnumOption)]
pub struct EnumOptionInput {
    #[schema(schema_with = option_text)]
    pub code: String,
    #[schema(schema_with = option_text)]
    pub name: String,
}

/// Reads a whole number, also when written with a zero fraction (`3.0`), as JSON Schema's
/// `integer` allows.
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => n
            .as_u64()
            .or_else(|| touchpoint::json::whole_i64(&n).and_then(|v| u64::try_from(v).ok()))
            .filter(|v| *v >= 1)
            .map(Some)
            .ok_or_else(|| D::Error::custom("must be a positive integer")),
    }
}

/// Reads a whole number into an i64, also when written with a zero fraction.
fn whole_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    touchpoint::json::whole_i64(&n).ok_or_else(|| D::Error::custom("must be an integer"))
}

/// `{}` or `{"version": n}`: the body of enable and disable.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionInput {
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(schema_with = version)]
    pub version: Option<u64>,
}

/// A new token, and how long the old one stays in use beside it.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateInput {
    #[schema(schema_with = new_token)]
    pub token: String,
    #[schema(schema_with = overlap_hours)]
    pub overlap_hours: Option<f64>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(schema_with = version)]
    pub version: Option<u64>,
}

/// Where the project's operational notifications go, signed with `token` (Standard
/// Webhooks headers; a `whsec_` token is used as its base64-decoded bytes), and which.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationSettingsInput {
    #[schema(schema_with = url)]
    pub url: String,
    /// Required the first time; left out, the current token is kept.
    #[schema(schema_with = new_token)]
    pub token: Option<String>,
    #[schema(min_items = 1)]
    pub events: Vec<touchpoint::notify::EventType>,
}

/// Why the touchpoint is paused, and the version the pause is based on (both optional).
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseInput {
    #[schema(schema_with = pause_reason)]
    pub reason: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(schema_with = version)]
    pub version: Option<u64>,
}

/// The spaces authorized to use the touchpoint, replacing the current set.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpacesInput {
    #[schema(schema_with = space_ids)]
    pub space_ids: Vec<String>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(schema_with = version)]
    pub version: Option<u64>,
}

/// A campaign's reference to the touchpoint and its state.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CampaignRefInput {
    /// running, paused, not_started, pending_publish and in_approval block disabling.
    pub state: CampaignState,
    #[serde(default)]
    #[schema(schema_with = campaign_name)]
    pub name: Option<String>,
    /// Accepted (and ignored) so a listed reference can be sent back as it is.
    #[serde(default)]
    #[schema(read_only)]
    pub campaign_id: Option<Value>,
}

/// `T` read only from a JSON object: a derived reader would also take an array, field by field
/// (`[1]` for `{"gid": 1}`).
#[derive(Debug)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ObjectOnly<T>, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            v @ Value::Object(_) => serde_json::from_value(v)
                .map(ObjectOnly)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom("must be an object")),
        }
    }
}

/// A user of a test send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestUser {
    #[serde(deserialize_with = "whole_i64")]
    #[schema(schema_with = gid)]
    pub gid: i64,
    /// The data center's attributes of the user, by attribute key.
    #[serde(default)]
    #[schema(nullable)]
    pub attributes: Option<serde_json::Map<String, Value>>,
}

/// One real signed request with up to 10 users, enabled or not, not counted.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestSendInput {
    #[schema(schema_with = test_users)]
    pub users: Vec<ObjectOnly<TestUser>>,
    /// The strategy's template values, by parameter identifier.
    #[serde(default)]
    #[schema(nullable)]
    pub template_values: Option<serde_json::Map<String, Value>>,
}

fn space_id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_SPACE_ID_CHARS))
        .pattern(Some(r"^[^/\u0000-\u001F\u007F-\u009F]+$"))
        .build()
}
fn campaign_id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_CAMPAIGN_ID_CHARS))
        .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]+$"))
        .build()
}

/// `{spaceId}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(non_snake_case, dead_code)]
pub struct SpacePath {
    /// The space.
    #[param(schema_with = space_id)]
    spaceId: String,
}

/// `{id}` and `{campaignId}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(non_snake_case, dead_code)]
pub struct CampaignRefPath {
    /// The touchpoint's id.
    id: String,
    /// The campaign.
    #[param(schema_with = campaign_id)]
    campaignId: String,
}

// Query strings are read as text and checked by the domain, which names the parameter in its
// 422; their documented types are what it accepts.

fn dispatch_id() -> Object {
    text(MAX_ID_CHARS, false).build()
}
fn optional_id() -> Object {
    text(MAX_ID_CHARS, true).build()
}
fn dispatch_users() -> utoipa::openapi::schema::Array {
    array_of("DispatchUserInput", 1, MAX_USERS)
}
fn gid() -> Object {
    integer(0, i64::MAX as u64, false)
        .description(Some(
            "the user's id in the data center; unique in the dispatch",
        ))
        .build()
}

/// A user of a dispatch.
#[derive(Deserialize, ToSchema)]
#[schema(as = DispatchUserInput)]
pub struct DispatchUserInput {
    #[schema(schema_with = gid)]
    pub gid: i64,
    /// The data center's attributes of the user, by attribute key.
    #[schema(nullable)]
    pub attributes: Option<serde_json::Map<String, Value>>,
}

/// A dispatch as the campaign system hands it in (the same message it may put on the queue).
/// Fields this version does not know are kept and ignored.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatchInput {
    /// The producer's idempotency key, unique per project.
    #[schema(schema_with = dispatch_id)]
    pub dispatch_id: String,
    /// Must be the caller's project.
    pub project_id: i64,
    #[schema(schema_with = dispatch_id)]
    pub space_id: String,
    #[schema(schema_with = dispatch_id)]
    pub campaign_id: String,
    #[schema(schema_with = optional_id)]
    pub strategy_id: Option<String>,
    #[schema(schema_with = dispatch_id)]
    pub touchpoint_id: String,
    /// The strategy's template values, by parameter identifier.
    #[schema(nullable)]
    pub template_values: Option<serde_json::Map<String, Value>>,
    #[schema(schema_with = dispatch_users)]
    pub users: Vec<DispatchUserInput>,
}

/// `?limit=&cursor=&kind=&enabled=&q=` of the touchpoint list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size.
    #[param(schema_with = page_limit)]
    pub limit: Option<String>,
    /// From the previous page's `nextCursor`.
    pub cursor: Option<String>,
    #[param(schema_with = kind)]
    pub kind: Option<String>,
    #[param(schema_with = boolean)]
    pub enabled: Option<String>,
    /// Name contains (case-insensitive).
    pub q: Option<String>,
}

/// `?touchpointId=&since=&limit=&cursor=` of the audit log.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    /// Only this touchpoint's entries.
    pub touchpoint_id: Option<String>,
    /// Only entries at or after this time (RFC 3339, or a date).
    pub since: Option<String>,
    /// Page size.
    #[param(schema_with = page_limit)]
    pub limit: Option<String>,
    /// From the previous page's `nextCursor`.
    pub cursor: Option<String>,
}

/// `?hours=` of the statistics routes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// The window of the series and failure reasons, in hours.
    #[param(schema_with = stats_hours)]
    pub hours: Option<String>,
}

/// `?batchesFrom=` of a dispatch's report.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct DispatchQuery {
    /// The index of the first batch listed (100 a page; the report's `nextBatchesFrom` says
    /// where the next starts).
    #[param(schema_with = batch_index)]
    pub batches_from: Option<String>,
}

/// `?ids=&hours=` of the success rates of several touchpoints.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WindowsQuery {
    /// Touchpoint ids separated by commas, at most 100 (utoipa takes a pattern only as a
    /// literal: a test holds its bound to `MAX_WINDOW_TOUCHPOINTS`).
    #[param(pattern = r"^tp_[0-9A-HJKMNP-TV-Z]{26}(,tp_[0-9A-HJKMNP-TV-Z]{26}){0,99}$")]
    pub ids: String,
    /// The window, in hours.
    #[param(schema_with = stats_hours)]
    pub hours: Option<String>,
}

/// `?version=` of a delete.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// The version the delete is based on.
    #[param(schema_with = delete_version)]
    pub version: Option<String>,
}

/// Liveness.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

/// A page of touchpoints.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TouchpointPage<'a> {
    pub items: Vec<TouchpointView<'a>>,
    /// Pass as `?cursor=` for the next page; null on the last.
    pub next_cursor: Option<&'a str>,
}

/// A page of audit entries, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage<'a> {
    pub items: Vec<touchpoint::audit::AuditView<'a>>,
    /// Pass as `?cursor=` for the next page; null on the last.
    pub next_cursor: Option<&'a str>,
}

/// The campaigns that reference a touchpoint.
#[derive(Serialize, ToSchema)]
pub struct CampaignRefList<'a> {
    pub items: Vec<CampaignRefView<'a>>,
}

/// What operators of a space may pick, with each parameter's input.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpaceTouchpoints<'a> {
    pub space_id: &'a str,
    pub items: Vec<OperatorTouchpoint<'a>>,
}

/// Whether a handed-in dispatch was queued now or seen before.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Intake {
    Queued,
    Duplicate,
}

/// The answer to a handed-in dispatch.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatchAccepted {
    pub dispatch_id: touchpoint::ids::DispatchId,
    pub status: Intake,
}

/// An error: `code` is stable, `message` is for people.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail<'a> {
    pub code: &'static str,
    pub message: String,
    /// On validation_failed: every broken rule at its JSON path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    /// On touchpoint_in_use: the campaigns that block disabling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaigns: Option<Vec<CampaignRefView<'a>>>,
    /// On version_conflict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

/// Every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}
