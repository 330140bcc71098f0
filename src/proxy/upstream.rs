//! Upstream choice: active accounts of the right provider that serve the model, highest
//! priority first, weighted random inside a priority; and each account's health (SPEC §11.2):
//! consecutive failures, a cooldown that doubles on each relapse, and `auth_failed`.

use foldhash::HashMap;
use std::sync::Mutex;

use rand::Rng;

use crate::clock::Clock;
use crate::config::UpstreamConfig;
use crate::domain::AccountHealth;
use crate::store::accounts::Account;

/// When failures take an account out, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Consecutive failed attempts before the first cooldown.
    pub threshold: u32,
    /// The first cooldown, ms; doubled on each relapse.
    pub base_ms: i64,
    /// The longest cooldown, ms.
    pub max_ms: i64,
}

impl From<&UpstreamConfig> for Backoff {
    fn from(c: &UpstreamConfig) -> Backoff {
        let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        Backoff {
            threshold: c.failure_threshold.max(1),
            base_ms: ms(c.cooldown_secs),
            max_ms: ms(c.max_cooldown_secs.max(c.cooldown_secs)),
        }
    }
}

impl Backoff {
    /// The cooldown after the `n`th cooldown since the last success (n ≥ 1).
    fn cooldown_ms(&self, n: u32) -> i64 {
        let doubled = self.base_ms.saturating_mul(
            1i64.checked_shl(n.saturating_sub(1).min(62))
                .unwrap_or(i64::MAX),
        );
        doubled.min(self.max_ms)
    }
}

/// One account's health since its last success.
#[derive(Clone, Copy, Debug, Default)]
struct State {
    failures: u32,
    /// Cooldowns since the last success: 0 until the threshold is reached, then every
    /// failure is a relapse.
    cooldowns: u32,
    /// End of the current (or last) cooldown, Unix ms.
    until: i64,
    auth_failed: bool,
}

/// In-process health of each account, on the gateway's clock (so tests move time instead of
/// sleeping). Per instance: each instance learns from its own attempts.
pub struct Health {
    clock: Clock,
    accounts: Mutex<HashMap<i64, State>>,
}

impl Health {
    pub fn new(clock: Clock) -> Health {
        Health {
            clock,
            accounts: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<i64, State>) -> T) -> T {
        f(&mut self.accounts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn get(&self, id: i64) -> State {
        self.with(|m| m.get(&id).copied().unwrap_or_default())
    }

    pub fn cooling(&self, id: i64) -> bool {
        self.get(id).until > self.clock.now_ms()
    }

    /// When the account's cooldown ends (Unix ms), if it is cooling down.
    pub fn cooling_until(&self, id: i64) -> Option<i64> {
        let until = self.get(id).until;
        (until > self.clock.now_ms()).then_some(until)
    }

    pub fn auth_failed(&self, id: i64) -> bool {
        self.get(id).auth_failed
    }

    /// A failed attempt: counts towards the threshold; once an account has cooled down, a
    /// failure after its cooldown ended (before any success) is a relapse and doubles it. A
    /// failure while still cooling (a request admitted before, or the probe sent when every
    /// account cools) restarts the current cooldown.
    pub fn failed(&self, id: i64, b: &Backoff) {
        let now = self.clock.now_ms();
        self.with(|m| {
            let s = m.entry(id).or_default();
            s.failures = s.failures.saturating_add(1);
            if s.cooldowns > 0 && s.until > now {
                s.until = s.until.max(now.saturating_add(b.cooldown_ms(s.cooldowns)));
            } else if s.cooldowns > 0 || s.failures >= b.threshold {
                s.cooldowns = s.cooldowns.saturating_add(1);
                s.until = now.saturating_add(b.cooldown_ms(s.cooldowns));
            }
        })
    }

    /// Upstream refused the account's secret: out of rotation until [`Health::reset`].
    pub fn refused(&self, id: i64) {
        self.with(|m| {
            let s = m.entry(id).or_default();
            s.failures = s.failures.saturating_add(1);
            s.auth_failed = true;
        })
    }

    /// A success, or an administrator's edit: failures, backoff and `auth_failed` are gone.
    pub fn reset(&self, id: i64) {
        self.with(|m| m.remove(&id));
    }

    /// Seconds of cooldown left, for display.
    pub fn cooldown_left(&self, id: i64) -> Option<u64> {
        let left = self.cooling_until(id)? - self.clock.now_ms();
        Some(left as u64 / 1000 + 1)
    }

    /// Consecutive failed attempts since the last success.
    pub fn failures(&self, id: i64) -> u32 {
        self.get(id).failures
    }

    /// Accounts cooling down now whose secret was not refused: the ones to probe. A refused
    /// secret waits for an administrator, not for a probe.
    pub fn to_probe(&self) -> Vec<i64> {
        let now = self.clock.now_ms();
        let mut ids: Vec<i64> = self.with(|m| {
            m.iter()
                .filter(|(_, s)| s.until > now && !s.auth_failed)
                .map(|(id, _)| *id)
                .collect()
        });
        ids.sort_unstable();
        ids
    }

    pub fn label(&self, id: i64) -> AccountHealth {
        if self.auth_failed(id) {
            AccountHealth::AuthFailed
        } else if self.cooling(id) {
            AccountHealth::CoolingDown
        } else {
            AccountHealth::Ok
        }
    }
}

/// Order candidates: by priority (larger first); inside one priority, a weighted random
/// permutation (Efraimidis–Spirakis: sort by u^(1/w) descending), so the first pick of a
/// priority follows the weights and later picks are the fallbacks.
pub fn order<'a>(accounts: Vec<&'a Account>, rng: &mut impl Rng) -> Vec<&'a Account> {
    if accounts.len() < 2 {
        return accounts;
    }
    let mut keyed: Vec<(i64, f64, &Account)> = accounts
        .into_iter()
        .map(|a| {
            let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            let k = u.powf(1.0 / a.weight.max(1) as f64);
            (a.priority, k, a)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
    keyed.into_iter().map(|(_, _, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn acc(id: i64, priority: i64, weight: i64) -> Account {
        Account {
            id,
            name: format!("a{id}"),
            provider: crate::domain::Provider::OpenAi,
            base_url: "http://x".into(),
            secret: Default::default(),
            models: None,
            model_map: Default::default(),
            priority,
            weight,
            status: crate::domain::AccountStatus::Active,
            total_cost: 0,
            request_count: 0,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            last_error: None,
            last_error_at: None,
            last_used_at: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn higher_priority_always_first_and_weights_hold() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut first = HashMap::default();
        let accs = [acc(1, 0, 1), acc(2, 0, 3), acc(3, 5, 1)];
        for _ in 0..10_000 {
            let o = order(accs.iter().collect(), &mut rng);
            assert_eq!(o[0].id, 3);
            *first.entry(o[1].id).or_insert(0) += 1;
        }
        // weight 3 vs 1 → 75 % ± 2 %
        let share = first[&2] as f64 / 10_000.0;
        assert!((0.73..0.77).contains(&share), "share {share}");
    }

    fn backoff(threshold: u32) -> Backoff {
        Backoff {
            threshold,
            base_ms: 1000,
            max_ms: 5000,
        }
    }

    fn at(clock: &Clock, t0: chrono::DateTime<chrono::Utc>, ms: i64) {
        clock.set(t0 + chrono::Duration::milliseconds(ms));
    }

    #[test]
    fn cooldown_expires() {
        let t0 = chrono::DateTime::from_timestamp(1_000_000, 0).unwrap();
        let clock = Clock::manual(t0);
        let h = Health::new(clock.clone());
        let b = Backoff {
            threshold: 1,
            base_ms: 1500,
            max_ms: 1500,
        };
        h.failed(1, &b);
        assert!(h.cooling(1));
        assert!(!h.cooling(2));
        assert_eq!(h.cooldown_left(1), Some(2));
        at(&clock, t0, 1499);
        assert!(h.cooling(1));
        assert_eq!(h.cooldown_left(1), Some(1));
        at(&clock, t0, 1500);
        assert!(!h.cooling(1));
        assert_eq!(h.cooldown_left(1), None);
    }

    #[test]
    fn an_account_cools_down_after_the_threshold_only() {
        let t0 = chrono::DateTime::from_timestamp(1_000_000, 0).unwrap();
        let clock = Clock::manual(t0);
        let h = Health::new(clock.clone());
        let b = backoff(3);
        h.failed(1, &b);
        h.failed(1, &b);
        assert!(!h.cooling(1));
        assert_eq!(h.label(1), AccountHealth::Ok);
        assert_eq!(h.failures(1), 2);
        // A success resets the count: two more failures still do not take it out.
        h.reset(1);
        h.failed(1, &b);
        h.failed(1, &b);
        assert!(!h.cooling(1));
        h.failed(1, &b);
        assert!(h.cooling(1));
        assert_eq!(h.label(1), AccountHealth::CoolingDown);
        assert_eq!(h.failures(1), 3);
        assert_eq!(h.cooling_until(1), Some(t0.timestamp_millis() + 1000));
    }

    #[test]
    fn each_relapse_doubles_the_cooldown_up_to_the_longest_and_a_success_resets() {
        let t0 = chrono::DateTime::from_timestamp(1_000_000, 0).unwrap();
        let clock = Clock::manual(t0);
        let h = Health::new(clock.clone());
        let b = backoff(2);
        h.failed(1, &b);
        h.failed(1, &b);
        let mut now = 0;
        // Relapses: one failure right after each cooldown ends → 2 s, 4 s, then 5 s (the cap).
        for want in [1000, 2000, 4000, 5000, 5000] {
            assert_eq!(h.cooling_until(1), Some(t0.timestamp_millis() + now + want));
            now += want;
            at(&clock, t0, now);
            assert!(!h.cooling(1));
            h.failed(1, &b);
        }
        // A failure while cooling restarts the current cooldown, without doubling it.
        at(&clock, t0, now + 100);
        h.failed(1, &b);
        assert_eq!(
            h.cooling_until(1),
            Some(t0.timestamp_millis() + now + 100 + 5000)
        );
        // A success: back to the threshold and the first cooldown.
        h.reset(1);
        assert!(!h.cooling(1));
        assert_eq!(h.failures(1), 0);
        h.failed(1, &b);
        assert!(!h.cooling(1));
        h.failed(1, &b);
        assert_eq!(
            h.cooling_until(1),
            Some(t0.timestamp_millis() + now + 100 + 1000)
        );
    }

    #[test]
    fn only_cooling_accounts_with_an_accepted_secret_are_probed() {
        let t0 = chrono::DateTime::from_timestamp(1_000_000, 0).unwrap();
        let clock = Clock::manual(t0);
        let h = Health::new(clock.clone());
        let b = backoff(1);
        h.failed(3, &b);
        h.failed(1, &b);
        h.refused(2);
        // Failing but under the threshold: not cooling, not probed.
        h.failed(4, &backoff(3));
        assert_eq!(h.to_probe(), [1, 3]);
        // A cooldown that ended by time needs no probe.
        at(&clock, t0, 1000);
        assert!(h.to_probe().is_empty());
    }

    #[test]
    fn a_refused_secret_stays_until_reset() {
        let t0 = chrono::DateTime::from_timestamp(1_000_000, 0).unwrap();
        let clock = Clock::manual(t0);
        let h = Health::new(clock.clone());
        h.refused(1);
        assert_eq!(h.label(1), AccountHealth::AuthFailed);
        at(&clock, t0, 3_600_000);
        assert!(h.auth_failed(1));
        h.reset(1);
        assert_eq!(h.label(1), AccountHealth::Ok);
    }
}
