//! Admin-API validation, in process: each case is one request through the app's router
//! (`tower::ServiceExt::oneshot`), checked for its status and the field it names; every
//! failing case is reported by name, and the error bodies of all cases are one `insta`
//! snapshot, so a changed message shows as a diff under its case's name.

use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use crate::helpers::*;

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    status: u16,
    /// The field the error names, if any.
    param: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: Method,
    path: impl Into<String>,
    body: Option<Value>,
    status: u16,
    param: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        body,
        status,
        param,
    }
}

async fn call(router: &axum::Router, c: &Case) -> (u16, Value) {
    let mut req = Request::builder()
        .method(c.method.clone())
        .uri(format!("/api/admin{}", c.path))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    if c.body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = c
        .body
        .as_ref()
        .map_or(Body::empty(), |b| Body::from(b.to_string()));
    let resp = router
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn admin_api_refusals_by_case() {
    use Method as M;
    let app = spawn_app().await;
    let user = app.user("taken").await;
    let package = app
        .package(json!({"name": "p", "type": "quota", "quota_total": "10", "duration_days": 30}))
        .await;
    let disabled = app
        .package(json!({"name": "off", "type": "quota", "quota_total": "10", "duration_days": 30}))
        .await;
    app.patch(
        &format!("/packages/{disabled}"),
        json!({"status": "disabled"}),
    )
    .await;
    let grant = app.grant(user, package, None).await;
    let (key, _) = app.key(user, json!({"name": "k"})).await;
    let sub = |extra: Value| {
        let mut b = json!({"name": "s", "type": "subscription", "duration_days": 30});
        if let (Some(o), Value::Object(e)) = (b.as_object_mut(), extra) {
            o.extend(e);
        }
        Some(b)
    };
    let account = |extra: Value| {
        let mut b = json!({"name": "a", "provider": "openai", "base_url": "https://up.example/v1", "api_key": "sk-x"});
        if let (Some(o), Value::Object(e)) = (b.as_object_mut(), extra) {
            o.extend(e);
        }
        Some(b)
    };
    let u = format!("/users/{user}");
    let cases = vec![
        // Users.
        case(
            "user_username_empty",
            M::POST,
            "/users",
            Some(json!({"username": ""})),
            400,
            Some("username"),
        ),
        case(
            "user_username_too_long",
            M::POST,
            "/users",
            Some(json!({"username": "x".repeat(65)})),
            400,
            Some("username"),
        ),
        case(
            "user_username_spaces",
            M::POST,
            "/users",
            Some(json!({"username": " bob"})),
            400,
            Some("username"),
        ),
        case(
            "user_role_unknown",
            M::POST,
            "/users",
            Some(json!({"username": "bob", "role": "root"})),
            400,
            Some("role"),
        ),
        case(
            "user_password_short",
            M::POST,
            "/users",
            Some(json!({"username": "bob", "password": "short"})),
            400,
            Some("password"),
        ),
        case(
            "user_username_taken",
            M::POST,
            "/users",
            Some(json!({"username": "taken"})),
            409,
            None,
        ),
        case(
            "user_unknown_field",
            M::POST,
            "/users",
            Some(json!({"username": "bob", "admin": true})),
            400,
            Some("admin"),
        ),
        case("user_not_found", M::GET, "/users/999999", None, 404, None),
        case(
            "user_id_not_a_number",
            M::PATCH,
            "/users/abc",
            Some(json!({"status": "active"})),
            404,
            None,
        ),
        case(
            "user_status_unknown",
            M::PATCH,
            u.clone(),
            Some(json!({"status": "gone"})),
            400,
            Some("status"),
        ),
        case(
            "user_patch_password_short",
            M::PATCH,
            u.clone(),
            Some(json!({"password": "x"})),
            400,
            Some("password"),
        ),
        case(
            "user_patch_not_found",
            M::PATCH,
            "/users/999999",
            Some(json!({"status": "active"})),
            404,
            None,
        ),
        // Keys.
        case(
            "key_name_empty",
            M::POST,
            format!("{u}/keys"),
            Some(json!({"name": "  "})),
            400,
            Some("name"),
        ),
        case(
            "key_rpm_not_positive",
            M::POST,
            format!("{u}/keys"),
            Some(json!({"name": "k", "rpm_limit": 0})),
            400,
            Some("rpm_limit"),
        ),
        case(
            "key_tpm_not_positive",
            M::POST,
            format!("{u}/keys"),
            Some(json!({"name": "k", "tpm_limit": -1})),
            400,
            Some("tpm_limit"),
        ),
        case(
            "key_model_empty",
            M::POST,
            format!("{u}/keys"),
            Some(json!({"name": "k", "allowed_models": ["a", " "]})),
            400,
            Some("allowed_models"),
        ),
        case(
            "key_expires_not_a_time",
            M::POST,
            format!("{u}/keys"),
            Some(json!({"name": "k", "expires_at": "tomorrow"})),
            400,
            Some("expires_at"),
        ),
        case(
            "key_user_not_found",
            M::POST,
            "/users/999999/keys",
            Some(json!({"name": "k"})),
            404,
            None,
        ),
        case(
            "key_status_unknown",
            M::PATCH,
            format!("/keys/{key}"),
            Some(json!({"status": "active!"})),
            400,
            Some("status"),
        ),
        case(
            "key_not_found",
            M::PATCH,
            "/keys/999999",
            Some(json!({"status": "revoked"})),
            404,
            None,
        ),
        // Packages.
        case(
            "package_name_empty",
            M::POST,
            "/packages",
            sub(json!({"name": "", "daily_quota": "1"})),
            400,
            Some("name"),
        ),
        case(
            "package_type_unknown",
            M::POST,
            "/packages",
            Some(json!({"name": "x", "type": "free", "duration_days": 1})),
            400,
            Some("type"),
        ),
        case(
            "package_quota_not_positive",
            M::POST,
            "/packages",
            sub(json!({"daily_quota": "0"})),
            400,
            Some("daily_quota"),
        ),
        case(
            "package_subscription_without_window",
            M::POST,
            "/packages",
            sub(json!({})),
            400,
            Some("daily_quota"),
        ),
        case(
            "package_subscription_with_total",
            M::POST,
            "/packages",
            sub(json!({"daily_quota": "1", "quota_total": "5"})),
            400,
            Some("quota_total"),
        ),
        case(
            "package_quota_without_total",
            M::POST,
            "/packages",
            Some(json!({"name": "q", "type": "quota", "duration_days": 30})),
            400,
            Some("quota_total"),
        ),
        case(
            "package_quota_with_window",
            M::POST,
            "/packages",
            Some(
                json!({"name": "q", "type": "quota", "quota_total": "5", "weekly_quota": "1", "duration_days": 30}),
            ),
            400,
            Some("type"),
        ),
        case(
            "package_duration_out_of_range",
            M::POST,
            "/packages",
            sub(json!({"daily_quota": "1", "duration_days": 36501})),
            400,
            Some("duration_days"),
        ),
        case(
            "package_quota_not_a_decimal",
            M::POST,
            "/packages",
            sub(json!({"daily_quota": "lots"})),
            400,
            Some("daily_quota"),
        ),
        case(
            "package_status_unknown",
            M::PATCH,
            format!("/packages/{package}"),
            Some(json!({"status": "cancelled"})),
            400,
            Some("status"),
        ),
        case(
            "package_not_found",
            M::GET,
            "/packages/999999",
            None,
            404,
            None,
        ),
        // Grants.
        case(
            "grant_package_missing",
            M::POST,
            format!("{u}/packages"),
            Some(json!({"package_id": 999999})),
            400,
            Some("package_id"),
        ),
        case(
            "grant_package_disabled",
            M::POST,
            format!("{u}/packages"),
            Some(json!({"package_id": disabled})),
            400,
            Some("package_id"),
        ),
        case(
            "grant_starts_not_a_time",
            M::POST,
            format!("{u}/packages"),
            Some(json!({"package_id": package, "starts_at": "2026-13-01"})),
            400,
            Some("starts_at"),
        ),
        case(
            "grant_user_not_found",
            M::POST,
            "/users/999999/packages",
            Some(json!({"package_id": package})),
            404,
            None,
        ),
        case(
            "grant_status_unknown",
            M::PATCH,
            format!("/user-packages/{grant}"),
            Some(json!({"status": "disabled"})),
            400,
            Some("status"),
        ),
        case(
            "grant_not_found",
            M::PATCH,
            "/user-packages/999999",
            Some(json!({"status": "cancelled"})),
            404,
            None,
        ),
        // Accounts.
        case(
            "account_name_required",
            M::POST,
            "/accounts",
            Some(json!({"provider": "openai"})),
            400,
            Some("name"),
        ),
        case(
            "account_api_key_required",
            M::POST,
            "/accounts",
            Some(json!({"name": "a", "provider": "openai", "base_url": "https://up.example"})),
            400,
            Some("api_key"),
        ),
        case(
            "account_provider_unknown",
            M::POST,
            "/accounts",
            account(json!({"provider": "gemini"})),
            400,
            Some("provider"),
        ),
        case(
            "account_base_url_not_a_url",
            M::POST,
            "/accounts",
            account(json!({"base_url": "ftp://up.example"})),
            400,
            Some("base_url"),
        ),
        case(
            "account_api_key_empty",
            M::POST,
            "/accounts",
            account(json!({"api_key": " "})),
            400,
            Some("api_key"),
        ),
        case(
            "account_weight_out_of_range",
            M::POST,
            "/accounts",
            account(json!({"weight": 0})),
            400,
            Some("weight"),
        ),
        case(
            "account_model_empty",
            M::POST,
            "/accounts",
            account(json!({"models": [""]})),
            400,
            Some("models"),
        ),
        case(
            "account_status_unknown",
            M::POST,
            "/accounts",
            account(json!({"status": "on"})),
            400,
            Some("status"),
        ),
        case(
            "account_not_found",
            M::PATCH,
            "/accounts/999999",
            Some(json!({"weight": 2})),
            404,
            None,
        ),
        // Prices.
        case(
            "price_negative",
            M::PUT,
            "/models/gpt-x",
            Some(json!({"input": "-1", "output": "1"})),
            400,
            Some("input"),
        ),
        case(
            "price_cache_negative",
            M::PUT,
            "/models/gpt-x",
            Some(json!({"input": "1", "output": "1", "cache_write": "-0.5"})),
            400,
            Some("cache_write"),
        ),
        case(
            "price_model_too_long",
            M::PUT,
            format!("/models/{}", "m".repeat(192)),
            Some(json!({"input": "1", "output": "1"})),
            400,
            Some("model"),
        ),
        case("price_not_found", M::GET, "/models/none", None, 404, None),
        // Reads.
        case(
            "list_limit_out_of_range",
            M::GET,
            "/users?limit=0",
            None,
            400,
            Some("limit"),
        ),
        case(
            "list_cursor_unknown",
            M::GET,
            "/keys?cursor=abc",
            None,
            400,
            Some("cursor"),
        ),
        case(
            "usage_day_malformed",
            M::GET,
            "/usage/daily?from=yesterday",
            None,
            400,
            Some("from"),
        ),
        case(
            "logs_cursor_unknown",
            M::GET,
            "/logs?cursor=12",
            None,
            400,
            Some("cursor"),
        ),
    ];
    let router = tollgate::http::router(app.state.clone());
    let mut failures = Vec::new();
    let mut bodies = Map::new();
    for c in &cases {
        let (status, v) = call(&router, c).await;
        if status != c.status {
            failures.push(format!(
                "{}: status {status}, expected {}",
                c.name, c.status
            ));
        }
        if v["error"]["param"].as_str() != c.param {
            failures.push(format!(
                "{}: param {}, expected {:?}",
                c.name, v["error"]["param"], c.param
            ));
        }
        bodies.insert(c.name.to_string(), json!({"status": status, "body": v}));
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
    insta::assert_json_snapshot!(Value::Object(bodies), @r#"
    {
      "account_api_key_empty": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`api_key`: must not be empty",
            "param": "api_key",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "account_api_key_required": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`api_key`: is required",
            "param": "api_key",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "account_base_url_not_a_url": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`base_url`: must be an http(s) URL such as https://api.openai.com/v1",
            "param": "base_url",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "account_model_empty": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`models`: model names must not be empty",
            "param": "models",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "account_name_required": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`name`: is required",
            "param": "name",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "account_not_found": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "account not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "account_provider_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`provider`: must be `openai` or `anthropic`",
            "param": "provider",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "account_status_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`status`: must be one of: active, disabled",
            "param": "status",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "account_weight_out_of_range": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`weight`: must be between 1 and 1000",
            "param": "weight",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "grant_not_found": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "user package not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "grant_package_disabled": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`package_id`: this package is disabled",
            "param": "package_id",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "grant_package_missing": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`package_id`: package 999999 does not exist",
            "param": "package_id",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "grant_starts_not_a_time": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`starts_at`: must be an RFC 3339 time such as 2026-01-31T10:00:00Z",
            "param": "starts_at",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "grant_status_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`status`: must be one of: active, cancelled",
            "param": "status",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "grant_user_not_found": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "user not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "key_expires_not_a_time": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`expires_at`: must be an RFC 3339 time such as 2026-01-31T10:00:00Z",
            "param": "expires_at",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "key_model_empty": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`allowed_models`: model names must not be empty",
            "param": "allowed_models",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "key_name_empty": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`name`: must be 1 to 128 characters",
            "param": "name",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "key_not_found": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "key not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "key_rpm_not_positive": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`rpm_limit`: must be a positive whole number",
            "param": "rpm_limit",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "key_status_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`status`: must be one of: active, revoked",
            "param": "status",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "key_tpm_not_positive": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`tpm_limit`: must be a positive whole number",
            "param": "tpm_limit",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "key_user_not_found": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "user not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "list_cursor_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`cursor`: is not a cursor this API returned",
            "param": "cursor",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "list_limit_out_of_range": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`limit`: must be between 1 and 1000",
            "param": "limit",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "logs_cursor_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`cursor`: is not a cursor this API returned",
            "param": "cursor",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_duration_out_of_range": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`duration_days`: must be between 1 and 36500",
            "param": "duration_days",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_name_empty": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`name`: must be 1 to 128 characters",
            "param": "name",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_not_found": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "package not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "package_quota_not_a_decimal": {
        "body": {
          "error": {
            "code": "invalid_request",
            "message": "daily_quota: `lots` is not a decimal amount of USD at line 1 column 21",
            "param": "daily_quota",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_quota_not_positive": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`daily_quota`: must be greater than 0",
            "param": "daily_quota",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_quota_with_window": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`type`: a `quota` package has only quota_total; use `subscription` for windowed limits",
            "param": "type",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_quota_without_total": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`quota_total`: is required for a `quota` package",
            "param": "quota_total",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_status_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`status`: must be one of: active, disabled",
            "param": "status",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_subscription_with_total": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`quota_total`: is for `quota` packages; a subscription has daily/weekly/monthly quotas",
            "param": "quota_total",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_subscription_without_window": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`daily_quota`: a subscription needs at least one of daily_quota, weekly_quota, monthly_quota",
            "param": "daily_quota",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "package_type_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`type`: must be `subscription` or `quota`",
            "param": "type",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "price_cache_negative": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`cache_write`: must not be negative",
            "param": "cache_write",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "price_model_too_long": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`model`: must be 1 to 191 characters",
            "param": "model",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "price_negative": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`input`: must not be negative",
            "param": "input",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "price_not_found": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "model price not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "usage_day_malformed": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`from`: must be a day as YYYY-MM-DD",
            "param": "from",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "user_id_not_a_number": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "user not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "user_not_found": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "user not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "user_password_short": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`password`: must be at least 8 characters",
            "param": "password",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "user_patch_not_found": {
        "body": {
          "error": {
            "code": "not_found",
            "message": "user not found",
            "param": null,
            "type": "not_found_error"
          }
        },
        "status": 404
      },
      "user_patch_password_short": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`password`: must be at least 8 characters",
            "param": "password",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "user_role_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`role`: must be `admin` or `user`",
            "param": "role",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "user_status_unknown": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`status`: must be one of: active, disabled",
            "param": "status",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "user_unknown_field": {
        "body": {
          "error": {
            "code": "invalid_request",
            "message": "admin: unknown field `admin`, expected one of `username`, `role`, `password` at line 1 column 8",
            "param": "admin",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "user_username_empty": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`username`: must be 1 to 64 characters",
            "param": "username",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "user_username_spaces": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`username`: must not contain control characters or leading/trailing spaces",
            "param": "username",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      },
      "user_username_taken": {
        "body": {
          "error": {
            "code": "already_exists",
            "message": "username `taken` is taken",
            "param": null,
            "type": "conflict_error"
          }
        },
        "status": 409
      },
      "user_username_too_long": {
        "body": {
          "error": {
            "code": "invalid_value",
            "message": "`username`: must be 1 to 64 characters",
            "param": "username",
            "type": "invalid_request_error"
          }
        },
        "status": 400
      }
    }
    "#);
}

/// A database failure is a 500 `internal_error` in the admin shape, never a 404.
#[tokio::test]
async fn a_database_failure_is_an_internal_error() {
    let app = spawn_app().await;
    let user = app.user("someone").await;
    let router = tollgate::http::router(app.state.clone());
    app.state.db.close().await;
    let mut failures = Vec::new();
    let mut bodies = Map::new();
    for c in [
        case(
            "get_user",
            Method::GET,
            format!("/users/{user}"),
            None,
            500,
            None,
        ),
        case(
            "patch_user",
            Method::PATCH,
            format!("/users/{user}"),
            Some(json!({"status": "disabled"})),
            500,
            None,
        ),
        case("get_key", Method::GET, "/keys/1", None, 500, None),
        case("get_account", Method::GET, "/accounts/1", None, 500, None),
        case("get_package", Method::GET, "/packages/1", None, 500, None),
        case(
            "grant",
            Method::POST,
            format!("/users/{user}/packages"),
            Some(json!({"package_id": 1})),
            500,
            None,
        ),
    ] {
        let (status, v) = call(&router, &c).await;
        if status != c.status || v["error"]["code"] != "internal_error" {
            failures.push(format!("{}: {status} {v}", c.name));
        }
        bodies.insert(c.name.to_string(), v);
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
    insta::assert_json_snapshot!(Value::Object(bodies), @r#"
    {
      "get_account": {
        "error": {
          "code": "internal_error",
          "message": "internal error; see the server log",
          "param": null,
          "type": "server_error"
        }
      },
      "get_key": {
        "error": {
          "code": "internal_error",
          "message": "internal error; see the server log",
          "param": null,
          "type": "server_error"
        }
      },
      "get_package": {
        "error": {
          "code": "internal_error",
          "message": "internal error; see the server log",
          "param": null,
          "type": "server_error"
        }
      },
      "get_user": {
        "error": {
          "code": "internal_error",
          "message": "internal error; see the server log",
          "param": null,
          "type": "server_error"
        }
      },
      "grant": {
        "error": {
          "code": "internal_error",
          "message": "internal error; see the server log",
          "param": null,
          "type": "server_error"
        }
      },
      "patch_user": {
        "error": {
          "code": "internal_error",
          "message": "internal error; see the server log",
          "param": null,
          "type": "server_error"
        }
      }
    }
    "#);
}

/// Base URLs that cannot be right for their provider are refused on create and on edit (400
/// naming `base_url`, nothing written); a doubtful OpenAI base is accepted with `warnings`.
#[tokio::test]
async fn account_base_urls_refused_by_case_and_doubtful_ones_warned() {
    use Method as M;
    let app = spawn_app().await;
    let (s, oa) = app
        .post(
            "/accounts",
            json!({"name": "oa", "provider": "openai", "base_url": "https://up.example/v1", "api_key": "k"}),
        )
        .await;
    assert_eq!(s, 201, "{oa}");
    assert_eq!(oa["warnings"], json!([]), "{oa}");
    let (s, an) = app
        .post(
            "/accounts",
            json!({"name": "an", "provider": "anthropic", "base_url": "https://api.anthropic.com", "api_key": "k"}),
        )
        .await;
    assert_eq!(s, 201, "{an}");
    let (oa, an) = (oa["id"].as_i64().unwrap(), an["id"].as_i64().unwrap());
    let new = |provider: &str, url: &str| {
        Some(json!({"name": "x", "provider": provider, "base_url": url, "api_key": "k"}))
    };
    let cases = vec![
        case(
            "create_anthropic_ending_in_v1",
            M::POST,
            "/accounts",
            new("anthropic", "https://api.anthropic.com/v1/"),
            400,
            Some("base_url"),
        ),
        case(
            "create_openai_official_without_v1",
            M::POST,
            "/accounts",
            new("openai", "https://api.openai.com"),
            400,
            Some("base_url"),
        ),
        case(
            "create_with_query",
            M::POST,
            "/accounts",
            new("openai", "https://up.example/v1?key=1"),
            400,
            Some("base_url"),
        ),
        case(
            "create_with_fragment",
            M::POST,
            "/accounts",
            new("anthropic", "https://api.anthropic.com#x"),
            400,
            Some("base_url"),
        ),
        case(
            "edit_base_url_of_anthropic_to_v1",
            M::PATCH,
            format!("/accounts/{an}"),
            Some(json!({"base_url": "https://relay.example/v1"})),
            400,
            Some("base_url"),
        ),
        // The stored base URL is checked against a new provider.
        case(
            "edit_provider_of_v1_base_to_anthropic",
            M::PATCH,
            format!("/accounts/{oa}"),
            Some(json!({"provider": "anthropic"})),
            400,
            Some("base_url"),
        ),
        case(
            "edit_openai_official_without_v1",
            M::PATCH,
            format!("/accounts/{oa}"),
            Some(json!({"base_url": "https://api.openai.com/"})),
            400,
            Some("base_url"),
        ),
    ];
    let router = tollgate::http::router(app.state.clone());
    let mut failures = Vec::new();
    let mut bodies = Map::new();
    for c in &cases {
        let (status, v) = call(&router, c).await;
        if status != c.status || v["error"]["param"].as_str() != c.param {
            failures.push(format!("{}: {status} {v}", c.name));
        }
        bodies.insert(c.name.to_string(), v["error"]["message"].clone());
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
    insta::assert_json_snapshot!(Value::Object(bodies), @r#"
    {
      "create_anthropic_ending_in_v1": "`base_url`: must not end in /v1 for an Anthropic account: tollgate adds /v1/messages itself (e.g. https://api.anthropic.com)",
      "create_openai_official_without_v1": "`base_url`: must be https://api.openai.com/v1 for api.openai.com: tollgate adds /chat/completions to it",
      "create_with_fragment": "`base_url`: must not have a query (?…) or a fragment (#…): the endpoint's path is added to it",
      "create_with_query": "`base_url`: must not have a query (?…) or a fragment (#…): the endpoint's path is added to it",
      "edit_base_url_of_anthropic_to_v1": "`base_url`: must not end in /v1 for an Anthropic account: tollgate adds /v1/messages itself (e.g. https://api.anthropic.com)",
      "edit_openai_official_without_v1": "`base_url`: must be https://api.openai.com/v1 for api.openai.com: tollgate adds /chat/completions to it",
      "edit_provider_of_v1_base_to_anthropic": "`base_url`: must not end in /v1 for an Anthropic account: tollgate adds /v1/messages itself (e.g. https://api.anthropic.com)"
    }
    "#);
    // Nothing was written: the two accounts, unchanged.
    let (_, list) = app.get("/accounts").await;
    let rows = list["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!(rows[0]["base_url"], "https://up.example/v1");
    assert_eq!(rows[0]["provider"], "openai");
    assert_eq!(rows[1]["base_url"], "https://api.anthropic.com");
    // An OpenAI-compatible base without a version path is accepted, with a warning, on create
    // and on edit; a versioned one has none.
    let (s, v) = app
        .post(
            "/accounts",
            json!({"name": "ds", "provider": "openai", "base_url": "https://api.deepseek.example", "api_key": "k"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["warnings"],
        json!([{
            "field": "base_url",
            "code": "no_version_path",
            "message": "`base_url`: has no version in its path (such as /v1): requests go to base_url/chat/completions, which most OpenAI-compatible upstreams only serve under /v1"
        }]),
        "{v}"
    );
    let (s, v) = app
        .patch(
            &format!("/accounts/{oa}"),
            json!({"base_url": "https://up.example/openai"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["warnings"][0]["code"], "no_version_path", "{v}");
    let (s, v) = app
        .patch(
            &format!("/accounts/{oa}"),
            json!({"base_url": "https://up.example/api/v4"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["warnings"], json!([]), "{v}");
}
