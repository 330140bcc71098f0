//! Estimates, where upstream has not (yet) said what a request used: ~4 bytes a token.
//!
//! The admission estimate is what a request is expected to cost, reserved against its package
//! when it is admitted (until its real cost replaces it); the usage estimate is what a request
//! is charged when upstream answered but reported no usage.

use super::cost::{cost, Price, Tokens};

/// Bytes of JSON per token, roughly.
const BYTES_PER_TOKEN: usize = 4;
/// Output tokens assumed when the request sets no output limit.
const DEFAULT_MAX_OUTPUT: i64 = 256;
/// The largest output limit believed.
const MAX_OUTPUT_CAP: i64 = 1_000_000;

/// Usage guessed from the bytes of the request and of the answer's content.
pub fn usage_estimate(request_bytes: usize, output_bytes: usize) -> Tokens {
    Tokens {
        input: (request_bytes / BYTES_PER_TOKEN) as i64,
        output: (output_bytes / BYTES_PER_TOKEN) as i64,
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
}
