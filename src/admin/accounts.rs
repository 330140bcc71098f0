//! Upstream accounts: create and change.

use super::parse::{models, one_of};
use super::{AdminError, Problem, Result};
use crate::config::Secret;
use crate::domain::{AccountStatus, Provider};
use crate::state::AppState;
use crate::store::accounts::{Account, AccountFields, ModelMap};

/// The fields of an account as sent; on update, `None` keeps the stored value.
#[derive(Default)]
pub struct AccountInput {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub models: Option<Vec<String>>,
    pub priority: Option<i64>,
    pub weight: Option<i64>,
    pub status: Option<String>,
    /// `{"client-name": "upstream-name"}` as sent (anything else is refused); `{}` clears.
    pub model_map: Option<serde_json::Value>,
}

/// Validate the fields present; `creating` requires name, provider, base_url and api_key.
fn fields(b: AccountInput, creating: bool) -> Result<AccountFields> {
    for (field, missing) in [
        ("name", b.name.is_none()),
        ("provider", b.provider.is_none()),
        ("base_url", b.base_url.is_none()),
        ("api_key", b.api_key.is_none()),
    ] {
        if creating && missing {
            return Err(AdminError::invalid(field, Problem::Required));
        }
    }
    // The length counts the name as sent, surrounding spaces included (stored trimmed).
    if let Some(n) = &b.name {
        if n.trim().is_empty() || n.chars().count() > 128 {
            return Err(AdminError::invalid(
                "name",
                Problem::Length { min: 1, max: 128 },
            ));
        }
    }
    let provider = b
        .provider
        .as_deref()
        .map(|p| one_of::<Provider>("provider", p))
        .transpose()?;
    if let Some(u) = &b.base_url {
        let ok = url::Url::parse(u)
            .map(|x| matches!(x.scheme(), "http" | "https") && x.host().is_some())
            .unwrap_or(false);
        if !ok {
            return Err(AdminError::invalid("base_url", Problem::NotAUrl));
        }
    }
    if matches!(&b.api_key, Some(k) if k.trim().is_empty()) {
        return Err(AdminError::invalid("api_key", Problem::Empty));
    }
    if matches!(b.weight, Some(w) if !(1..=1000).contains(&w)) {
        return Err(AdminError::invalid(
            "weight",
            Problem::OutOfRange { min: 1, max: 1000 },
        ));
    }
    if let Some(m) = &b.models {
        models("models", m)?;
    }
    let model_map = b.model_map.as_ref().map(model_map).transpose()?;
    let status = b
        .status
        .as_deref()
        .map(|s| one_of::<AccountStatus>("status", s))
        .transpose()?;
    Ok(AccountFields {
        name: b.name.map(|s| s.trim().to_string()),
        provider,
        base_url: b.base_url.map(|u| u.trim_end_matches('/').to_string()),
        secret: b.api_key.map(Secret::new),
        models: b.models,
        priority: b.priority,
        weight: b.weight,
        status,
        model_map,
    })
}

/// A JSON object of non-empty model names to non-empty model names (names trimmed).
fn model_map(v: &serde_json::Value) -> Result<ModelMap> {
    let bad = || AdminError::invalid("model_map", Problem::NotAModelMap);
    let obj = v.as_object().ok_or_else(bad)?;
    let mut map = std::collections::BTreeMap::new();
    for (client, upstream) in obj {
        let upstream = upstream.as_str().map(str::trim).unwrap_or_default();
        if client.trim().is_empty() || upstream.is_empty() {
            return Err(bad());
        }
        map.insert(client.trim().to_string(), upstream.to_string());
    }
    Ok(ModelMap(map))
}

pub async fn create_account(st: &AppState, a: AccountInput) -> Result<Account> {
    let f = fields(a, true)?;
    let account = st.db.create_account(&f, st.now_ms()).await?;
    st.proxy.forget_cached();
    Ok(account)
}

pub async fn update_account(st: &AppState, id: i64, a: AccountInput) -> Result<Account> {
    let f = fields(a, false)?;
    st.db
        .get_account(id)
        .await
        .map_err(AdminError::lookup("account"))?;
    let account = st.db.update_account(id, &f, st.now_ms()).await?;
    // A new secret or a re-enable is the administrator's word that the account may serve.
    if f.secret.is_some() || f.status == Some(AccountStatus::Active) {
        st.proxy.health.reset(id);
    }
    st.proxy.forget_cached();
    Ok(account)
}
