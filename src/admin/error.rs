//! What an admin operation can refuse: a field with a problem code, a missing object, a taken
//! unique value, or a store failure. The JSON API renders these in English, the web UI in the
//! page's language; both from the i18n catalogue (`problem.{code}`, `field.{name}`).

use crate::i18n::Tr;
use crate::store::StoreError;

/// Every field an operation can name in [`AdminError::Invalid`]; each has a `field.{name}`
/// text in both catalogues (a test checks).
pub const FIELDS: &[&str] = &[
    "username",
    "password",
    "role",
    "status",
    "name",
    "type",
    "daily_quota",
    "weekly_quota",
    "monthly_quota",
    "quota_total",
    "duration_days",
    "package_id",
    "starts_at",
    "allowed_models",
    "rpm_limit",
    "tpm_limit",
    "expires_at",
    "allowed_ips",
    "daily_limit",
    "weekly_limit",
    "monthly_limit",
    "total_limit",
    "max_concurrency",
    "provider",
    "base_url",
    "api_key",
    "models",
    "model_map",
    "weight",
    "model",
    "input",
    "output",
    "cache_read",
    "cache_write",
    "limit",
    "cursor",
    "from",
    "to",
    // The request-log filters.
    "status_class",
    "billing_status",
];

/// What is wrong with a field's value. Its text is `problem.{code}` in the catalogue, with
/// the variant's values put in its `{placeholders}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Missing.
    Required,
    /// Empty (after trimming).
    Empty,
    /// Not `min` to `max` characters.
    Length { min: usize, max: usize },
    /// Shorter than `min` characters.
    TooShort { min: usize },
    /// Control characters, or spaces around it.
    BadCharacters,
    /// Not one of two names, such as `admin` or `user`.
    UnknownValue { allowed: &'static [&'static str] },
    /// Not one of the statuses this object can be set to.
    UnknownStatus { allowed: &'static [&'static str] },
    /// An amount that must be above zero.
    NotPositive,
    /// A count that must be a positive whole number.
    NotPositiveInteger,
    /// An amount below zero.
    Negative,
    /// A number outside `min..=max`.
    OutOfRange { min: i64, max: i64 },
    /// Not an RFC 3339 time.
    NotATime,
    /// Not a day as YYYY-MM-DD.
    NotADay,
    /// Not a cursor this API returned.
    NotACursor,
    /// Not an http(s) URL with a host.
    NotAUrl,
    /// A base URL with a query or a fragment (the endpoint's path is appended to it).
    UrlQueryOrFragment,
    /// An Anthropic base URL ending in `/v1` (`/v1/messages` is appended to it).
    AnthropicBaseWithV1,
    /// `api.openai.com` without `/v1`.
    OpenAiBaseWithoutV1,
    /// A list of model names with an empty one.
    EmptyModelName,
    /// A subscription with none of the daily, weekly, monthly quotas.
    SubscriptionNeedsWindow,
    /// A total quota on a subscription.
    TotalOnSubscription,
    /// A quota package without its total.
    QuotaNeedsTotal,
    /// Windowed quotas on a quota package.
    WindowsOnQuota,
    /// The package named does not exist.
    NoSuchPackage { id: i64 },
    /// The package named is disabled.
    PackageDisabled,
    /// An IP allow-list entry that is neither an address nor a CIDR range.
    NotACidr { entry: String },
    /// Not a JSON object of non-empty model names to non-empty model names.
    NotAModelMap,
}

impl Problem {
    /// The stable code of the problem; its text is `problem.{code}`.
    pub fn code(&self) -> &'static str {
        match self {
            Problem::Required => "required",
            Problem::Empty => "empty",
            Problem::Length { .. } => "length",
            Problem::TooShort { .. } => "too_short",
            Problem::BadCharacters => "bad_characters",
            Problem::UnknownValue { .. } => "unknown_value",
            Problem::UnknownStatus { .. } => "unknown_status",
            Problem::NotPositive => "not_positive",
            Problem::NotPositiveInteger => "not_positive_integer",
            Problem::Negative => "negative",
            Problem::OutOfRange { .. } => "out_of_range",
            Problem::NotATime => "not_a_time",
            Problem::NotADay => "not_a_day",
            Problem::NotACursor => "not_a_cursor",
            Problem::NotAUrl => "not_a_url",
            Problem::UrlQueryOrFragment => "url_query_or_fragment",
            Problem::AnthropicBaseWithV1 => "anthropic_base_with_v1",
            Problem::OpenAiBaseWithoutV1 => "openai_base_without_v1",
            Problem::EmptyModelName => "empty_model_name",
            Problem::SubscriptionNeedsWindow => "subscription_needs_window",
            Problem::TotalOnSubscription => "total_on_subscription",
            Problem::QuotaNeedsTotal => "quota_needs_total",
            Problem::WindowsOnQuota => "windows_on_quota",
            Problem::NoSuchPackage { .. } => "no_such_package",
            Problem::PackageDisabled => "package_disabled",
            Problem::NotACidr { .. } => "not_a_cidr",
            Problem::NotAModelMap => "not_a_model_map",
        }
    }

    /// One of each problem, for the catalogue test.
    pub fn examples() -> Vec<Problem> {
        vec![
            Problem::Required,
            Problem::Empty,
            Problem::Length { min: 1, max: 64 },
            Problem::TooShort { min: 8 },
            Problem::BadCharacters,
            Problem::UnknownValue {
                allowed: &["admin", "user"],
            },
            Problem::UnknownStatus {
                allowed: &["active", "disabled"],
            },
            Problem::NotPositive,
            Problem::NotPositiveInteger,
            Problem::Negative,
            Problem::OutOfRange { min: 1, max: 1000 },
            Problem::NotATime,
            Problem::NotADay,
            Problem::NotACursor,
            Problem::NotAUrl,
            Problem::UrlQueryOrFragment,
            Problem::AnthropicBaseWithV1,
            Problem::OpenAiBaseWithoutV1,
            Problem::EmptyModelName,
            Problem::SubscriptionNeedsWindow,
            Problem::TotalOnSubscription,
            Problem::QuotaNeedsTotal,
            Problem::WindowsOnQuota,
            Problem::NoSuchPackage { id: 7 },
            Problem::PackageDisabled,
            Problem::NotACidr {
                entry: "10.0.0.0/33".into(),
            },
            Problem::NotAModelMap,
        ]
    }

    /// The problem in `tr`'s language.
    pub fn text(&self, tr: Tr) -> String {
        let template = tr.t(&format!("problem.{}", self.code()));
        let or = tr.t("problem.or");
        match self {
            Problem::Length { min, max } => template
                .replace("{min}", &min.to_string())
                .replace("{max}", &max.to_string()),
            Problem::TooShort { min } => template.replace("{min}", &min.to_string()),
            Problem::OutOfRange { min, max } => template
                .replace("{min}", &min.to_string())
                .replace("{max}", &max.to_string()),
            Problem::UnknownValue { allowed } => {
                let names: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                template.replace("{allowed}", &names.join(or))
            }
            Problem::UnknownStatus { allowed } => {
                template.replace("{allowed}", &allowed.join(", "))
            }
            Problem::NoSuchPackage { id } => template.replace("{id}", &id.to_string()),
            Problem::NotACidr { entry } => template.replace("{entry}", entry),
            _ => template.to_string(),
        }
    }
}

/// Which unique value is already taken.
#[derive(Debug)]
pub enum Taken {
    Username(String),
    /// Some other unique value (the store does not say which).
    Unique,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("`{field}`: {problem:?}")]
    Invalid {
        field: &'static str,
        problem: Problem,
    },
    /// The object the operation is about (`user`, `key`, …) does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("conflict: {0:?}")]
    Conflict(Taken),
    #[error(transparent)]
    Store(StoreError),
}

impl AdminError {
    pub fn invalid(field: &'static str, problem: Problem) -> AdminError {
        debug_assert!(FIELDS.contains(&field), "`{field}` is not in FIELDS");
        AdminError::Invalid { field, problem }
    }

    /// A store error of a lookup of `what` by id: a missing row is `NotFound(what)`, a
    /// database failure stays one.
    pub fn lookup(what: &'static str) -> impl FnOnce(StoreError) -> AdminError {
        move |e| match e {
            StoreError::NotFound => AdminError::NotFound(what),
            e => AdminError::Store(e),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AdminError::NotFound("object"),
            StoreError::Conflict => AdminError::Conflict(Taken::Unique),
            e => AdminError::Store(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, AdminError>;
