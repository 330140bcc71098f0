//! Input strings to values, one function per kind of field, naming the field on error.

use super::{AdminError, Problem, Result};
use crate::domain::Vocabulary;

/// A value from a fixed set of names (a status, a role, a provider, a package type).
pub fn one_of<T: Vocabulary>(field: &'static str, value: &str) -> Result<T> {
    if let Ok(v) = value.parse() {
        return Ok(v);
    }
    let allowed = T::NAMES;
    let problem = if field == "status" {
        Problem::UnknownStatus { allowed }
    } else {
        Problem::UnknownValue { allowed }
    };
    Err(AdminError::invalid(field, problem))
}

/// A name of 1 to `max` characters after trimming; the trimmed name.
pub fn name(field: &'static str, value: &str, max: usize) -> Result<String> {
    let n = value.trim();
    if n.is_empty() || n.chars().count() > max {
        return Err(AdminError::invalid(field, Problem::Length { min: 1, max }));
    }
    Ok(n.to_string())
}

/// An optional RFC 3339 time → Unix ms.
pub fn time(field: &'static str, v: Option<&str>) -> Result<Option<i64>> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|_| AdminError::invalid(field, Problem::NotATime))
    })
    .transpose()
}

/// An optional day as YYYY-MM-DD, kept as given.
pub fn day(field: &'static str, v: Option<String>) -> Result<Option<String>> {
    match v {
        Some(d) if chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").is_err() => {
            Err(AdminError::invalid(field, Problem::NotADay))
        }
        other => Ok(other),
    }
}

/// A page size: 100 when not given, else 1 to 1000.
pub fn limit(v: Option<i64>) -> Result<i64> {
    match v {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(AdminError::invalid(
            "limit",
            Problem::OutOfRange { min: 1, max: 1000 },
        )),
    }
}

/// An id cursor; none when empty.
pub fn id_cursor(v: Option<&str>) -> Result<Option<i64>> {
    v.filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| AdminError::invalid("cursor", Problem::NotACursor))
        })
        .transpose()
}

/// A log cursor `{created_at_ms}_{id}`; none when empty.
pub fn log_cursor(v: Option<&str>) -> Result<Option<(i64, i64)>> {
    v.filter(|c| !c.is_empty())
        .map(|c| {
            c.split_once('_')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .ok_or_else(|| AdminError::invalid("cursor", Problem::NotACursor))
        })
        .transpose()
}

/// A list of model names, none empty.
pub fn models(field: &'static str, v: &[String]) -> Result<()> {
    if v.iter().any(|m| m.trim().is_empty()) {
        return Err(AdminError::invalid(field, Problem::EmptyModelName));
    }
    Ok(())
}

/// An IP allow-list: every entry an address or a CIDR range (IPv4 or IPv6), else the first
/// bad entry is named. The entries normalised (`192.0.2.7` → `192.0.2.7/32`, host bits
/// cleared); duplicates dropped; empty: any address.
pub fn cidrs(field: &'static str, v: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for entry in v {
        let net = crate::client_addr::parse_cidr(entry).map_err(|_| {
            AdminError::invalid(
                field,
                Problem::NotACidr {
                    entry: entry.chars().take(100).collect(),
                },
            )
        })?;
        let s = net.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// The largest `max_concurrency` accepted: more in flight than any one key or user needs, and
/// small enough that a typo (an extra zero or three) is caught.
pub const MAX_CONCURRENCY: i64 = 10_000;

/// A concurrency cap: none, or 1 to [`MAX_CONCURRENCY`].
pub fn concurrency(field: &'static str, v: Option<i64>) -> Result<Option<i64>> {
    match v {
        Some(n) if !(1..=MAX_CONCURRENCY).contains(&n) => Err(AdminError::invalid(
            field,
            Problem::OutOfRange {
                min: 1,
                max: MAX_CONCURRENCY,
            },
        )),
        v => Ok(v),
    }
}

/// A whole number sent as JSON: null is none; anything but an integer (1.5, "3") is refused.
pub fn json_int(field: &'static str, v: &serde_json::Value) -> Result<Option<i64>> {
    match v {
        serde_json::Value::Null => Ok(None),
        v => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| AdminError::invalid(field, Problem::NotPositiveInteger)),
    }
}

/// A status class of the log filters (`2xx`, `4xx`, `5xx`, `refused`).
pub fn status_class(field: &'static str, value: &str) -> Result<crate::store::usage::StatusClass> {
    use crate::store::usage::StatusClass;
    StatusClass::parse(value).ok_or_else(|| {
        AdminError::invalid(
            field,
            Problem::UnknownValue {
                allowed: StatusClass::NAMES,
            },
        )
    })
}
