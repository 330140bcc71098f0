//! Steps 3 and 4, admit: may this key send this request now, to which accounts, and which
//! grant pays? [`offer`] reads what the gateway has for the model (its price, the provider's
//! accounts); [`admit`] decides, and reserves the admission estimate against the grant.
//!
//! Checks in this order, the first that fails answers: the key's allowed models, the price,
//! an account serving the model, one not `auth_failed`, RPM, TPM, the key's own budget
//! (`billing::key_budget`), a grant with room. Accounts
//! cooling down are left out unless every one is: then the one whose cooldown ends first is
//! tried (its probe), so a request is never refused while an account might serve.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::error::{Failure, Protocol, ProxyError};
use super::parse::ProxyRequest;
use crate::billing::admission::{self, Denial, Since};
use crate::billing::balance::window_starts;
use crate::billing::cost::Price;
use crate::billing::key_budget::{self, key_window_starts};
use crate::billing::shared::SharedReservations;
use crate::domain::{AccountStatus, Provider};
use crate::state::AppState;
use crate::store::accounts::Account;
use crate::store::keys::KeyAuth;
use crate::store::packages::UserPackage;
use crate::store::StoreError;
use crate::usage::WindowStarts;

/// What the gateway has for the requested model.
pub struct Offer {
    pub price: Price,
    /// The active accounts of the endpoint's provider (cached; not yet filtered by model).
    accounts: Arc<Vec<Account>>,
}

impl Offer {
    /// The client's model name to put back in the answer, when the account that answered
    /// (`account_id`) knows `model` by another name (SPEC §11.2 "Model aliases").
    pub fn alias_answer(&self, account_id: Option<i64>, model: &str) -> Option<String> {
        let id = account_id?;
        let a = self.accounts.iter().find(|a| a.id == id)?;
        a.upstream_model(model).map(|_| model.to_string())
    }
}

/// An admitted request.
pub struct Admitted<'a> {
    /// Its id (also the id of its reservation in Redis).
    pub request_id: String,
    pub price: Price,
    /// The accounts that serve the model and are not cooling down (or, when every one is, the
    /// one whose cooldown ends first), in no order yet.
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
    /// The key's budget windows at admission (None for requests that are not charged).
    pub key_windows: Option<WindowStarts>,
    /// The estimate held against the key's budget; None for a key without a budget.
    pub key_reserved: Option<i64>,
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
        let provider = req.endpoint.provider();
        return Err(fail(
            if disabled_account_serves(st, provider, model)
                .await
                .map_err(db_err)?
            {
                Failure::NoAccount(format!(
                    "every upstream account for model `{model}` is disabled"
                ))
            } else {
                Failure::ModelNotFound(format!("no upstream account serves model `{model}`"))
            },
        ));
    }
    let health = &st.proxy.health;
    let usable: Vec<&Account> = serving
        .into_iter()
        .filter(|a| !health.auth_failed(a.id))
        .collect();
    if usable.is_empty() {
        return Err(fail(Failure::NoAccount(format!(
            "every upstream account for model `{model}` was refused by its upstream (auth_failed); an administrator must fix its secret"
        ))));
    }
    let mut healthy: Vec<&Account> = usable
        .iter()
        .copied()
        .filter(|a| !health.cooling(a.id))
        .collect();
    if healthy.is_empty() {
        let first = usable
            .iter()
            .copied()
            .min_by_key(|a| (health.cooling_until(a.id).unwrap_or(0), a.id));
        healthy.extend(first);
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

    let request_id = uuid::Uuid::now_v7().to_string();
    let charge = if req.endpoint.charged() {
        let res = &st.proxy.reservations;
        let user = [key.user_id];
        let cached = st
            .proxy
            .grants
            .get_or_load(&key.user_id, || async {
                let since = res.since().await;
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
        let key_reserved = hold_key_budget(st, key, protocol, now, est).await?;
        // A request refused by its grants holds nothing against its key either.
        let unhold = || {
            if let Some(held) = key_reserved {
                st.proxy.key_budgets.reservations.add(key.id, -held);
            }
        };
        let shared = match res.shared() {
            Some(shared) => choose_shared(st, shared, since, grants, now, &request_id, est).await,
            None => None,
        };
        let g = match shared {
            Some(Ok(g)) => {
                res.add(g.id, est);
                g
            }
            Some(Err(d)) => {
                unhold();
                return Err(fail(Failure::NoQuota(d.message)));
            }
            None => res
                .admit(since.local, |reserved| {
                    admission::choose(grants, now, st.tz, reserved).map(|g| (g.id, est, g))
                })
                .map_err(|d| {
                    unhold();
                    fail(Failure::NoQuota(d.message))
                })?,
        };
        Charge {
            user_package_id: Some(g.id),
            windows: window_starts(g, now, st.tz),
            reserved: est,
            key_windows: key_window_starts(now, key.created_at, st.tz),
            key_reserved,
        }
    } else {
        Charge::default()
    };
    Ok(Admitted {
        request_id,
        price: offer.price,
        accounts: healthy,
        now,
        charge,
    })
}

/// A key with a budget (SPEC §11.3): check its room, less what its in-flight requests hold,
/// and hold `est` against it. Some(what is held), or None for a key without a budget.
async fn hold_key_budget(
    st: &AppState,
    key: &KeyAuth,
    protocol: Protocol,
    now: DateTime<Utc>,
    est: i64,
) -> Result<Option<i64>, ProxyError> {
    if !key.limits.any() {
        return Ok(None);
    }
    let kb = &st.proxy.key_budgets;
    let cached = kb
        .cache
        .get_or_load(&key.id, || async {
            let since = kb.reservations.seq();
            Ok((since, st.db.key_budget_state(key.id).await?))
        })
        .await
        .map_err(|e: StoreError| ProxyError::database(protocol, e))?;
    let (since, Some(state)) = (cached.0, &cached.1) else {
        return Ok(None);
    };
    kb.reservations
        .admit(since, |held| {
            key_budget::check(state, now, st.tz, held(key.id)).map(|()| (key.id, est, ()))
        })
        .map_err(|d| ProxyError::new(protocol, Failure::KeyBudget(d.message)))?;
    Ok(Some(est))
}

/// Whether a disabled account of `provider` serves `model` (SPEC §3: then 503, not 404).
/// Read from the store, only on this refusal path.
async fn disabled_account_serves(
    st: &AppState,
    provider: Provider,
    model: &str,
) -> Result<bool, StoreError> {
    const PAGE: i64 = 500;
    let mut cursor = None;
    loop {
        let page = st.db.list_accounts(cursor, PAGE).await?;
        if page.iter().any(|a| {
            a.provider == provider && a.status == AccountStatus::Disabled && a.serves(model)
        }) {
            return Ok(true);
        }
        match page.last() {
            Some(a) if page.len() as i64 == PAGE => cursor = Some(a.id),
            _ => return Ok(false),
        }
    }
}

/// Choose and reserve in Redis, against every instance's reservations; None when Redis does
/// not answer in time (or the grants were read while it did not: then which settled charges
/// they include is unknown), and the caller chooses in process.
async fn choose_shared<'g>(
    st: &AppState,
    shared: &SharedReservations,
    since: Since,
    grants: &'g [UserPackage],
    now: DateTime<Utc>,
    hold: &str,
    est: i64,
) -> Option<Result<&'g UserPackage, Denial>> {
    let since = since.shared?;
    let rooms = admission::rooms(grants, now, st.tz);
    if rooms.is_empty() {
        return None;
    }
    let (chosen, seen) = shared.admit(since, hold, est, &rooms).await?;
    match chosen {
        Some(id) => grants.iter().find(|g| g.id == id).map(Ok),
        None => {
            let held = |id: i64| {
                rooms
                    .iter()
                    .zip(&seen)
                    .find(|((g, _), _)| *g == id)
                    .map_or(0, |(_, r)| *r)
            };
            // Same rule as Redis applied, so this names the first grant without room.
            admission::choose(grants, now, st.tz, held).err().map(Err)
        }
    }
}
