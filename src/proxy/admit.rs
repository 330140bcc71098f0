//! Steps 3 and 4, admit: may this key send this request now, to which accounts, and which
//! grant pays? [`offer`] reads what the gateway has for the model (its price, the provider's
//! accounts); [`admit`] decides, and reserves the admission estimate against the grant.
//!
//! Checks in this order, the first that fails answers: the key's allowed models, the price,
//! an account serving the model, one not `auth_failed`, RPM, TPM, the key's own budget
//! (`billing::key_budget`), a grant with room. Accounts
//! cooling down are left out unless every one is: then the one whose cooldown ends first is
//! tried (its probe), so a request is never refused while an account might serve.
//!
//! With Redis, RPM, TPM, the key's budget and the grant are one script (`billing::shared`),
//! so a charged request's grants are read first: while the database is down and they are not
//! cached, a request over its RPM gets 503 rather than 429.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::error::{Failure, ProxyError};
use super::limits::{retry_after, Limit};
use super::parse::ProxyRequest;
use crate::billing::admission::{self, Since};
use crate::billing::balance::window_starts;
use crate::billing::cost::Price;
use crate::billing::key_budget::{self, key_window_starts};
use crate::billing::shared::{Ask, Decision, SharedReservations};
use crate::domain::{AccountStatus, Provider};
use crate::state::AppState;
use crate::store::accounts::Account;
use crate::store::keys::{KeyAuth, KeyBudgetState};
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
    let request_id = uuid::Uuid::now_v7().to_string();
    if !req.endpoint.charged() {
        check_rate_limits(st, key, now_ms).await.map_err(fail)?;
        return Ok(Admitted {
            request_id,
            price: offer.price,
            accounts: healthy,
            now,
            charge: Charge::default(),
        });
    }
    // The grants are read before the rate limits, so that with Redis one script checks RPM,
    // TPM, the key's budget and the grants in one round trip (SPEC §11.1).
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
    let budget_cached = load_key_budget(st, key).await.map_err(db_err)?;
    let budget = budget_cached
        .as_deref()
        .and_then(|(since, state)| state.as_ref().map(|s| (*since, s)));
    let shared = match res.shared() {
        Some(shared) => {
            let ask = Shared {
                shared,
                since,
                grants,
                budget,
                hold: &request_id,
                est,
            };
            ask.admit(st, key, now).await
        }
        None => SharedOutcome::NotAsked,
    };
    let kb = &st.proxy.key_budgets;
    let (g, key_reserved) = match shared {
        SharedOutcome::Decided(Ok(g)) => {
            res.add(g.id, est);
            let key_reserved = budget.map(|_| {
                kb.reservations.add(key.id, est);
                est
            });
            (g, key_reserved)
        }
        SharedOutcome::Decided(Err(f)) => return Err(fail(f)),
        outcome => {
            if matches!(outcome, SharedOutcome::Unanswered) {
                st.proxy
                    .limiter
                    .check_local(key.id, key.rpm_limit, key.tpm_limit, now_ms)
                    .map_err(|(limit, after)| fail(rate_limited(key, limit, after)))?;
            } else {
                check_rate_limits(st, key, now_ms).await.map_err(fail)?;
            }
            let key_reserved = hold_key_budget(st, key, budget, now, est).map_err(fail)?;
            let g = res
                .admit(since.local, |reserved| {
                    admission::choose(grants, now, st.tz, reserved).map(|g| (g.id, est, g))
                })
                .map_err(|d| {
                    // A request refused by its grants holds nothing against its key either.
                    if let Some(held) = key_reserved {
                        kb.reservations.add(key.id, -held);
                    }
                    fail(Failure::NoQuota(d.message))
                })?;
            (g, key_reserved)
        }
    };
    Ok(Admitted {
        request_id,
        price: offer.price,
        accounts: healthy,
        now,
        charge: Charge {
            user_package_id: Some(g.id),
            windows: window_starts(g, now, st.tz),
            reserved: est,
            key_windows: key_window_starts(now, key.created_at, st.tz),
            key_reserved,
        },
    })
}

/// The refusal of a key over its RPM or TPM.
fn rate_limited(key: &KeyAuth, limit: Limit, retry_after: u64) -> Failure {
    let message = match limit {
        Limit::Rpm => format!(
            "this API key is over its limit of {} requests per minute; retry after {retry_after} s",
            key.rpm_limit.unwrap_or_default()
        ),
        Limit::Tpm => format!(
            "this API key is over its limit of {} tokens per minute; retry after {retry_after} s",
            key.tpm_limit.unwrap_or_default()
        ),
    };
    Failure::RateLimited {
        message,
        retry_after,
    }
}

/// RPM, then TPM, on their own (`proxy::limits`: in Redis when configured).
async fn check_rate_limits(st: &AppState, key: &KeyAuth, now_ms: i64) -> Result<(), Failure> {
    let limiter = &st.proxy.limiter;
    if let Some(rpm) = key.rpm_limit {
        limiter
            .hit_rpm(key.id, rpm, now_ms)
            .await
            .map_err(|after| rate_limited(key, Limit::Rpm, after))?;
    }
    if let Some(tpm) = key.tpm_limit {
        limiter
            .check_tpm(key.id, tpm, now_ms)
            .await
            .map_err(|after| rate_limited(key, Limit::Tpm, after))?;
    }
    Ok(())
}

/// A budgeted key's counters as admission reads them, with the settlement sequence numbers
/// read before them (see `admission::Reservations`); None for a key without a budget.
async fn load_key_budget(
    st: &AppState,
    key: &KeyAuth,
) -> Result<Option<Arc<(Since, Option<KeyBudgetState>)>>, StoreError> {
    if !key.limits.any() {
        return Ok(None);
    }
    let kb = &st.proxy.key_budgets;
    let cached = kb
        .cache
        .get_or_load(&key.id, || async {
            let since = Since {
                local: kb.reservations.seq(),
                shared: match st.proxy.reservations.shared() {
                    Some(s) => s.seq().await,
                    None => None,
                },
            };
            Ok::<_, StoreError>((since, st.db.key_budget_state(key.id).await?))
        })
        .await?;
    Ok(Some(cached))
}

/// A key with a budget (SPEC §11.3), in process: check its room, less what this instance's
/// in-flight requests hold, and hold `est` against it. Some(what is held), or None for a key
/// without a budget.
fn hold_key_budget(
    st: &AppState,
    key: &KeyAuth,
    budget: Option<(Since, &KeyBudgetState)>,
    now: DateTime<Utc>,
    est: i64,
) -> Result<Option<i64>, Failure> {
    let Some((since, state)) = budget else {
        return Ok(None);
    };
    st.proxy
        .key_budgets
        .reservations
        .admit(since.local, |held| {
            key_budget::check(state, now, st.tz, held(key.id)).map(|()| (key.id, est, ()))
        })
        .map_err(|d| Failure::KeyBudget(d.message))?;
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

/// What asking Redis gave.
enum SharedOutcome<'g> {
    /// Redis decided, for every instance.
    Decided(Result<&'g UserPackage, Failure>),
    /// It did not answer in time: this instance decides alone.
    Unanswered,
    /// Not asked: the grants or the key's counters were read while Redis did not answer (so
    /// which settled charges they include is unknown), or there is no active grant.
    NotAsked,
}

/// One admission to decide in Redis, against every instance's holds.
struct Shared<'a, 'g> {
    shared: &'a SharedReservations,
    since: Since,
    grants: &'g [UserPackage],
    budget: Option<(Since, &'a KeyBudgetState)>,
    hold: &'a str,
    est: i64,
}

impl<'g> Shared<'_, 'g> {
    /// RPM, TPM, the key's budget and a grant with room, in one script; the refusals are the
    /// ones the in-process path gives for the same figures.
    async fn admit(self, st: &AppState, key: &KeyAuth, now: DateTime<Utc>) -> SharedOutcome<'g> {
        let Some(since) = self.since.shared else {
            return SharedOutcome::NotAsked;
        };
        let key_budget = match self.budget {
            Some((since, state)) => match since.shared {
                Some(s) => Some((key.id, key_budget::room(state, now, st.tz), s)),
                None => return SharedOutcome::NotAsked,
            },
            None => None,
        };
        let rooms = admission::rooms(self.grants, now, st.tz);
        if rooms.is_empty() {
            return SharedOutcome::NotAsked;
        }
        let now_ms = now.timestamp_millis();
        let limited = key.rpm_limit.is_some() || key.tpm_limit.is_some();
        let counters = if limited {
            st.proxy.limiter.redis_counters(key.id, now_ms)
        } else {
            None
        };
        let (rpm_key, tpm_key) = counters.as_ref().map_or(("", ""), |(r, t)| (r, t));
        let ask = Ask {
            hold: self.hold,
            amount: self.est,
            rpm: key
                .rpm_limit
                .filter(|_| !rpm_key.is_empty())
                .map(|l| (rpm_key, l)),
            tpm: key
                .tpm_limit
                .filter(|_| !tpm_key.is_empty())
                .map(|l| (tpm_key, l)),
            key_budget,
            since,
            rooms: &rooms,
        };
        let Some(decision) = self.shared.admit(&ask).await else {
            return SharedOutcome::Unanswered;
        };
        let after = retry_after(now_ms);
        SharedOutcome::Decided(match decision {
            Decision::Granted(id) => match self.grants.iter().find(|g| g.id == id) {
                Some(g) => Ok(g),
                None => return SharedOutcome::Unanswered,
            },
            Decision::OverRpm => Err(rate_limited(key, Limit::Rpm, after)),
            Decision::OverTpm => Err(rate_limited(key, Limit::Tpm, after)),
            Decision::KeyBudgetFull(held) => {
                let (_, state) = self.budget.expect("a key budget was asked for");
                match key_budget::check(state, now, st.tz, held) {
                    Err(d) => Err(Failure::KeyBudget(d.message)),
                    Ok(()) => return SharedOutcome::Unanswered,
                }
            }
            Decision::NoRoom(seen) => {
                let held = |id: i64| {
                    rooms
                        .iter()
                        .zip(&seen)
                        .find(|((g, _), _)| *g == id)
                        .map_or(0, |(_, r)| *r)
                };
                // Same rule as Redis applied, so this names the first grant without room.
                match admission::choose(self.grants, now, st.tz, held) {
                    Err(d) => Err(Failure::NoQuota(d.message)),
                    Ok(_) => return SharedOutcome::Unanswered,
                }
            }
        })
    }
}
