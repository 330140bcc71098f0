//! The cost function: the one place that turns token counts and a price into money.
//!
//! Token classes are disjoint (SPEC §10): `input` is the uncached input only, `cache_read` the
//! cached input, `cache_write` the cache writes, `output` the output. Protocol adapters convert
//! what a provider reports into these classes (OpenAI's `prompt_tokens` include the cached ones;
//! Anthropic's buckets are already separate). Prices are USD per 1M tokens, stored as nano-dollars
//! per 1M tokens. Cost = Σ class × price / 1,000,000, computed exactly in `Decimal`, then rounded
//! once per request to whole nano-dollars, half to even (banker's rounding).

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use super::money::{Usd, NANOS_SCALE};

/// Token counts in the four disjoint classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Tokens {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
}

impl Tokens {
    pub fn total(&self) -> i64 {
        self.input
            .saturating_add(self.output)
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }
}

/// A model's price per 1M tokens, in nano-dollars. A missing cache price is charged at the
/// input price (the conservative choice when an admin has not set one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub input: i64,
    pub output: i64,
    pub cache_read: Option<i64>,
    pub cache_write: Option<i64>,
}

/// Cost of one request: the rounded total (what is charged) and the exact parts (informative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub total: Usd,
    pub input: Decimal,
    pub output: Decimal,
    pub cache_read: Decimal,
    pub cache_write: Decimal,
}

/// The cost function. None when the cost does not fit (a price or a count so large that the
/// money overflows): such a cost is never clamped, the caller disputes it.
pub fn checked_cost(tokens: &Tokens, price: &Price) -> Option<Cost> {
    small_cost(tokens, price).unwrap_or_else(|| decimal_cost(tokens, price))
}

/// Counts below 2^40 and prices below 2^50 nano-dollars per 1M tokens (1.1M USD): every
/// product is below 2^90 and the sum below 2^92, inside `Decimal`'s 96 bits, so the exact
/// parts and their sum are integers in units of 10^-15 USD and integer arithmetic gives
/// `decimal_cost`'s result exactly (a property test checks), at a tenth of its instructions:
/// it runs two to four times a request (admission estimate, learning, the charge).
const SMALL_COUNT: u64 = 1 << 40;
const SMALL_PRICE: u64 = 1 << 50;

/// The cost of small counts at small prices (see [`SMALL_COUNT`]); None: not small, ask
/// [`decimal_cost`]. Some(None): the total does not fit.
fn small_cost(tokens: &Tokens, price: &Price) -> Option<Option<Cost>> {
    /// Parts are in 10^-15 USD: nano-dollars per 1M tokens times tokens.
    const PART_SCALE: u32 = NANOS_SCALE + 6;
    let part = |n: i64, p: i64| -> Option<i128> {
        (n.unsigned_abs() < SMALL_COUNT && p.unsigned_abs() < SMALL_PRICE)
            .then(|| i128::from(n) * i128::from(p))
    };
    let input = part(tokens.input, price.input)?;
    let output = part(tokens.output, price.output)?;
    let cache_read = part(tokens.cache_read, price.cache_read.unwrap_or(price.input))?;
    let cache_write = part(tokens.cache_write, price.cache_write.unwrap_or(price.input))?;
    let exact = input + output + cache_read + cache_write;
    // Round to whole nano-dollars (10^6 parts), half to even, symmetric about zero as
    // `MidpointNearestEven` is.
    let (mut q, r) = (
        exact.unsigned_abs() / 1_000_000,
        exact.unsigned_abs() % 1_000_000,
    );
    if r > 500_000 || (r == 500_000 && q % 2 == 1) {
        q += 1;
    }
    let total = i64::try_from(q)
        .ok()
        .map(|q| if exact < 0 { -q } else { q });
    let d = |v: i128| Decimal::from_i128_with_scale(v, PART_SCALE);
    Some(total.map(|t| Cost {
        total: Usd(t),
        input: d(input),
        output: d(output),
        cache_read: d(cache_read),
        cache_write: d(cache_write),
    }))
}

/// The cost function in `Decimal`, for any counts and prices.
fn decimal_cost(tokens: &Tokens, price: &Price) -> Option<Cost> {
    let part = |n: i64, per_million_nanos: i64| -> Option<Decimal> {
        // nanos per 1M tokens → USD per token: / 1e9 / 1e6.
        Decimal::from(n)
            .checked_mul(Decimal::new(per_million_nanos, NANOS_SCALE))?
            .checked_div(Decimal::from(1_000_000))
    };
    let input = part(tokens.input, price.input)?;
    let output = part(tokens.output, price.output)?;
    let cache_read = part(tokens.cache_read, price.cache_read.unwrap_or(price.input))?;
    let cache_write = part(tokens.cache_write, price.cache_write.unwrap_or(price.input))?;
    let exact = input
        .checked_add(output)?
        .checked_add(cache_read)?
        .checked_add(cache_write)?;
    let rounded = exact.round_dp_with_strategy(NANOS_SCALE, RoundingStrategy::MidpointNearestEven);
    Some(Cost {
        total: Usd::from_decimal(rounded)?,
        input,
        output,
        cache_read,
        cache_write,
    })
}

/// The cost of bounded counts (estimates, whose token counts the gateway chose): as
/// [`checked_cost`], saturating at the largest amount when even those do not fit.
pub fn cost(tokens: &Tokens, price: &Price) -> Cost {
    checked_cost(tokens, price).unwrap_or(Cost {
        total: Usd(i64::MAX),
        input: Decimal::ZERO,
        output: Decimal::ZERO,
        cache_read: Decimal::ZERO,
        cache_write: Decimal::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count or price: small, near the small path's bounds, or anything.
    fn amount(bound: u64) -> impl proptest::strategy::Strategy<Value = i64> {
        use proptest::prelude::*;
        let b = bound as i64;
        prop_oneof![
            6 => -1_000i64..2_000_000,
            // Midpoints: a multiple of half a nano-dollar per token.
            2 => (-2_000i64..2_000).prop_map(|k| k * 500_000),
            2 => (b - 1_000)..(b + 1_000),
            2 => (-b - 1_000)..(-b + 1_000),
            1 => proptest::num::i64::ANY,
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4_000))]
        /// The integer path is the Decimal path, exactly: total (or None) and every part.
        #[test]
        fn small_costs_are_the_decimal_costs(
            t in [amount(SMALL_COUNT), amount(SMALL_COUNT), amount(SMALL_COUNT), amount(SMALL_COUNT)],
            p in [amount(SMALL_PRICE), amount(SMALL_PRICE)],
            cache in [proptest::option::of(amount(SMALL_PRICE)), proptest::option::of(amount(SMALL_PRICE))],
        ) {
            let tokens = Tokens { input: t[0], output: t[1], cache_read: t[2], cache_write: t[3] };
            let price = Price { input: p[0], output: p[1], cache_read: cache[0], cache_write: cache[1] };
            let slow = decimal_cost(&tokens, &price);
            match small_cost(&tokens, &price) {
                None => proptest::prop_assert!(
                    [t[0], t[1], t[2], t[3]].iter().any(|n| n.unsigned_abs() >= SMALL_COUNT)
                        || [Some(p[0]), Some(p[1]), cache[0], cache[1]].iter().flatten()
                            .any(|v| v.unsigned_abs() >= SMALL_PRICE)
                ),
                Some(fast) => {
                    proptest::prop_assert_eq!(fast.map(|c| c.total), slow.map(|c| c.total));
                    if let (Some(f), Some(s)) = (fast, slow) {
                        proptest::prop_assert_eq!(
                            [f.input, f.output, f.cache_read, f.cache_write],
                            [s.input, s.output, s.cache_read, s.cache_write]
                        );
                    }
                }
            }
        }
    }

    /// Midpoints round to even on both sides of zero, on the integer path.
    #[test]
    fn small_costs_round_half_to_even_about_zero() {
        let price = |input| Price {
            input,
            output: 0,
            cache_read: None,
            cache_write: None,
        };
        let total = |n: i64, p: i64| {
            let t = Tokens {
                input: n,
                ..Tokens::default()
            };
            let c = small_cost(&t, &price(p)).expect("small").expect("fits");
            assert_eq!(Some(c), decimal_cost(&t, &price(p)));
            c.total.nanos()
        };
        // 1 token at 0.5, 1.5, 2.5 nano-dollars: 0, 2, 2; and the negatives.
        assert_eq!(
            [total(1, 500_000), total(1, 1_500_000), total(1, 2_500_000)],
            [0, 2, 2]
        );
        assert_eq!(
            [
                total(-1, 500_000),
                total(-1, 1_500_000),
                total(-1, 2_500_000)
            ],
            [0, -2, -2]
        );
        assert_eq!(total(3, 500_001), 2, "1.500003 rounds up");
    }

    fn usd(s: &str) -> i64 {
        s.parse::<Usd>().unwrap().nanos()
    }

    #[test]
    fn openai_cached_tokens_are_charged_at_cache_read() {
        // gpt-4o-like: $2.50 input, $10 output, $1.25 cached input per 1M.
        // prompt_tokens 1000 of which 400 cached → 600 uncached; 200 output.
        let price = Price {
            input: usd("2.5"),
            output: usd("10"),
            cache_read: Some(usd("1.25")),
            cache_write: None,
        };
        let t = Tokens {
            input: 600,
            output: 200,
            cache_read: 400,
            cache_write: 0,
        };
        // 600×2.5/1e6 = 0.0015; 200×10/1e6 = 0.002; 400×1.25/1e6 = 0.0005 → 0.004
        let c = cost(&t, &price);
        assert_eq!(c.total, Usd(4_000_000));
        assert_eq!(c.input.normalize().to_string(), "0.0015");
        assert_eq!(c.cache_read.normalize().to_string(), "0.0005");
    }

    #[test]
    fn anthropic_buckets_are_separate() {
        // claude-sonnet-like: $3 input, $15 output, $0.30 cache read, $3.75 cache write.
        let price = Price {
            input: usd("3"),
            output: usd("15"),
            cache_read: Some(usd("0.3")),
            cache_write: Some(usd("3.75")),
        };
        let t = Tokens {
            input: 12,
            output: 8,
            cache_read: 100,
            cache_write: 50,
        };
        // 12×3 = 36; 8×15 = 120; 100×0.3 = 30; 50×3.75 = 187.5 → 373.5 / 1e6 = 0.0003735
        assert_eq!(cost(&t, &price).total, Usd(373_500));
    }

    #[test]
    fn missing_cache_prices_fall_back_to_input() {
        let price = Price {
            input: usd("1"),
            output: usd("2"),
            cache_read: None,
            cache_write: None,
        };
        let t = Tokens {
            input: 1,
            output: 1,
            cache_read: 1,
            cache_write: 1,
        };
        // (1 + 2 + 1 + 1) / 1e6 = 0.000005
        assert_eq!(cost(&t, &price).total, Usd(5_000));
    }

    #[test]
    fn rounds_once_half_to_even() {
        // $0.0005 per 1M tokens → 1 token costs 0.0000000005 = half a nano-dollar → 0 (even).
        let p = Price {
            input: usd("0.0005"),
            output: usd("0.0015"),
            cache_read: None,
            cache_write: None,
        };
        let one_in = Tokens {
            input: 1,
            ..Tokens::default()
        };
        assert_eq!(cost(&one_in, &p).total, Usd(0));
        // 3 input tokens = 1.5 nano → 2 (even).
        let three_in = Tokens {
            input: 3,
            ..Tokens::default()
        };
        assert_eq!(cost(&three_in, &p).total, Usd(2));
        // 1 input + 1 output = 0.5 + 1.5 = 2.0 nano: rounding once gives 2, rounding each part
        // separately would give 0 + 2 = 2 too; 1 in + 3 in... use 1 output alone: 1.5 → 2.
        let one_out = Tokens {
            output: 1,
            ..Tokens::default()
        };
        assert_eq!(cost(&one_out, &p).total, Usd(2));
        // Rounded once over the sum: 1 input (0.5) + 1 cache_read at input price (0.5) = 1.0 → 1,
        // where per-part rounding would give 0 + 0 = 0.
        let two_halves = Tokens {
            input: 1,
            cache_read: 1,
            ..Tokens::default()
        };
        assert_eq!(cost(&two_halves, &p).total, Usd(1));
    }

    #[test]
    fn a_cost_that_does_not_fit_is_none_never_clamped() {
        let price = Price {
            input: usd("2.5"),
            output: usd("10"),
            cache_read: None,
            cache_write: None,
        };
        // i64::MAX tokens at $2.50 per 1M: ~2.3e13 USD, far beyond i64 nano-dollars.
        let huge = Tokens {
            input: i64::MAX,
            ..Tokens::default()
        };
        assert_eq!(checked_cost(&huge, &price), None);
        // A Decimal overflow (count × a price with many digits) is None too, not a panic.
        let dear = Price {
            input: i64::MAX,
            output: i64::MAX,
            cache_read: None,
            cache_write: None,
        };
        let all = Tokens {
            input: i64::MAX,
            output: i64::MAX,
            cache_read: i64::MAX,
            cache_write: i64::MAX,
        };
        assert_eq!(checked_cost(&all, &dear), None);
        // The sum of parts that each fit can overflow: None.
        let max_part = Tokens {
            input: 1_000_000,
            output: 1_000_000,
            ..Tokens::default()
        };
        let edge = Price {
            input: i64::MAX / 2 + 1,
            output: i64::MAX / 2 + 1,
            cache_read: None,
            cache_write: None,
        };
        assert_eq!(checked_cost(&max_part, &edge), None);
        // The largest cost that fits is exact.
        let one_million = Tokens {
            input: 1_000_000,
            ..Tokens::default()
        };
        let top = Price {
            input: i64::MAX,
            output: 0,
            cache_read: None,
            cache_write: None,
        };
        assert_eq!(
            checked_cost(&one_million, &top).map(|c| c.total),
            Some(Usd(i64::MAX))
        );
        // Ten million tokens (the default plausibility limit) at $2.50 per 1M: exact.
        let ten_million = Tokens {
            input: 10_000_000,
            ..Tokens::default()
        };
        assert_eq!(
            checked_cost(&ten_million, &price).map(|c| c.total),
            Some(Usd(25_000_000_000))
        );
    }
}
