//! Estimates, where upstream has not (yet) said what a request used.
//!
//! The admission estimate is what a request is expected to cost, reserved against its package
//! when it is admitted (until its real cost replaces it): learned from what the same key's
//! recent requests of the model cost ([`Learner`]), else from any key's recent requests of the
//! model, else from the request's size and output limit ([`admission_estimate`], ~4 bytes a
//! token). The usage estimate is what a request is charged when upstream answered but reported
//! no usage.

use foldhash::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use super::cost::{cost, Price, Tokens};

/// Bytes of JSON per token, roughly.
const BYTES_PER_TOKEN: usize = 4;
/// Output tokens assumed when the request sets no output limit.
const DEFAULT_MAX_OUTPUT: i64 = 256;
/// The largest output limit believed.
const MAX_OUTPUT_CAP: i64 = 1_000_000;

/// Usage guessed from the bytes of the request and the characters of the answer's text
/// (about four of either a token).
pub fn usage_estimate(request_bytes: usize, output_chars: usize) -> Tokens {
    Tokens {
        input: (request_bytes / BYTES_PER_TOKEN) as i64,
        output: (output_chars / BYTES_PER_TOKEN) as i64,
        cache_read: 0,
        cache_write: 0,
    }
}

/// The admission estimate (nano-dollars): the request's bytes as input, and its output limit
/// (`max_output_tokens`: the first of the request's `max_tokens`, `max_completion_tokens`,
/// `max_output_tokens` that is an integer) as output, clamped to `0..=1,000,000`.
pub fn admission_estimate(
    request_bytes: usize,
    max_output_tokens: Option<i64>,
    price: &Price,
) -> i64 {
    let t = Tokens {
        input: (request_bytes / BYTES_PER_TOKEN) as i64,
        output: max_output_tokens
            .unwrap_or(DEFAULT_MAX_OUTPUT)
            .clamp(0, MAX_OUTPUT_CAP),
        cache_read: 0,
        cache_write: 0,
    };
    cost(&t, price).total.nanos()
}

/// Samples kept per (key, model) and per model: the last few dozen requests.
const SAMPLES: usize = 32;
/// Fewer samples than this are not believed (the next level down answers).
const MIN_SAMPLES: usize = 4;
/// (key, model) pairs remembered; past it the least recently used eighth is forgotten.
const MAX_PAIRS: usize = 8_192;
/// Models remembered (any key), same eviction.
const MAX_MODELS: usize = 1_024;

/// What recent requests actually cost, per (key, model) and per model, in this process.
///
/// The estimate is the 90th percentile of the last [`SAMPLES`] costs (with 20 samples, the
/// third highest), so one request in ten may cost more than was reserved for it. It is capped
/// by what the request's output limit allows: the larger of its bytes' and the learned input
/// cost (p90 of the samples' input side), plus its `max_tokens` of output. A request without an
/// output limit has no cap (its 256 assumed output tokens are a guess, not a bound).
#[derive(Default)]
pub struct Learner {
    inner: Mutex<LearnerInner>,
}

#[derive(Default)]
struct LearnerInner {
    pairs: HashMap<(i64, u64), Ring>,
    models: HashMap<u64, Ring>,
    tick: u64,
}

/// The last [`SAMPLES`] (cost, input cost) of requests, nano-dollars.
struct Ring {
    cost: [i64; SAMPLES],
    input: [i64; SAMPLES],
    len: usize,
    next: usize,
    /// `LearnerInner::tick` when last used, for eviction.
    used: u64,
}

impl Ring {
    fn new(tick: u64) -> Ring {
        Ring {
            cost: [0; SAMPLES],
            input: [0; SAMPLES],
            len: 0,
            next: 0,
            used: tick,
        }
    }

    fn push(&mut self, cost: i64, input: i64) {
        self.cost[self.next] = cost;
        self.input[self.next] = input;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
    }

    /// (p90 of costs, p90 of input costs), when there are enough samples.
    fn p90(&self) -> Option<(i64, i64)> {
        (self.len >= MIN_SAMPLES)
            .then(|| (p90(&self.cost[..self.len]), p90(&self.input[..self.len])))
    }
}

/// The 90th percentile (nearest rank) of a few values.
fn p90(values: &[i64]) -> i64 {
    let mut v = [0i64; SAMPLES];
    let v = &mut v[..values.len()];
    v.copy_from_slice(values);
    v.sort_unstable();
    v[(values.len() * 9).div_ceil(10) - 1]
}

/// A model's key in the learner's maps: foldhash with a fixed seed, as the maps themselves
/// use (SipHash's flooding resistance buys nothing for names that must be priced to be here).
fn model_hash(model: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x746f_6c6c_6761_7465).hash_one(model)
}

/// Forget the least recently used eighth of `map` when it is full.
fn make_room<K: Copy + Eq + Hash>(map: &mut HashMap<K, Ring>, max: usize) {
    if map.len() < max {
        return;
    }
    let mut ticks: Vec<u64> = map.values().map(|r| r.used).collect();
    let cut = max / 8;
    let (_, &mut threshold, _) = ticks.select_nth_unstable(cut);
    map.retain(|_, r| r.used > threshold);
}

impl Learner {
    fn lock(&self) -> std::sync::MutexGuard<'_, LearnerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The admission estimate of a request of `key_id` for `model` (nano-dollars).
    pub fn estimate(
        &self,
        key_id: i64,
        model: &str,
        request_bytes: usize,
        max_output_tokens: Option<i64>,
        price: &Price,
    ) -> i64 {
        let m = model_hash(model);
        let learned = {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            let own = inner.pairs.get_mut(&(key_id, m)).and_then(|r| {
                r.used = tick;
                r.p90()
            });
            own.or_else(|| {
                inner.models.get_mut(&m).and_then(|r| {
                    r.used = tick;
                    r.p90()
                })
            })
        };
        let formula = admission_estimate(request_bytes, max_output_tokens, price);
        let Some((p_cost, p_input)) = learned else {
            return formula;
        };
        match max_output_tokens {
            None => p_cost,
            Some(_) => {
                let bytes_in = admission_estimate(request_bytes, Some(0), price);
                let output = formula - bytes_in;
                p_cost.min(bytes_in.max(p_input).saturating_add(output))
            }
        }
    }

    /// A request of `key_id` for `model` finished with these tokens, charged `total` (nano-
    /// dollars) at `price`.
    pub fn learn(&self, key_id: i64, model: &str, tokens: &Tokens, total: i64, price: &Price) {
        let input = cost(
            &Tokens {
                output: 0,
                ..*tokens
            },
            price,
        )
        .total
        .nanos();
        let m = model_hash(model);
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if !inner.pairs.contains_key(&(key_id, m)) {
            make_room(&mut inner.pairs, MAX_PAIRS);
        }
        let r = inner
            .pairs
            .entry((key_id, m))
            .or_insert_with(|| Ring::new(tick));
        r.push(total, input);
        r.used = tick;
        if !inner.models.contains_key(&m) {
            make_room(&mut inner.models, MAX_MODELS);
        }
        let r = inner.models.entry(m).or_insert_with(|| Ring::new(tick));
        r.push(total, input);
        r.used = tick;
    }

    /// (key, model) pairs and models remembered.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.pairs.len(), inner.models.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// $1 in, $2 out per 1M tokens.
    const PRICE: Price = Price {
        input: 1_000_000_000,
        output: 2_000_000_000,
        cache_read: None,
        cache_write: None,
    };

    #[test]
    fn admission_estimate_counts_bytes_in_and_the_output_limit_out() {
        // 400 bytes → 100 input tokens ($0.0001); 50 output tokens ($0.0001).
        assert_eq!(admission_estimate(400, Some(50), &PRICE), 200_000);
        // Partial tokens are dropped: 403 bytes are still 100 tokens.
        assert_eq!(admission_estimate(403, Some(50), &PRICE), 200_000);
        // No limit: 256 output tokens.
        assert_eq!(admission_estimate(0, None, &PRICE), 512_000);
        // Limits are clamped to 0..=1,000,000.
        assert_eq!(admission_estimate(0, Some(-5), &PRICE), 0);
        assert_eq!(admission_estimate(0, Some(i64::MAX), &PRICE), 2_000_000_000);
    }

    #[test]
    fn usage_estimate_is_four_bytes_a_token() {
        assert_eq!(
            usage_estimate(41, 9),
            Tokens {
                input: 10,
                output: 2,
                cache_read: 0,
                cache_write: 0
            }
        );
    }

    /// A request of 100 input tokens and `output` output tokens.
    fn learn(l: &Learner, key: i64, model: &str, output: i64) {
        let t = Tokens {
            input: 100,
            output,
            cache_read: 0,
            cache_write: 0,
        };
        l.learn(key, model, &t, cost(&t, &PRICE).total.nanos(), &PRICE);
    }

    #[test]
    fn p90_is_the_nearest_rank() {
        let v: Vec<i64> = (1..=20).collect();
        assert_eq!(p90(&v), 18);
        assert_eq!(p90(&[5, 1, 3, 2]), 5);
        let v: Vec<i64> = (1..=32).rev().collect();
        assert_eq!(p90(&v), 29);
    }

    #[test]
    fn cold_start_is_the_formula_then_the_model_then_the_key() {
        let l = Learner::default();
        let formula = admission_estimate(400, Some(64_000), &PRICE);
        assert_eq!(l.estimate(1, "m", 400, Some(64_000), &PRICE), formula);
        // Three samples are not believed yet.
        for _ in 0..3 {
            learn(&l, 2, "m", 50);
        }
        assert_eq!(l.estimate(1, "m", 400, Some(64_000), &PRICE), formula);
        learn(&l, 2, "m", 50);
        // Key 1's first request of `m`: what any key's requests of `m` cost.
        assert_eq!(l.estimate(1, "m", 400, Some(64_000), &PRICE), 200_000);
        for _ in 0..4 {
            learn(&l, 1, "m", 150);
        }
        // Key 1's own figure once it has one; key 2 keeps its own.
        assert_eq!(l.estimate(1, "m", 400, Some(64_000), &PRICE), 400_000);
        assert_eq!(l.estimate(2, "m", 400, Some(64_000), &PRICE), 200_000);
        // Another model (a model switch): that model's figure, here none yet.
        assert_eq!(l.estimate(1, "other", 400, Some(64_000), &PRICE), formula);
    }

    #[test]
    fn the_estimate_is_a_high_percentile_of_the_last_samples() {
        let l = Learner::default();
        // 18 cheap requests and 2 expensive ones: p90 of 20 is the 18th, a cheap one.
        for i in 0..20 {
            learn(&l, 1, "m", if i % 10 == 3 { 10_000 } else { 50 });
        }
        assert_eq!(l.estimate(1, "m", 400, Some(64_000), &PRICE), 200_000);
        // A third expensive one is in the top tenth.
        learn(&l, 1, "m", 10_000);
        assert_eq!(l.estimate(1, "m", 400, Some(64_000), &PRICE), 20_100_000);
        // Only the last 32 count: 32 cheap ones push the expensive ones out.
        for _ in 0..32 {
            learn(&l, 1, "m", 50);
        }
        assert_eq!(l.estimate(1, "m", 400, Some(64_000), &PRICE), 200_000);
    }

    #[test]
    fn the_output_limit_caps_the_estimate_but_not_the_learned_input() {
        let l = Learner::default();
        for _ in 0..8 {
            learn(&l, 1, "m", 1_000);
        }
        // Learned: 100 in + 1000 out = $0.0021. max_tokens 10 allows 100 in + 10 out.
        assert_eq!(l.estimate(1, "m", 0, Some(10), &PRICE), 120_000);
        assert_eq!(l.estimate(1, "m", 0, Some(64_000), &PRICE), 2_100_000);
        // No output limit: the learned figure as it is.
        assert_eq!(l.estimate(1, "m", 0, None, &PRICE), 2_100_000);
        // The body's bytes count when they say more than the learned input.
        assert_eq!(l.estimate(1, "m", 4_000, Some(10), &PRICE), 1_020_000);
    }

    #[test]
    fn memory_is_bounded_least_recently_used_first() {
        let l = Learner::default();
        for key in 0..(MAX_PAIRS as i64 + 10) {
            learn(&l, key, "m", 1);
            if key == 0 {
                continue;
            }
            // Key 0 stays in use.
            let _ = l.estimate(0, "m", 0, None, &PRICE);
        }
        let (pairs, models) = l.sizes();
        assert!(pairs <= MAX_PAIRS, "{pairs}");
        assert!(pairs > MAX_PAIRS / 2, "{pairs}");
        assert_eq!(models, 1);
        assert!(l.lock().pairs.contains_key(&(0, model_hash("m"))));
        assert!(!l.lock().pairs.contains_key(&(1, model_hash("m"))));
    }
}
