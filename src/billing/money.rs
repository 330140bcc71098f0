//! Money: integer nano-dollars (1e-9 USD) in storage and arithmetic, `Decimal` in the domain,
//! decimal strings in JSON (`"1.250000000"`).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const NANOS_SCALE: u32 = 9;

/// An amount of USD in nano-dollars. Serialises as a decimal string with 9 places; accepts a
/// decimal string or a plain JSON number, exact to the nano-dollar (more places is an error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(pub i64);

impl Usd {
    pub fn nanos(self) -> i64 {
        self.0
    }
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, NANOS_SCALE)
    }
    /// Exact conversion; `None` when `d` has sub-nano-dollar digits or is out of range.
    pub fn from_decimal(d: Decimal) -> Option<Usd> {
        let scaled = d.checked_mul(Decimal::from(1_000_000_000i64))?;
        if scaled.fract() != Decimal::ZERO {
            return None;
        }
        i64::try_from(scaled.trunc()).ok().map(Usd)
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_decimal())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("`{0}` is not a decimal amount of USD")]
    NotANumber(String),
    #[error("`{0}` has more than 9 decimal places (the smallest unit is one nano-dollar)")]
    TooPrecise(String),
}

impl FromStr for Usd {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Usd, MoneyError> {
        let t = s.trim();
        let d = Decimal::from_str_exact(t)
            .or_else(|_| Decimal::from_scientific(t))
            .map_err(|_| MoneyError::NotANumber(s.to_string()))?;
        Usd::from_decimal(d).ok_or_else(|| MoneyError::TooPrecise(s.to_string()))
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let s = match &v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "expected a decimal string or number, got {other}"
                )))
            }
        };
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nine_places() {
        assert_eq!(Usd(1_250_000_000).to_string(), "1.250000000");
        assert_eq!(Usd(-5).to_string(), "-0.000000005");
        assert_eq!(Usd(0).to_string(), "0.000000000");
        assert_eq!(serde_json::to_string(&Usd(42)).unwrap(), "\"0.000000042\"");
    }

    #[test]
    fn parses_strings_and_numbers_exactly() {
        assert_eq!("1.25".parse::<Usd>().unwrap(), Usd(1_250_000_000));
        assert_eq!("0.000000001".parse::<Usd>().unwrap(), Usd(1));
        assert_eq!(
            serde_json::from_str::<Usd>("2.5").unwrap(),
            Usd(2_500_000_000)
        );
        assert_eq!(
            serde_json::from_str::<Usd>("10").unwrap(),
            Usd(10_000_000_000)
        );
        assert_eq!(
            "0.0000000001".parse::<Usd>(),
            Err(MoneyError::TooPrecise("0.0000000001".into()))
        );
        assert!(matches!(
            "abc".parse::<Usd>(),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(serde_json::from_str::<Usd>("true").is_err());
    }

    proptest::proptest! {
        /// Nano-dollars → string → nano-dollars is the identity over all of `i64`, with
        /// always nine places, a leading `-` exactly for negative amounts, and the same string
        /// through JSON.
        #[test]
        fn formatting_round_trips_with_nine_places(n in proptest::num::i64::ANY) {
            let s = Usd(n).to_string();
            let (int, frac) = s.split_once('.').expect("a decimal point");
            proptest::prop_assert_eq!(frac.len(), 9, "{}", s);
            proptest::prop_assert!(frac.bytes().all(|b| b.is_ascii_digit()), "{}", s);
            proptest::prop_assert_eq!(s.starts_with('-'), n < 0, "{}", s);
            let digits = int.strip_prefix('-').unwrap_or(int);
            proptest::prop_assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{}", s);
            proptest::prop_assert_eq!(s.parse::<Usd>(), Ok(Usd(n)));
            let json = serde_json::to_string(&Usd(n)).unwrap();
            proptest::prop_assert_eq!(&json, &format!("\"{s}\""));
            proptest::prop_assert_eq!(serde_json::from_str::<Usd>(&json).unwrap(), Usd(n));
        }
    }

    #[test]
    fn formats_the_ends_of_the_range() {
        for n in [i64::MIN, i64::MIN + 1, -1, 1, i64::MAX] {
            assert_eq!(Usd(n).to_string().parse::<Usd>(), Ok(Usd(n)), "{n}");
        }
        assert_eq!(Usd(i64::MAX).to_string(), "9223372036.854775807");
        assert_eq!(Usd(i64::MIN).to_string(), "-9223372036.854775808");
    }
}
