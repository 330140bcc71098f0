//! API keys: create (the secret is returned once), revoke, enable again.

use super::parse::{cidrs, concurrency, models, name, one_of, time};
use super::{AdminError, Problem, Result};
use crate::billing::money::Usd;
use crate::domain::KeyStatus;
use crate::secrets::new_api_key;
use crate::state::AppState;
use crate::store::keys::{ApiKey, KeyLimits};

pub struct NewKey {
    pub name: String,
    /// Empty: every model.
    pub allowed_models: Vec<String>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    /// RFC 3339.
    pub expires_at: Option<String>,
    /// CIDR ranges or addresses; empty: any address.
    pub allowed_ips: Vec<String>,
    pub budget: BudgetInput,
    /// Requests in flight at once; None = no cap.
    pub max_concurrency: Option<i64>,
}

/// A key's budgets as given (SPEC §11.3): USD amounts; None = no limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct BudgetInput {
    pub daily_limit: Option<Usd>,
    pub weekly_limit: Option<Usd>,
    pub monthly_limit: Option<Usd>,
    pub total_limit: Option<Usd>,
}

/// A change of some of a key's budgets: for each, None = leave it, Some(None) = lift it,
/// Some(Some(v)) = set it.
#[derive(Clone, Copy, Debug, Default)]
pub struct BudgetPatch {
    pub daily_limit: Option<Option<Usd>>,
    pub weekly_limit: Option<Option<Usd>>,
    pub monthly_limit: Option<Option<Usd>>,
    pub total_limit: Option<Option<Usd>>,
}

impl BudgetPatch {
    pub fn is_empty(&self) -> bool {
        self.daily_limit.is_none()
            && self.weekly_limit.is_none()
            && self.monthly_limit.is_none()
            && self.total_limit.is_none()
    }
}

/// A budget limit: zero (nothing may be spent) or more.
fn budget_limit(field: &'static str, v: Option<Usd>) -> Result<Option<i64>> {
    match v {
        Some(u) if u.0 < 0 => Err(AdminError::invalid(field, Problem::Negative)),
        other => Ok(other.map(|u| u.0)),
    }
}

fn limits(b: BudgetInput) -> Result<KeyLimits> {
    Ok(KeyLimits {
        daily_limit: budget_limit("daily_limit", b.daily_limit)?,
        weekly_limit: budget_limit("weekly_limit", b.weekly_limit)?,
        monthly_limit: budget_limit("monthly_limit", b.monthly_limit)?,
        total_limit: budget_limit("total_limit", b.total_limit)?,
    })
}

fn pick(field: &'static str, patch: Option<Option<Usd>>, old: Option<i64>) -> Result<Option<i64>> {
    match patch {
        None => Ok(old),
        Some(v) => budget_limit(field, v),
    }
}

/// Check a budget change without writing (so a caller that writes other fields first can
/// refuse the whole request before any write).
pub fn check_key_budget(p: &BudgetPatch) -> Result<()> {
    for (field, v) in [
        ("daily_limit", p.daily_limit),
        ("weekly_limit", p.weekly_limit),
        ("monthly_limit", p.monthly_limit),
        ("total_limit", p.total_limit),
    ] {
        pick(field, v, None)?;
    }
    Ok(())
}

/// Change some of a key's budgets; the others, and the key's counters, are kept.
pub async fn update_key_budget(st: &AppState, id: i64, p: BudgetPatch) -> Result<ApiKey> {
    // Every field is checked before the key is read, so a bad one writes nothing.
    check_key_budget(&p)?;
    let key = st.db.get_key(id).await.map_err(AdminError::lookup("key"))?;
    let key = write_key_budget(st, key, &p).await?;
    st.proxy.forget_cached();
    Ok(key)
}

/// Write a checked budget change over `key`'s current limits.
async fn write_key_budget(st: &AppState, key: ApiKey, p: &BudgetPatch) -> Result<ApiKey> {
    let b = &key.budget;
    let l = KeyLimits {
        daily_limit: pick("daily_limit", p.daily_limit, b.daily_limit)?,
        weekly_limit: pick("weekly_limit", p.weekly_limit, b.weekly_limit)?,
        monthly_limit: pick("monthly_limit", p.monthly_limit, b.monthly_limit)?,
        total_limit: pick("total_limit", p.total_limit, b.total_limit)?,
    };
    Ok(st.db.set_key_limits(key.id, &l, st.now_ms()).await?)
}

/// A new key and its secret, which is stored only as a hash.
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

pub async fn create_key(st: &AppState, user_id: i64, k: NewKey) -> Result<CreatedKey> {
    let name = name("name", &k.name, 128)?;
    for (field, v) in [("rpm_limit", k.rpm_limit), ("tpm_limit", k.tpm_limit)] {
        if matches!(v, Some(n) if n <= 0) {
            return Err(AdminError::invalid(field, Problem::NotPositiveInteger));
        }
    }
    models("allowed_models", &k.allowed_models)?;
    let budget = limits(k.budget)?;
    let max_concurrency = concurrency("max_concurrency", k.max_concurrency)?;
    let expires_at = time("expires_at", k.expires_at.as_deref())?;
    let allowed_ips = cidrs("allowed_ips", &k.allowed_ips)?;
    st.db
        .get_user(user_id)
        .await
        .map_err(AdminError::lookup("user"))?;
    let (secret, prefix, hash) = new_api_key();
    let key = st
        .db
        .create_key(
            &crate::store::keys::NewKey {
                user_id,
                name: &name,
                key_prefix: &prefix,
                key_hash: &hash,
                expires_at,
                allowed_models: &k.allowed_models,
                rpm_limit: k.rpm_limit,
                tpm_limit: k.tpm_limit,
                allowed_ips: &allowed_ips,
                limits: budget,
                max_concurrency,
            },
            st.now_ms(),
        )
        .await?;
    st.proxy.forget_cached();
    Ok(CreatedKey { key, secret })
}

pub async fn set_key_status(st: &AppState, id: i64, status: &str) -> Result<ApiKey> {
    let status = one_of::<KeyStatus>("status", status)?;
    st.db.get_key(id).await.map_err(AdminError::lookup("key"))?;
    let key = st.db.set_key_status(id, status, st.now_ms()).await?;
    st.proxy.forget_cached();
    Ok(key)
}

/// Replace a key's IP allow-list (`None` or empty: any address). Every entry is checked
/// before anything is written.
pub async fn set_key_allowed_ips(
    st: &AppState,
    id: i64,
    allowed_ips: Option<Vec<String>>,
) -> Result<ApiKey> {
    let ips = cidrs("allowed_ips", allowed_ips.as_deref().unwrap_or_default())?;
    st.db.get_key(id).await.map_err(AdminError::lookup("key"))?;
    let key = st.db.set_key_allowed_ips(id, &ips, st.now_ms()).await?;
    st.proxy.forget_cached();
    Ok(key)
}

/// What to change on a key; `None` keeps it (`max_concurrency: Some(None)` clears the cap).
#[derive(Default)]
pub struct KeyPatch {
    pub status: Option<String>,
    pub max_concurrency: Option<Option<i64>>,
    pub budget: BudgetPatch,
    /// `Some(None)` or `Some(Some([]))`: any address.
    pub allowed_ips: Option<Option<Vec<String>>>,
}

impl KeyPatch {
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.max_concurrency.is_none()
            && self.budget.is_empty()
            && self.allowed_ips.is_none()
    }
}

/// Change a key: every field is checked before anything is written.
pub async fn update_key(st: &AppState, id: i64, p: KeyPatch) -> Result<ApiKey> {
    let status = p
        .status
        .as_deref()
        .map(|s| one_of::<KeyStatus>("status", s))
        .transpose()?;
    let max_concurrency = p
        .max_concurrency
        .map(|m| concurrency("max_concurrency", m))
        .transpose()?;
    check_key_budget(&p.budget)?;
    let allowed_ips = p
        .allowed_ips
        .map(|ips| cidrs("allowed_ips", ips.as_deref().unwrap_or_default()))
        .transpose()?;
    let mut key = st.db.get_key(id).await.map_err(AdminError::lookup("key"))?;
    let now = st.now_ms();
    if let Some(s) = status {
        key = st.db.set_key_status(id, s, now).await?;
    }
    if let Some(m) = max_concurrency {
        key = st.db.set_key_max_concurrency(id, m, now).await?;
    }
    if !p.budget.is_empty() {
        key = write_key_budget(st, key, &p.budget).await?;
    }
    if let Some(ips) = allowed_ips {
        key = st.db.set_key_allowed_ips(id, &ips, now).await?;
    }
    st.proxy.forget_cached();
    Ok(key)
}
