//! API keys: create (the secret is returned once), revoke, enable again.

use super::parse::{concurrency, models, name, one_of, time};
use super::{AdminError, Problem, Result};
use crate::domain::KeyStatus;
use crate::secrets::new_api_key;
use crate::state::AppState;
use crate::store::keys::ApiKey;

pub struct NewKey {
    pub name: String,
    /// Empty: every model.
    pub allowed_models: Vec<String>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    /// RFC 3339.
    pub expires_at: Option<String>,
    /// Requests in flight at once; None = no cap.
    pub max_concurrency: Option<i64>,
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
    let max_concurrency = concurrency("max_concurrency", k.max_concurrency)?;
    let expires_at = time("expires_at", k.expires_at.as_deref())?;
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

/// What to change on a key; `None` keeps it (`max_concurrency: Some(None)` clears the cap).
#[derive(Default)]
pub struct KeyPatch {
    pub status: Option<String>,
    pub max_concurrency: Option<Option<i64>>,
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
    let mut key = st.db.get_key(id).await.map_err(AdminError::lookup("key"))?;
    let now = st.now_ms();
    if let Some(s) = status {
        key = st.db.set_key_status(id, s, now).await?;
    }
    if let Some(m) = max_concurrency {
        key = st.db.set_key_max_concurrency(id, m, now).await?;
    }
    st.proxy.forget_cached();
    Ok(key)
}
