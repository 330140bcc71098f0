//! Step 6 and the last one: the [`Ticket`] holds what the usage event of an admitted request
//! needs, and [`Ticket::finish`] hands that event to the recorder (without waiting).

use std::time::Instant;

use super::admit::Admitted;
use super::parse::ProxyRequest;
use super::tap::Dispute;
use super::Endpoint;
use crate::billing::cost::{checked_cost, Price, Tokens};
use crate::billing::estimate::usage_estimate;
use crate::billing::shared::Holder;
use crate::billing::windows::day_string;
use crate::recorder::Durable;
use crate::state::AppState;
use crate::store::keys::KeyAuth;
use crate::usage::{BillingStatus, UsageEvent, WindowStarts};

/// Everything known about a request once admitted; produces its usage event.
pub struct Ticket {
    st: AppState,
    pub request_id: String,
    pub endpoint: Endpoint,
    /// The client's query string, forwarded upstream as is (None: no allocation).
    pub query: Option<String>,
    user_id: i64,
    api_key_id: i64,
    /// For the access log; empty (no allocation) when it is off.
    key_prefix: String,
    tpm_limited: bool,
    /// The account that answered (or the last one tried); None when nothing reached upstream.
    pub account_id: Option<i64>,
    user_package_id: Option<i64>,
    windows: Option<WindowStarts>,
    key_windows: Option<WindowStarts>,
    /// Held against the key's budget; None for a key without a budget.
    key_reserved: Option<i64>,
    model: String,
    stream: bool,
    price: Price,
    reserved: i64,
    pub started: Instant,
    created_at_ms: i64,
    day: String,
    request_bytes: usize,
    pub ttfb_ms: Option<i64>,
}

impl Ticket {
    pub fn new(
        st: AppState,
        key: &KeyAuth,
        request: ProxyRequest,
        admitted: &Admitted<'_>,
        started: Instant,
    ) -> Ticket {
        let day = day_string(admitted.now, st.tz);
        Ticket {
            request_id: admitted.request_id.clone(),
            endpoint: request.endpoint,
            query: None,
            user_id: key.user_id,
            api_key_id: key.id,
            key_prefix: if st.config.log.access {
                key.key_prefix.clone()
            } else {
                String::new()
            },
            tpm_limited: key.tpm_limit.is_some(),
            account_id: None,
            user_package_id: admitted.charge.user_package_id,
            windows: admitted.charge.windows,
            key_windows: admitted.charge.key_windows,
            key_reserved: admitted.charge.key_reserved,
            model: request.model,
            stream: request.stream,
            price: admitted.price,
            reserved: admitted.charge.reserved,
            started,
            created_at_ms: admitted.now.timestamp_millis(),
            day,
            request_bytes: request.body.len(),
            ttfb_ms: None,
            st,
        }
    }

    /// Emit the usage event. `tokens` None = nothing billable. The answer's last byte waits
    /// for the returned [`Durable`] (the event is in the recorder's journal).
    pub fn finish(
        &mut self,
        status: u16,
        tokens: Option<Tokens>,
        billing: BillingStatus,
        error: Option<String>,
    ) -> Durable {
        let tokens = if self.endpoint.charged() {
            tokens.unwrap_or_default()
        } else {
            Tokens::default()
        };
        let billing = if self.endpoint.charged() {
            billing
        } else {
            BillingStatus::Void
        };
        let (tokens, billing, cost_nanos) = match checked_cost(&tokens, &self.price) {
            Some(c) => (tokens, billing, c.total.nanos()),
            None => {
                // Never clamped: a cost that does not fit is disputed like absurd counts.
                tracing::warn!(
                    request_id = %self.request_id,
                    account_id = ?self.account_id,
                    api_key_id = self.api_key_id,
                    model = %self.model,
                    "the cost of the reported usage does not fit; recorded disputed at the estimate"
                );
                let est = self.estimate(0);
                let c = checked_cost(&est, &self.price).map_or(self.reserved, |c| c.total.nanos());
                (est, BillingStatus::Disputed, c)
            }
        };
        let st = &self.st;
        if billing == BillingStatus::Complete && status < 400 && self.endpoint.charged() {
            st.proxy.learner.learn(
                self.api_key_id,
                &self.model,
                &tokens,
                cost_nanos,
                &self.price,
            );
        }
        // The in-process holds now hold the actual cost until the recorder settles it.
        if let Some(up) = self.user_package_id {
            st.proxy.reservations.add(up, cost_nanos - self.reserved);
        }
        if let Some(held) = self.key_reserved {
            let kb = &st.proxy.key_budgets;
            kb.reservations.add(self.api_key_id, cost_nanos - held);
        }
        let shared_update = self.shared_update(cost_nanos, tokens.total());
        let event = UsageEvent {
            request_id: std::mem::take(&mut self.request_id),
            created_at_ms: self.created_at_ms,
            day: std::mem::take(&mut self.day),
            user_id: self.user_id,
            api_key_id: self.api_key_id,
            account_id: self.account_id,
            user_package_id: self.user_package_id,
            windows: self.windows,
            model: std::mem::take(&mut self.model),
            endpoint: self.endpoint.path().to_string(),
            stream: self.stream,
            status,
            tokens,
            cost_nanos,
            billing_status: billing,
            latency_ms: self.started.elapsed().as_millis() as i64,
            ttfb_ms: self.ttfb_ms,
            error,
            reserved: if self.user_package_id.is_some() {
                cost_nanos
            } else {
                0
            },
            key_windows: self.key_windows,
            key_reserved: if self.key_reserved.is_some() {
                cost_nanos
            } else {
                0
            },
        };
        super::access_log::line(st, &event, &self.key_prefix);
        let durable = st.recorder.record(event);
        match shared_update {
            Some(update) => durable.and(update),
            None => durable,
        }
    }

    /// What the finish changes in Redis, in one call: a hold far above the actual cost (a
    /// request that failed, or an estimate from the formula at a cold start) is moved to the
    /// cost, and the answer's last byte waits for that (bounded by `redis.timeout_ms`), so the
    /// client's next request, on any instance, does not meet it; the tokens of a TPM-limited
    /// key go to its window (not waited for). A hold near the cost (a learned estimate) stays
    /// until its charge is settled (one script per batch): a finished request that is not
    /// settled yet is still in flight for the oversell bound, so a typical request costs one
    /// round trip, its admission (SPEC §11.1).
    fn shared_update(
        &self,
        cost_nanos: i64,
        tokens: i64,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let st = &self.st;
        let tpm = self.tpm_limited && tokens > 0;
        if st.proxy.reservations.shared().is_none() {
            if tpm {
                st.proxy
                    .limiter
                    .add_tokens_local(self.api_key_id, tokens, st.now_ms());
            }
            return None;
        }
        // Far above: by more than the cost itself.
        let far_above = |held: i64| held - cost_nanos > cost_nanos;
        let mut holders = Vec::new();
        if let Some(up) = self.user_package_id.filter(|_| far_above(self.reserved)) {
            holders.push(Holder::Grant(up));
        }
        if self.key_reserved.is_some_and(far_above) {
            holders.push(Holder::KeyBudget(self.api_key_id));
        }
        if holders.is_empty() && !tpm {
            return None;
        }
        let (st2, hold, key) = (st.clone(), self.request_id.clone(), self.api_key_id);
        let wait = !holders.is_empty();
        let update = async move {
            let now = st2.now_ms();
            let limiter = &st2.proxy.limiter;
            let counter = limiter.redis_counters(key, now).filter(|_| tpm);
            let window = counter.as_ref().map(|(_, t)| (t.as_str(), tokens));
            let Some(shared) = st2.proxy.reservations.shared() else {
                return;
            };
            if !shared.adjust(&hold, cost_nanos, &holders, window).await && tpm {
                limiter.add_tokens_local(key, tokens, now);
            }
        };
        if wait {
            Some(update)
        } else {
            tokio::spawn(update);
            None
        }
    }

    /// Upstream reported usage that cannot be true: logged, and charged at the usage estimate
    /// (`output_bytes`: of a body, or characters of streamed text) as `disputed`.
    pub fn disputed(
        &mut self,
        status: u16,
        dispute: &Dispute,
        output_bytes: usize,
        error: Option<String>,
    ) -> Durable {
        tracing::warn!(
            request_id = %self.request_id,
            account_id = ?self.account_id,
            api_key_id = self.api_key_id,
            field = %dispute.field,
            value = %dispute.value,
            "upstream reported usage that cannot be true; recorded disputed at the estimate"
        );
        let est = self.estimate(output_bytes);
        self.finish(status, Some(est), BillingStatus::Disputed, error)
    }

    /// Nothing reached upstream: release the reservation and log the failure.
    pub fn fail_before_upstream(&mut self, status: u16, error: String) {
        self.account_id = None;
        self.finish(status, None, BillingStatus::Void, Some(error));
    }

    /// The gateway is closing its remaining connections (the shutdown grace ran out).
    pub fn closing(&self) -> bool {
        self.st
            .proxy
            .closing
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `upstream.max_tokens_per_request`: larger reported counts are disputed.
    pub fn max_tokens(&self) -> i64 {
        self.st.config.upstream.max_tokens_per_request
    }

    /// The model as the client named it (what prices, logs and limits use).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// A rough usage figure when upstream reported none (`billing::estimate`).
    pub fn estimate(&self, output_bytes: usize) -> Tokens {
        usage_estimate(self.request_bytes, output_bytes)
    }
}
