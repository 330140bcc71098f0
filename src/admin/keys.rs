//! API keys: create (the secret is returned once), revoke, enable again.

use super::parse::{cidrs, models, name, one_of, time};
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
    /// CIDR ranges or addresses; empty: any address.
    pub allowed_ips: Vec<String>,
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
