//! Price import (SPEC §11.4): a price list in the format of LiteLLM's
//! `model_prices_and_context_window.json` (an object whose keys are model names), read into
//! prices per 1M tokens exactly, compared with the stored prices, and applied only when
//! confirmed. Shared by `tollgate prices import` and the model-prices page.
//!
//! Each price is read from the JSON number's own text as a decimal (never through `f64`, which
//! would turn `1.25e-07` into 0.12499999…), times 1,000,000, and must be a whole number of
//! nano-dollars.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::prices::check_price;
use super::Result;
use crate::billing::cost::Price;
use crate::billing::money::Usd;
use crate::state::AppState;
use crate::store::accounts::ModelPrice;
use crate::store::Db;

/// Which entries of the list to take: by `litellm_provider` and by `mode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportFilter {
    pub providers: Vec<String>,
    pub modes: Vec<String>,
}

/// The gateway's two providers, and the two modes it serves (chat completions and messages
/// are `chat`; models only on the Responses API, such as the Codex ones, are `responses`).
pub const DEFAULT_PROVIDERS: &[&str] = &["openai", "anthropic"];
pub const DEFAULT_MODES: &[&str] = &["chat", "responses"];

impl Default for ImportFilter {
    fn default() -> Self {
        ImportFilter {
            providers: DEFAULT_PROVIDERS.iter().map(|s| s.to_string()).collect(),
            modes: DEFAULT_MODES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl ImportFilter {
    /// From comma- or space-separated lists; an empty list keeps the default.
    pub fn from_lists(providers: &str, modes: &str) -> ImportFilter {
        let split = |s: &str, default: &[&str]| -> Vec<String> {
            let v: Vec<String> = s
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect();
            if v.is_empty() {
                default.iter().map(|s| s.to_string()).collect()
            } else {
                v
            }
        };
        ImportFilter {
            providers: split(providers, DEFAULT_PROVIDERS),
            modes: split(modes, DEFAULT_MODES),
        }
    }
}

/// Why an entry the filter took cannot be imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// No per-token input and output price (priced per second, per image, …, or not at all).
    NoTokenPrice,
    /// A price that is not a decimal number.
    NotANumber { field: &'static str, text: String },
    /// A negative price.
    Negative { field: &'static str, text: String },
    /// A price finer than one nano-dollar per 1M tokens.
    TooPrecise { field: &'static str, text: String },
    /// A model name longer than the 191 bytes a price row takes.
    NameTooLong,
}

impl Skip {
    /// Its text is `models.import.skip.{code}` in the UI's catalogue.
    pub fn code(&self) -> &'static str {
        match self {
            Skip::NoTokenPrice => "no_token_price",
            Skip::NotANumber { .. } => "not_a_number",
            Skip::Negative { .. } => "negative",
            Skip::TooPrecise { .. } => "too_precise",
            Skip::NameTooLong => "name_too_long",
        }
    }

    /// (field, value as written) when the reason is about one price.
    pub fn detail(&self) -> Option<(&'static str, &str)> {
        match self {
            Skip::NotANumber { field, text }
            | Skip::Negative { field, text }
            | Skip::TooPrecise { field, text } => Some((field, text)),
            Skip::NoTokenPrice | Skip::NameTooLong => None,
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NoTokenPrice => f.write_str("no per-token input and output price"),
            Skip::NotANumber { field, text } => write!(f, "{field} `{text}` is not a number"),
            Skip::Negative { field, text } => write!(f, "{field} `{text}` is negative"),
            Skip::TooPrecise { field, text } => write!(
                f,
                "{field} `{text}` is finer than one nano-dollar per 1M tokens"
            ),
            Skip::NameTooLong => f.write_str("the model name is longer than 191 bytes"),
        }
    }
}

/// The file is not a price list at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("the price list is not a JSON object of models: {0}")]
    NotAnObject(String),
}

/// What a price list offers for the entries the filter took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceList {
    /// Model and its price per 1M tokens, by model name.
    pub offers: Vec<(String, Price)>,
    pub skipped: Vec<(String, Skip)>,
    /// Entries of other providers or modes, and `sample_spec`.
    pub not_taken: usize,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow, default)]
    input_cost_per_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output_cost_per_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_read_input_token_cost: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_creation_input_token_cost: Option<&'a RawValue>,
    #[serde(default)]
    litellm_provider: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

/// A per-token USD price as written → nano-dollars per 1M tokens; `None` for JSON null.
fn per_million(field: &'static str, raw: &RawValue) -> std::result::Result<Option<i64>, Skip> {
    let written = raw.get().trim();
    if written == "null" {
        return Ok(None);
    }
    // A price written as a string ("3e-06") is read the same way as a number.
    let text = match serde_json::from_str::<String>(written) {
        Ok(s) => s,
        Err(_) => written.to_string(),
    };
    let t = text.trim();
    let skip = |f: fn(&'static str, String) -> Skip| f(field, text.clone());
    let d = if t.contains(['e', 'E']) {
        Decimal::from_scientific(t)
    } else {
        Decimal::from_str_exact(t)
    }
    .or_else(|_| Decimal::from_str(t))
    .map_err(|_| skip(|field, text| Skip::NotANumber { field, text }))?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(skip(|field, text| Skip::Negative { field, text }));
    }
    d.checked_mul(Decimal::from(1_000_000))
        .and_then(Usd::from_decimal)
        .map(|u| Some(u.0))
        .ok_or_else(|| skip(|field, text| Skip::TooPrecise { field, text }))
}

fn entry_price(e: &Entry<'_>) -> std::result::Result<Price, Skip> {
    let get = |field, v: Option<&RawValue>| match v {
        Some(raw) => per_million(field, raw),
        None => Ok(None),
    };
    let input = get("input_cost_per_token", e.input_cost_per_token)?;
    let output = get("output_cost_per_token", e.output_cost_per_token)?;
    let (Some(input), Some(output)) = (input, output) else {
        return Err(Skip::NoTokenPrice);
    };
    Ok(Price {
        input,
        output,
        cache_read: get("cache_read_input_token_cost", e.cache_read_input_token_cost)?,
        cache_write: get(
            "cache_creation_input_token_cost",
            e.cache_creation_input_token_cost,
        )?,
    })
}

/// Read a LiteLLM price list, keeping the entries of the filter's providers and modes.
pub fn parse_litellm(
    text: &str,
    filter: &ImportFilter,
) -> std::result::Result<PriceList, ListError> {
    let entries: BTreeMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| ListError::NotAnObject(e.to_string()))?;
    let mut list = PriceList::default();
    for (model, raw) in entries {
        // `sample_spec` documents the format; an entry that is not an object is not a model.
        let entry = match serde_json::from_str::<Entry<'_>>(raw.get()) {
            Ok(e) if model != "sample_spec" => e,
            _ => {
                list.not_taken += 1;
                continue;
            }
        };
        let taken = entry
            .litellm_provider
            .as_ref()
            .is_some_and(|p| filter.providers.contains(p))
            && entry
                .mode
                .as_ref()
                .is_some_and(|m| filter.modes.contains(m));
        if !taken {
            list.not_taken += 1;
            continue;
        }
        if model.trim().is_empty() || model.len() > 191 {
            list.skipped.push((model, Skip::NameTooLong));
            continue;
        }
        match entry_price(&entry) {
            Ok(p) => list.offers.push((model, p)),
            Err(s) => list.skipped.push((model, s)),
        }
    }
    Ok(list)
}

/// What applying a price list would do to the stored prices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportPlan {
    pub add: Vec<(String, Price)>,
    /// (model, stored price, new price)
    pub change: Vec<(String, Price, Price)>,
    pub unchanged: usize,
    pub skipped: Vec<(String, Skip)>,
    pub not_taken: usize,
}

impl ImportPlan {
    /// Compare a list with the stored prices. Models the list does not name are left alone;
    /// a model it names gets all four of the list's prices (a cache price the list lacks is
    /// cleared, so the model's cache tokens are charged at its input price, as the diff shows).
    pub fn new(list: PriceList, stored: &[ModelPrice]) -> ImportPlan {
        let stored: BTreeMap<&str, Price> = stored
            .iter()
            .map(|p| (p.model.as_str(), p.price()))
            .collect();
        let mut plan = ImportPlan {
            skipped: list.skipped,
            not_taken: list.not_taken,
            ..Default::default()
        };
        for (model, new) in list.offers {
            match stored.get(model.as_str()) {
                None => plan.add.push((model, new)),
                Some(old) if *old == new => plan.unchanged += 1,
                Some(old) => plan.change.push((model, *old, new)),
            }
        }
        plan
    }

    /// The prices to write: the added and the changed models.
    pub fn writes(&self) -> Vec<(String, Price)> {
        self.add
            .iter()
            .cloned()
            .chain(self.change.iter().map(|(m, _, new)| (m.clone(), *new)))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.change.is_empty()
    }

    /// The plan as the CLI prints it: prices per 1M tokens, `old → new` for changes.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let width = self
            .add
            .iter()
            .map(|(m, _)| m)
            .chain(self.change.iter().map(|(m, _, _)| m))
            .map(|m| m.chars().count())
            .max()
            .unwrap_or(0);
        let _ = writeln!(s, "Add ({}):", self.add.len());
        for (m, p) in &self.add {
            let _ = writeln!(
                s,
                "  + {m:width$}  input {}  output {}  cache_read {}  cache_write {}",
                plain(p.input),
                plain(p.output),
                opt_plain(p.cache_read),
                opt_plain(p.cache_write)
            );
        }
        let _ = writeln!(s, "Change ({}):", self.change.len());
        for (m, old, new) in &self.change {
            let _ = writeln!(s, "  ~ {m:width$}  {}", price_changes(old, new).join(", "));
        }
        let _ = writeln!(s, "Unchanged: {}", self.unchanged);
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "Skipped ({}):", self.skipped.len());
            for (m, why) in &self.skipped {
                let _ = writeln!(s, "  ! {m}: {why}");
            }
        }
        let _ = writeln!(
            s,
            "Not taken (other providers or modes): {}",
            self.not_taken
        );
        s
    }
}

/// A price per 1M tokens as an admin types it: `2.5`, `0.125`, `0`.
pub fn plain(nanos: i64) -> String {
    Usd(nanos).to_decimal().normalize().to_string()
}

/// A cache price, `-` when unset (charged at the input price).
pub fn opt_plain(nanos: Option<i64>) -> String {
    nanos.map(plain).unwrap_or_else(|| "-".into())
}

/// The fields that differ, as `field old → new`.
pub fn price_changes(old: &Price, new: &Price) -> Vec<String> {
    let mut out = Vec::new();
    for (field, a, b) in [
        ("input", Some(old.input), Some(new.input)),
        ("output", Some(old.output), Some(new.output)),
        ("cache_read", old.cache_read, new.cache_read),
        ("cache_write", old.cache_write, new.cache_write),
    ] {
        if a != b {
            out.push(format!("{field} {} → {}", opt_plain(a), opt_plain(b)));
        }
    }
    out
}

/// Write the prices in one transaction (all or none). The CLI's entry point: it has no proxy
/// caches of its own, and running instances see the new prices when theirs expire.
pub async fn write_prices(db: &Db, prices: &[(String, Price)], now_ms: i64) -> Result<usize> {
    for (model, p) in prices {
        check_price(model, p)?;
    }
    Ok(db.upsert_prices(prices, now_ms).await?)
}

/// Write the prices and drop this instance's caches, so they apply at once.
pub async fn import_prices(st: &AppState, prices: &[(String, Price)]) -> Result<usize> {
    let n = write_prices(&st.db, prices, st.now_ms()).await?;
    st.proxy.forget_cached();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn per_token_prices_become_exact_prices_per_million() {
        for (text, nanos) in [
            ("3e-06", 3_000_000_000),
            ("1.25e-07", 125_000_000),
            ("0.000015", 15_000_000_000),
            ("\"3.75e-06\"", 3_750_000_000),
            ("1E-6", 1_000_000_000),
            ("0", 0),
        ] {
            assert_eq!(
                per_million("input_cost_per_token", &raw(text)).unwrap(),
                Some(nanos),
                "{text}"
            );
        }
        // 1e-15 USD a token is exactly one nano-dollar per 1M tokens; half of it is not.
        assert_eq!(per_million("x", &raw("1e-15")).unwrap(), Some(1));
        assert!(matches!(
            per_million("x", &raw("5e-16")),
            Err(Skip::TooPrecise { .. })
        ));
        assert!(matches!(
            per_million("x", &raw("-1e-06")),
            Err(Skip::Negative { .. })
        ));
        assert!(matches!(
            per_million("x", &raw("\"cheap\"")),
            Err(Skip::NotANumber { .. })
        ));
        assert_eq!(per_million("x", &raw("null")).unwrap(), None);
    }

    #[test]
    fn a_file_that_is_not_an_object_is_refused() {
        let f = ImportFilter::default();
        assert!(parse_litellm("[1, 2]", &f).is_err());
        assert!(parse_litellm("not json", &f).is_err());
        assert_eq!(parse_litellm("{}", &f).unwrap(), PriceList::default());
    }

    #[test]
    fn filters_come_from_lists() {
        let f = ImportFilter::from_lists("openai, azure", "");
        assert_eq!(f.providers, vec!["openai", "azure"]);
        assert_eq!(f.modes, vec!["chat", "responses"]);
        assert_eq!(ImportFilter::from_lists(" ", " "), ImportFilter::default());
    }
}
