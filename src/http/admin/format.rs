//! How the UI writes money, counts, times and URLs. Presentation only: every figure comes
//! computed from the billing rules.

use chrono::TimeZone;
use chrono_tz::Tz;

use crate::billing::money::Usd;
use crate::clock::from_ms;

/// USD for people, exact to the nano-dollar: `$1,234.50`, `-$0.00011`, `$0.000000001`.
/// Trailing zeros after the second decimal are dropped, never significant digits, so the text
/// parses back to the same amount.
pub fn usd(v: Usd) -> String {
    let n = v.0 as i128;
    let sign = if n < 0 { "-" } else { "" };
    let abs = n.unsigned_abs();
    let int = abs / 1_000_000_000;
    let frac = format!("{:09}", abs % 1_000_000_000);
    let frac = frac.trim_end_matches('0');
    let frac = if frac.len() < 2 {
        format!("{frac:0<2}")
    } else {
        frac.to_string()
    };
    format!("{sign}${}.{frac}", group(&int.to_string()))
}

/// An optional balance: `—` when no package limits that window.
pub fn opt_usd(v: Option<Usd>) -> String {
    v.map_or_else(|| "—".to_string(), usd)
}

/// A count with thousands separators.
pub fn count(n: i64) -> String {
    let s = group(&n.unsigned_abs().to_string());
    if n < 0 {
        format!("-{s}")
    } else {
        s
    }
}

fn group(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `2026-01-31 10:00` on the wall clock of `tz`.
pub fn time(ms: i64, tz: Tz) -> String {
    from_ms(ms)
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

/// `2026-01-31` on the calendar of `tz`.
pub fn day(ms: i64, tz: Tz) -> String {
    from_ms(ms)
        .with_timezone(&tz)
        .format("%Y-%m-%d")
        .to_string()
}

/// `2026-01-31 10:00:07` on the wall clock of `tz`.
pub fn time_secs(ms: i64, tz: Tz) -> String {
    from_ms(ms)
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

pub fn opt_time(ms: Option<i64>, tz: Tz) -> String {
    ms.map_or_else(|| "—".to_string(), |m| time(m, tz))
}

/// The value of an `<input type="datetime-local">` (`2026-01-31T10:00`, wall clock of `tz`)
/// as an RFC 3339 instant; `None` when empty, `Err` when it is not such a time.
pub fn local_input_to_rfc3339(v: &str, tz: Tz) -> Result<Option<String>, ()> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let naive = chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| ())?;
    let at = tz
        .from_local_datetime(&naive)
        .earliest()
        .ok_or(())?
        .with_timezone(&chrono::Utc);
    Ok(Some(at.to_rfc3339()))
}

/// Percent-encode a query value.
pub fn query_escape(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// `url` with the query parameter `name` set to `value` (replacing it if present).
pub fn with_param(url: &str, name: &str, value: &str) -> String {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k != name {
            ser.append_pair(&k, &v);
        }
    }
    ser.append_pair(name, value);
    format!("{path}?{}", ser.finish())
}

/// A query string from the pairs whose value is not empty (`?a=1&b=x`, or "" when none).
pub fn query(pairs: &[(&str, String)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in pairs {
        if !v.is_empty() {
            ser.append_pair(k, v);
            any = true;
        }
    }
    if any {
        format!("?{}", ser.finish())
    } else {
        String::new()
    }
}

/// A local redirect target from a form or query: only paths under `/admin`.
pub fn safe_next(next: Option<&str>) -> Option<String> {
    next.filter(|n| {
        (*n == "/admin" || n.starts_with("/admin/") || n.starts_with("/admin?"))
            && !n.contains("//")
            && !n.contains('\\')
            && !n.chars().any(char::is_control)
    })
    .map(str::to_string)
}

/// How full a bar is, 0–100, for drawing (the figures beside it are shown as they are).
pub fn percent(used: i64, limit: i64) -> f64 {
    if limit <= 0 {
        return 100.0;
    }
    ((used as f64 / limit as f64) * 100.0).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_exact_and_readable() {
        assert_eq!(usd(Usd(10_000_000_000)), "$10.00");
        assert_eq!(usd(Usd(9_999_890_000)), "$9.99989");
        assert_eq!(usd(Usd(1_234_500_000_000)), "$1,234.50");
        assert_eq!(usd(Usd(-110_000)), "-$0.00011");
        assert_eq!(usd(Usd(1)), "$0.000000001");
        assert_eq!(usd(Usd(0)), "$0.00");
        assert_eq!(usd(Usd(i64::MIN)), "-$9,223,372,036.854775808");
        assert_eq!(opt_usd(None), "—");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(-12), "-12");
        assert_eq!(count(999), "999");
    }

    #[test]
    fn urls() {
        assert_eq!(
            with_param("/admin/users?q=a%20b&lang=en", "lang", "zh-CN"),
            "/admin/users?q=a+b&lang=zh-CN"
        );
        assert_eq!(with_param("/admin", "notice", "x"), "/admin?notice=x");
        assert_eq!(query(&[("a", "1".into()), ("b", String::new())]), "?a=1");
        assert_eq!(query(&[("a", String::new())]), "");
        assert_eq!(
            safe_next(Some("/admin/users?q=x")).as_deref(),
            Some("/admin/users?q=x")
        );
        assert_eq!(safe_next(Some("//evil.example")), None);
        assert_eq!(safe_next(Some("/admin//evil")), None);
        assert_eq!(safe_next(Some("https://evil.example/admin")), None);
        assert_eq!(safe_next(Some("/administrator")), None);
    }

    #[test]
    fn local_times() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(
            local_input_to_rfc3339("2026-01-31T10:00", tz)
                .unwrap()
                .as_deref(),
            Some("2026-01-31T02:00:00+00:00")
        );
        assert_eq!(local_input_to_rfc3339("", tz).unwrap(), None);
        assert!(local_input_to_rfc3339("tomorrow", tz).is_err());
        assert_eq!(time(1_769_824_800_000, tz), "2026-01-31 10:00");
    }
}
