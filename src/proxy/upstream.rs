//! Upstream choice: active accounts of the right provider that serve the model, highest
//! priority first, weighted random inside a priority, accounts cooling down after a failure
//! left out until their cooldown ends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use crate::clock::Clock;
use crate::store::accounts::Account;

/// In-process health: which accounts are cooling down, until when (on the gateway's clock, so
/// tests move time instead of sleeping).
pub struct Health {
    clock: Clock,
    /// Account id → end of its cooldown, Unix ms.
    until: Mutex<HashMap<i64, i64>>,
}

impl Health {
    pub fn new(clock: Clock) -> Health {
        Health {
            clock,
            until: Mutex::default(),
        }
    }

    pub fn cooling(&self, id: i64) -> bool {
        let m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&id).is_some_and(|t| *t > self.clock.now_ms())
    }

    pub fn cool_down(&self, id: i64, d: Duration) {
        let mut m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        m.insert(id, self.clock.now_ms().saturating_add(ms));
    }

    pub fn recovered(&self, id: i64) {
        let mut m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&id);
    }

    /// Seconds of cooldown left, for display.
    pub fn cooldown_left(&self, id: i64) -> Option<u64> {
        let m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let left = m.get(&id)? - self.clock.now_ms();
        (left > 0).then(|| left as u64 / 1000 + 1)
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
        let mut first = HashMap::new();
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

    #[test]
    fn cooldown_expires() {
        let t0 = chrono::DateTime::from_timestamp(1_000_000, 0).unwrap();
        let clock = Clock::manual(t0);
        let h = Health::new(clock.clone());
        h.cool_down(1, Duration::from_millis(1500));
        assert!(h.cooling(1));
        assert!(!h.cooling(2));
        assert_eq!(h.cooldown_left(1), Some(2));
        clock.set(t0 + chrono::Duration::milliseconds(1499));
        assert!(h.cooling(1));
        assert_eq!(h.cooldown_left(1), Some(1));
        clock.set(t0 + chrono::Duration::milliseconds(1500));
        assert!(!h.cooling(1));
        assert_eq!(h.cooldown_left(1), None);
    }
}
