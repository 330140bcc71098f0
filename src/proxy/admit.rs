//! Steps 3 and 4, admit: may this key send this request now, to which accounts, and which
//! grant pays? [`offer`] reads what the gateway has for the model (its price, the provider's
//! accounts); [`admit`] decides, and reserves the admission estimate against the grant.
//!
//! Checks in this order, the first that fails answers: the key's allowed models, the price,
//! an account serving the model, one not cooling down, RPM, TPM, a grant with room.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::error::{Failure, ProxyError};
use super::parse::ProxyRequest;
use crate::billing::admission;
use crate::billing::balance::window_starts;
use crate::billing::cost::Price;
use crate::state::AppState;
use crate::store::accounts::Account;
use crate::store::keys::KeyAuth;
use crate::store::StoreError;
use crate::usage::WindowStarts;

/// What the gateway has for the requested model.
pub struct Offer {
    pub price: Price,
    /// The active accounts of the endpoint's provider (cached; not yet filtered by model).
    accounts: Arc<Vec<Account>>,
}

/// An admitted request.
pub struct Admitted<'a> {
    pub price: Price,
    /// The accounts that serve the model and are not cooling down, in no order yet.
    pub accounts: Vec<&'a Account>,
    /// When it was admitted (the time its usage is charged at).
    pub now: DateTime<Utc>,
    pub charge: Charge,
}

/// What pays for an admitted request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Charge {
    /// None for requests that are not charged (`count_tokens`).
    pub user_package_id: Option<i64>,
    pub windows: Option<WindowStarts>,
    /// The admission estimate reserved against the grant (nano-dollars).
    pub reserved: i64,
}

/// The key may use the model, and the gateway prices it: its price and accounts.
pub async fn offer(st: &AppState, key: &KeyAuth, req: &ProxyRequest) -> Result<Offer, ProxyError> {
    let protocol = req.endpoint.protocol();
    let fail = |f: Failure| ProxyError::new(protocol, f);
    let db_err = |e: StoreError| ProxyError::database(protocol, e);
    let model = &req.model;
    let allowed = crate::store::column_to_list(&key.allowed_models);
    if !allowed.is_empty() && !allowed.contains(model) {
        return Err(fail(Failure::ModelNotAllowed(format!(
            "this API key may not use model `{model}`; it may use: {}",
            allowed.join(", ")
        ))));
    }
    let price = st
        .proxy
        .prices
        .get_or_load(model, || async {
            Ok(st.db.get_price(model).await?.map(|p| p.price()))
        })
        .await
        .map_err(db_err)?
        .ok_or_else(|| {
            fail(Failure::ModelNotFound(format!(
                "model `{model}` is not available on this gateway (it has no price)"
            )))
        })?;
    let provider = req.endpoint.provider();
    let accounts = st
        .proxy
        .accounts
        .get_or_load(&provider, || st.db.active_accounts(provider))
        .await
        .map_err(db_err)?;
    Ok(Offer { price, accounts })
}

/// Accounts to try, rate limits, and the grant that pays (with the estimate reserved).
pub async fn admit<'a>(
    st: &AppState,
    key: &KeyAuth,
    req: &ProxyRequest,
    offer: &'a Offer,
) -> Result<Admitted<'a>, ProxyError> {
    let protocol = req.endpoint.protocol();
    let fail = |f: Failure| ProxyError::new(protocol, f);
    let db_err = |e: StoreError| ProxyError::database(protocol, e);
    let model = &req.model;
    let serving: Vec<&Account> = offer.accounts.iter().filter(|a| a.serves(model)).collect();
    if serving.is_empty() {
        return Err(fail(Failure::ModelNotFound(format!(
            "no upstream account serves model `{model}`"
        ))));
    }
    let healthy: Vec<&Account> = serving
        .into_iter()
        .filter(|a| !st.proxy.health.cooling(a.id))
        .collect();
    if healthy.is_empty() {
        return Err(fail(Failure::NoAccount(format!(
            "every upstream account for model `{model}` is cooling down after errors; retry shortly"
        ))));
    }

    let now = st.clock.now();
    let now_ms = now.timestamp_millis();
    if let Some(rpm) = key.rpm_limit {
        st.proxy
            .limiter
            .hit_rpm(key.id, rpm, now_ms)
            .await
            .map_err(|retry_after| {
                fail(Failure::RateLimited {
                    message: format!(
                        "this API key is over its limit of {rpm} requests per minute; retry after {retry_after} s"
                    ),
                    retry_after,
                })
            })?;
    }
    if let Some(tpm) = key.tpm_limit {
        st.proxy
            .limiter
            .check_tpm(key.id, tpm, now_ms)
            .await
            .map_err(|retry_after| {
                fail(Failure::RateLimited {
                    message: format!(
                        "this API key is over its limit of {tpm} tokens per minute; retry after {retry_after} s"
                    ),
                    retry_after,
                })
            })?;
    }

    let charge = if req.endpoint.charged() {
        let res = &st.proxy.reservations;
        let user = [key.user_id];
        let cached = st
            .proxy
            .grants
            .get_or_load(&key.user_id, || async {
                let since = res.seq();
                Ok((since, st.db.active_user_packages(&user, now_ms).await?))
            })
            .await
            .map_err(db_err)?;
        let (since, grants) = (cached.0, &cached.1);
        let est = st.proxy.learner.estimate(
            key.id,
            model,
            req.body.len(),
            req.max_output_tokens,
            &offer.price,
        );
        let g = res
            .admit(since, |reserved| {
                admission::choose(grants, now, st.tz, reserved).map(|g| (g.id, est, g))
            })
            .map_err(|d| fail(Failure::NoQuota(d.message)))?;
        Charge {
            user_package_id: Some(g.id),
            windows: window_starts(g, now, st.tz),
            reserved: est,
        }
    } else {
        Charge::default()
    };
    Ok(Admitted {
        price: offer.price,
        accounts: healthy,
        now,
        charge,
    })
}
