//! The window function: which daily, weekly or monthly usage window of a package contains an
//! instant, and whether a stored `*_used` counter still belongs to it.
//!
//! All calendar arithmetic happens on the local wall clock of the package's billing timezone
//! (an IANA zone), then is turned back into UTC instants:
//!
//! - **daily**: the local calendar day, from local midnight to the next local midnight. On DST
//!   change days that is 23 or 25 hours (23.5 / 24.5 in zones with 30-minute shifts such as
//!   Australia/Lord_Howe). When local midnight falls in a DST gap, the day starts at the first
//!   instant that exists after it (the transition instant); when it is ambiguous, at the earlier
//!   of the two instants.
//! - **weekly / monthly**: anchored at the package's `starts_at`. Window `k` starts at the local
//!   wall time of `starts_at` plus `7·k` days, or plus `k` calendar months with the day of month
//!   clamped to the target month's length (always computed from the original anchor, so a
//!   package starting Jan 31 resets on Feb 28/29, Mar 31, Apr 30, ...). Window 0 starts exactly
//!   at `starts_at`. A wall time in a DST gap resolves to the instant just after the gap (the
//!   wall time shifted forward by the gap's length, i.e. read with the offset in force before the
//!   gap); an ambiguous wall time (fall-back overlap) resolves to the earlier instant. A weekly
//!   window therefore keeps its local wall time across DST changes and may be 167 or 169 hours.
//! - every window's end (which is also its "next reset") is clamped to `expires_at`; outside
//!   `[starts_at, expires_at)` there is no window. A daily window's start is not clamped: the
//!   first day's window starts at that day's local midnight, even if `starts_at` is later.
//!
//! Finding the window index for an instant is O(1): it is estimated from the local calendar
//! difference and then corrected by at most a step or two.

use chrono::{
    DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Utc,
};
use chrono_tz::Tz;

/// The three limit periods of a subscription package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    Daily,
    Weekly,
    Monthly,
}

impl WindowKind {
    pub const ALL: [WindowKind; 3] = [WindowKind::Daily, WindowKind::Weekly, WindowKind::Monthly];

    /// `"daily"`, `"weekly"` or `"monthly"` (the same spelling as the serde form).
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Daily => "daily",
            WindowKind::Weekly => "weekly",
            WindowKind::Monthly => "monthly",
        }
    }
}

/// [start, end): end is the next reset, already clamped to expires_at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The window of `kind` that contains `at`, for a package active over [starts_at, expires_at).
/// None when `at` is outside that range.
///
/// The result always satisfies `start <= at < end <= expires_at`; `end = min(natural end,
/// expires_at)`. See the module docs for the DST rules. (It is also `None` if the calendar
/// arithmetic leaves chrono's representable range, which only happens within a day of year
/// ±262143.)
pub fn window_at(
    kind: WindowKind,
    at: DateTime<Utc>,
    starts_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    tz: Tz,
) -> Option<Window> {
    if at < starts_at || at >= expires_at {
        return None;
    }
    let key = (kind, starts_at, expires_at, tz);
    RECENT.with(|r| {
        let mut r = r.borrow_mut();
        let hit = r
            .entries
            .iter()
            .flatten()
            .find_map(|(k, w)| (*k == key && w.start <= at && at < w.end).then_some(*w));
        hit.or_else(|| {
            let w = window_uncached(kind, at, starts_at, expires_at, tz)?;
            let i = r.next;
            r.entries[i] = Some((key, w));
            r.next = (i + 1) % r.entries.len();
            Some(w)
        })
    })
}

/// The last few windows computed on this thread, with the package they belong to. A package's
/// windows tile it (the property tests below), so the window that holds `at` is a cached one
/// whenever `at` lies inside it: a request then skips the calendar and time-zone arithmetic
/// (about 8,000 instructions for the several windows a request needs).
struct Recent {
    entries: [Option<(RecentKey, Window)>; 8],
    next: usize,
}
type RecentKey = (WindowKind, DateTime<Utc>, DateTime<Utc>, Tz);

thread_local! {
    static RECENT: std::cell::RefCell<Recent> = const {
        std::cell::RefCell::new(Recent { entries: [None; 8], next: 0 })
    };
}

/// [`window_at`] computed from the calendar, without the cache.
fn window_uncached(
    kind: WindowKind,
    at: DateTime<Utc>,
    starts_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    tz: Tz,
) -> Option<Window> {
    if at < starts_at || at >= expires_at {
        return None;
    }
    let (start, natural_end) = match kind {
        WindowKind::Daily => daily_bounds(at, tz)?,
        WindowKind::Weekly => weekly_bounds(at, starts_at, tz)?,
        WindowKind::Monthly => monthly_bounds(at, starts_at, tz)?,
    };
    let end = match natural_end {
        Some(end) if end < expires_at => end,
        // No representable natural end means it lies beyond any real `expires_at`.
        _ => expires_at,
    };
    Some(Window { start, end })
}

/// Effective used: `stored_used` if `stored_start` equals `current.start` (compare as Unix milliseconds,
/// since starts are persisted as i64 ms), else 0.
///
/// A different (or missing) stored start means the window rolled over since the counter was
/// written, so nothing has been used in the current window yet.
pub fn effective_used(stored_start_ms: Option<i64>, stored_used: i64, current: &Window) -> i64 {
    match stored_start_ms {
        Some(ms) if ms == current.start.timestamp_millis() => stored_used,
        _ => 0,
    }
}

/// How a local wall time inside a DST gap is turned into an instant.
#[derive(Clone, Copy, Debug)]
enum GapRule {
    /// The first instant that exists after the wall time: the transition instant (daily).
    FirstInstant,
    /// The wall time shifted forward by the gap's length (weekly, monthly).
    ShiftForward,
}

/// `(start, natural end)`; a natural end of `None` is beyond chrono's range.
type Bounds = (DateTime<Utc>, Option<DateTime<Utc>>);

fn daily_bounds(at: DateTime<Utc>, tz: Tz) -> Option<Bounds> {
    let estimate = local_of(tz, at).unwrap_or_else(|| at.naive_utc()).date();
    let boundary = |k: i64| {
        let date = NaiveDate::from_num_days_from_ce_opt(i32::try_from(k).ok()?)?;
        resolve_local(tz, date.and_time(NaiveTime::MIN), GapRule::FirstInstant)
    };
    locate(
        at,
        i64::from(estimate.num_days_from_ce()),
        i64::MIN,
        boundary,
    )
}

fn weekly_bounds(at: DateTime<Utc>, starts_at: DateTime<Utc>, tz: Tz) -> Option<Bounds> {
    const WEEK_SECS: i64 = 7 * 24 * 3600;
    let anchor = local_of(tz, starts_at)?;
    let at_local = local_of(tz, at).unwrap_or_else(|| at.naive_utc());
    let estimate = at_local
        .signed_duration_since(anchor)
        .num_seconds()
        .div_euclid(WEEK_SECS);
    let boundary = |k: i64| {
        if k == 0 {
            return Some(starts_at);
        }
        let days = u64::try_from(k.checked_mul(7)?).ok()?;
        let wall = anchor.checked_add_days(Days::new(days))?;
        resolve_local(tz, wall, GapRule::ShiftForward)
    };
    locate(at, estimate, 0, boundary)
}

fn monthly_bounds(at: DateTime<Utc>, starts_at: DateTime<Utc>, tz: Tz) -> Option<Bounds> {
    let anchor = local_of(tz, starts_at)?;
    let at_local = local_of(tz, at).unwrap_or_else(|| at.naive_utc());
    let estimate = month_index(&at_local) - month_index(&anchor);
    let boundary = |k: i64| {
        if k == 0 {
            return Some(starts_at);
        }
        resolve_local(tz, add_months_clamped(anchor, k)?, GapRule::ShiftForward)
    };
    locate(at, estimate, 0, boundary)
}

/// Finds `k >= min_k` with `boundary(k) <= at < boundary(k + 1)`, starting from `estimate`.
/// `boundary` must be strictly increasing; `None` from it means "not representable". Returns
/// `(boundary(k), boundary(k + 1))`.
fn locate(
    at: DateTime<Utc>,
    estimate: i64,
    min_k: i64,
    boundary: impl Fn(i64) -> Option<DateTime<Utc>>,
) -> Option<Bounds> {
    let mut k = estimate.max(min_k);
    // The estimate is off by at most one or two steps; the bound only guards against looping.
    for _ in 0..8 {
        let start = boundary(k)?;
        if start > at {
            if k <= min_k {
                return None;
            }
            k -= 1;
            continue;
        }
        let next = k.checked_add(1).and_then(&boundary);
        match next {
            Some(next) if next <= at => k += 1,
            _ => return Some((start, next)),
        }
    }
    None
}

/// Months since year 0, January, of a local date-time.
fn month_index(t: &NaiveDateTime) -> i64 {
    i64::from(t.year()) * 12 + i64::from(t.month0())
}

/// `t` plus `k` calendar months, the day of month clamped to the target month's length.
fn add_months_clamped(t: NaiveDateTime, k: i64) -> Option<NaiveDateTime> {
    let total = month_index(&t).checked_add(k)?;
    let year = i32::try_from(total.div_euclid(12)).ok()?;
    let month = u32::try_from(total.rem_euclid(12)).ok()? + 1;
    let day = t.day().min(days_in_month(year, month));
    NaiveDate::from_ymd_opt(year, month, day).map(|d| d.and_time(t.time()))
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if NaiveDate::from_ymd_opt(year, 2, 29).is_some() => 29,
        2 => 28,
        _ => 31,
    }
}

/// The UTC offset of `tz` at instant `u`, in seconds.
fn offset_secs(tz: Tz, u: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&u.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

/// The local wall time of `u` in `tz` (`None` only at the edges of chrono's range).
fn local_of(tz: Tz, u: DateTime<Utc>) -> Option<NaiveDateTime> {
    u.naive_utc()
        .checked_add_signed(TimeDelta::seconds(offset_secs(tz, u)))
}

/// The instant at which the wall time `local` reads as `local` under a UTC offset of `offset`.
fn with_offset(local: NaiveDateTime, offset: i64) -> Option<DateTime<Utc>> {
    local
        .checked_sub_signed(TimeDelta::seconds(offset))
        .map(|t| t.and_utc())
}

/// Turns a local wall time into an instant: an ambiguous one to the earlier instant, one in a
/// gap according to `gap`.
fn resolve_local(tz: Tz, local: NaiveDateTime, gap: GapRule) -> Option<DateTime<Utc>> {
    match tz.offset_from_local_datetime(&local) {
        LocalResult::Single(off) => with_offset(local, i64::from(off.fix().local_minus_utc())),
        LocalResult::Ambiguous(a, b) => {
            let a = with_offset(local, i64::from(a.fix().local_minus_utc()));
            let b = with_offset(local, i64::from(b.fix().local_minus_utc()));
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        LocalResult::None => {
            let transition = first_instant_reaching(tz, local)?;
            match gap {
                GapRule::FirstInstant => Some(transition),
                GapRule::ShiftForward => {
                    // Read the wall time with the offset in force just before the gap.
                    let before = transition.checked_sub_signed(TimeDelta::seconds(1))?;
                    let shifted = with_offset(local, offset_secs(tz, before))?;
                    Some(shifted.max(transition))
                }
            }
        }
    }
}

/// The first whole-second instant whose local wall time is at or after `local`: for a wall
/// time in a DST gap, the transition instant that ends the gap. Binary search over ±30 h (more
/// than any UTC offset), so about 17 offset look-ups; only used for wall times in gaps.
fn first_instant_reaching(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    const SPAN: i64 = 30 * 3600;
    let reached = |secs: i64| -> Option<bool> {
        let u = DateTime::from_timestamp(secs, 0)?;
        let wall_minus_local =
            u.naive_utc().signed_duration_since(local) + TimeDelta::seconds(offset_secs(tz, u));
        Some(wall_minus_local >= TimeDelta::zero())
    };
    let center = local.and_utc().timestamp();
    let mut lo = center
        .saturating_sub(SPAN)
        .max(DateTime::<Utc>::MIN_UTC.timestamp() + 1);
    let mut hi = center
        .saturating_add(SPAN)
        .min(DateTime::<Utc>::MAX_UTC.timestamp());
    if reached(lo)? || !reached(hi)? {
        return None;
    }
    // Invariant: not reached at `lo`, reached at `hi`.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if reached(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// The calendar day (`YYYY-MM-DD`) of `at` in `tz`: the day a request's daily summary and
/// real-time stats are kept under.
pub fn day_string(at: DateTime<Utc>, tz: Tz) -> String {
    // Written digit by digit: chrono's `format` parses its pattern on every call, and even
    // `format!` was 1.3k instructions a request (callgrind), for ten characters.
    let d = at.with_timezone(&tz).date_naive();
    let year = match u32::try_from(d.year()) {
        Ok(year) if year <= 9999 => year,
        _ => return format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
    };
    let digit = |n: u32| char::from(b'0' + n as u8);
    let mut s = String::with_capacity(10);
    for n in [year / 1000, year / 100 % 10, year / 10 % 10, year % 10] {
        s.push(digit(n));
    }
    for n in [d.month(), d.day()] {
        s.push('-');
        s.push(digit(n / 10));
        s.push(digit(n % 10));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    // The calendar arithmetic itself is what these tests check: through the cache, a window's
    // last millisecond would be answered from the window just computed.
    use super::window_uncached as window_at;
    use chrono::Months;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse::<DateTime<Utc>>().expect("valid RFC 3339 instant")
    }

    fn win(start: &str, end: &str) -> Window {
        Window {
            start: utc(start),
            end: utc(end),
        }
    }

    fn hours(w: &Window) -> f64 {
        (w.end - w.start).num_seconds() as f64 / 3600.0
    }

    const EARLY: &str = "2000-01-01T00:00:00Z";
    const FAR: &str = "2100-01-01T00:00:00Z";

    /// A window of a package active from 2000 to 2100.
    fn long_pkg(kind: WindowKind, at: &str, tz: Tz) -> Window {
        window_at(kind, utc(at), utc(EARLY), utc(FAR), tz).expect("inside the package")
    }

    /// A window of a package that starts at `starts_at` and runs until 2100.
    fn anchored(kind: WindowKind, at: &str, starts_at: &str, tz: Tz) -> Window {
        window_at(kind, utc(at), utc(starts_at), utc(FAR), tz).expect("inside the package")
    }

    #[test]
    fn day_string_is_the_local_calendar_day() {
        let at = Utc.with_ymd_and_hms(2026, 3, 4, 16, 30, 0).unwrap();
        assert_eq!(day_string(at, chrono_tz::UTC), "2026-03-04");
        assert_eq!(day_string(at, chrono_tz::Asia::Shanghai), "2026-03-05");
        let early = Utc.with_ymd_and_hms(987, 1, 2, 3, 0, 0).unwrap();
        assert_eq!(
            day_string(early, chrono_tz::America::New_York),
            "0987-01-01"
        );
        // Outside 0..=9999 it is chrono's own year formatting.
        let far = Utc.with_ymd_and_hms(12345, 12, 31, 0, 0, 0).unwrap();
        assert_eq!(day_string(far, chrono_tz::UTC), "12345-12-31");
        let bc = Utc.with_ymd_and_hms(-1, 7, 9, 0, 0, 0).unwrap();
        assert_eq!(day_string(bc, chrono_tz::UTC), "-001-07-09");
    }

    #[test]
    fn kind_names_match_serde() {
        assert_eq!(
            WindowKind::ALL.map(WindowKind::as_str),
            ["daily", "weekly", "monthly"]
        );
        for kind in WindowKind::ALL {
            let json = serde_json::to_string(&kind).expect("serializes");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: WindowKind = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn daily_utc() {
        let day = win("2026-05-10T00:00:00Z", "2026-05-11T00:00:00Z");
        assert_eq!(
            long_pkg(WindowKind::Daily, "2026-05-10T13:45:00Z", Tz::UTC),
            day
        );
        assert_eq!(
            long_pkg(WindowKind::Daily, "2026-05-10T00:00:00Z", Tz::UTC),
            day
        );
        assert_eq!(
            long_pkg(WindowKind::Daily, "2026-05-10T23:59:59.999Z", Tz::UTC),
            day
        );
        assert_eq!(
            long_pkg(WindowKind::Daily, "2026-05-09T23:59:59.999Z", Tz::UTC),
            win("2026-05-09T00:00:00Z", "2026-05-10T00:00:00Z")
        );
    }

    #[test]
    fn daily_shanghai() {
        let tz = Tz::Asia__Shanghai;
        // 2026-11-25 00:00+08 .. 2026-11-26 00:00+08
        assert_eq!(
            long_pkg(WindowKind::Daily, "2026-11-24T16:30:00Z", tz),
            win("2026-11-24T16:00:00Z", "2026-11-25T16:00:00Z")
        );
        assert_eq!(
            long_pkg(WindowKind::Daily, "2026-11-24T15:59:59.999Z", tz),
            win("2026-11-23T16:00:00Z", "2026-11-24T16:00:00Z")
        );
    }

    #[test]
    fn daily_new_york_spring_forward_is_23_hours() {
        let tz = Tz::America__New_York;
        let day = win("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z");
        // 01:59 EST, 03:00 EDT and noon are all on 2026-03-08.
        for at in [
            "2026-03-08T06:59:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T12:00:00Z",
        ] {
            assert_eq!(long_pkg(WindowKind::Daily, at, tz), day, "at {at}");
        }
        assert_eq!(hours(&day), 23.0);
    }

    #[test]
    fn daily_new_york_fall_back_is_25_hours() {
        let tz = Tz::America__New_York;
        let day = win("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z");
        // 01:30 EDT and 01:30 EST (the repeated hour) and noon are all on 2026-11-01.
        for at in [
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T12:00:00Z",
        ] {
            assert_eq!(long_pkg(WindowKind::Daily, at, tz), day, "at {at}");
        }
        assert_eq!(hours(&day), 25.0);
    }

    #[test]
    fn daily_when_local_midnight_is_skipped_starts_at_the_transition() {
        // São Paulo, 2018-11-04: 00:00 -03 jumped to 01:00 -02 at 03:00Z.
        let tz = Tz::America__Sao_Paulo;
        assert_eq!(
            long_pkg(WindowKind::Daily, "2018-11-04T12:00:00Z", tz),
            win("2018-11-04T03:00:00Z", "2018-11-05T02:00:00Z")
        );
        assert_eq!(
            long_pkg(WindowKind::Daily, "2018-11-04T02:59:59Z", tz),
            win("2018-11-03T03:00:00Z", "2018-11-04T03:00:00Z")
        );
        // Santiago, 2026-09-06: 00:00 -04 jumps to 01:00 -03 at 04:00Z.
        let tz = Tz::America__Santiago;
        assert_eq!(
            long_pkg(WindowKind::Daily, "2026-09-06T04:00:00Z", tz),
            win("2026-09-06T04:00:00Z", "2026-09-07T03:00:00Z")
        );
        // Santiago, 2026-04-05: 00:00 -03 falls back to 23:00 -04 (Apr 4 is 25 h long).
        assert_eq!(
            long_pkg(WindowKind::Daily, "2026-04-05T03:30:00Z", tz),
            win("2026-04-04T03:00:00Z", "2026-04-05T04:00:00Z")
        );
        assert_eq!(
            long_pkg(WindowKind::Daily, "2026-04-05T04:00:00Z", tz),
            win("2026-04-05T04:00:00Z", "2026-04-06T04:00:00Z")
        );
    }

    #[test]
    fn daily_when_a_whole_local_day_is_skipped() {
        // Samoa skipped 2011-12-30: 2011-12-29 23:59:59 -10 was followed by 2011-12-31 00:00 +14.
        let tz = Tz::Pacific__Apia;
        assert_eq!(
            long_pkg(WindowKind::Daily, "2011-12-30T09:59:59Z", tz),
            win("2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z")
        );
        assert_eq!(
            long_pkg(WindowKind::Daily, "2011-12-30T10:00:00Z", tz),
            win("2011-12-30T10:00:00Z", "2011-12-31T10:00:00Z")
        );
    }

    #[test]
    fn weekly_is_anchored_at_starts_at() {
        let start = "2026-01-05T09:30:00Z";
        let week0 = win(start, "2026-01-12T09:30:00Z");
        assert_eq!(anchored(WindowKind::Weekly, start, start, Tz::UTC), week0);
        assert_eq!(
            anchored(
                WindowKind::Weekly,
                "2026-01-12T09:29:59.999Z",
                start,
                Tz::UTC
            ),
            week0
        );
        // 10 days after starts_at is in week 1, which starts at starts_at + 7 days.
        assert_eq!(
            anchored(WindowKind::Weekly, "2026-01-15T09:30:00Z", start, Tz::UTC),
            win("2026-01-12T09:30:00Z", "2026-01-19T09:30:00Z")
        );
        // Week 521, ten years on, found without walking from the anchor.
        assert_eq!(
            anchored(WindowKind::Weekly, "2036-01-02T10:00:00Z", start, Tz::UTC),
            win("2035-12-31T09:30:00Z", "2036-01-07T09:30:00Z")
        );
    }

    #[test]
    fn weekly_in_shanghai() {
        // Anchored Monday 2026-01-05 08:00+08.
        assert_eq!(
            anchored(
                WindowKind::Weekly,
                "2026-01-20T00:00:00Z",
                "2026-01-05T00:00:00Z",
                Tz::Asia__Shanghai
            ),
            win("2026-01-19T00:00:00Z", "2026-01-26T00:00:00Z")
        );
    }

    #[test]
    fn weekly_new_york_keeps_local_wall_time_across_dst() {
        let tz = Tz::America__New_York;
        // Anchored Mon 2026-03-02 10:00 EST; the next reset is Mon 2026-03-09 10:00 EDT.
        let w = anchored(
            WindowKind::Weekly,
            "2026-03-05T00:00:00Z",
            "2026-03-02T15:00:00Z",
            tz,
        );
        assert_eq!(w, win("2026-03-02T15:00:00Z", "2026-03-09T14:00:00Z"));
        assert_eq!(hours(&w), 167.0);
        let w = anchored(
            WindowKind::Weekly,
            "2026-03-12T00:00:00Z",
            "2026-03-02T15:00:00Z",
            tz,
        );
        assert_eq!(w, win("2026-03-09T14:00:00Z", "2026-03-16T14:00:00Z"));
        assert_eq!(hours(&w), 168.0);
        // Anchored Mon 2026-10-26 10:00 EDT; the next reset is Mon 2026-11-02 10:00 EST.
        let w = anchored(
            WindowKind::Weekly,
            "2026-10-30T00:00:00Z",
            "2026-10-26T14:00:00Z",
            tz,
        );
        assert_eq!(w, win("2026-10-26T14:00:00Z", "2026-11-02T15:00:00Z"));
        assert_eq!(hours(&w), 169.0);
    }

    #[test]
    fn weekly_wall_time_in_gap_shifts_forward_and_in_overlap_takes_the_earlier() {
        let tz = Tz::America__New_York;
        // Anchored Sun 2026-03-01 02:30 EST. 2026-03-08 02:30 does not exist: it becomes
        // 03:30 EDT (07:30Z); 2026-03-15 02:30 EDT is 06:30Z.
        let starts = "2026-03-01T07:30:00Z";
        assert_eq!(
            anchored(WindowKind::Weekly, "2026-03-08T07:29:59Z", starts, tz),
            win(starts, "2026-03-08T07:30:00Z")
        );
        assert_eq!(
            anchored(WindowKind::Weekly, "2026-03-08T07:30:00Z", starts, tz),
            win("2026-03-08T07:30:00Z", "2026-03-15T06:30:00Z")
        );
        // Anchored Sun 2026-10-25 01:30 EDT. 2026-11-01 01:30 happens twice: the earlier one
        // (EDT, 05:30Z) is taken; 2026-11-08 01:30 EST is 06:30Z.
        let starts = "2026-10-25T05:30:00Z";
        assert_eq!(
            anchored(WindowKind::Weekly, "2026-11-01T06:00:00Z", starts, tz),
            win("2026-11-01T05:30:00Z", "2026-11-08T06:30:00Z")
        );
        // A package starting on the second 01:30 (EST) starts its first week right there.
        let starts = "2026-11-01T06:30:00Z";
        assert_eq!(
            anchored(WindowKind::Weekly, starts, starts, tz),
            win(starts, "2026-11-08T06:30:00Z")
        );
    }

    #[test]
    fn monthly_clamps_the_day_from_the_original_anchor_utc() {
        let starts = "2027-01-31T10:00:00Z";
        let cases = [
            (
                "2027-01-31T10:00:00Z",
                "2027-01-31T10:00:00Z",
                "2027-02-28T10:00:00Z",
            ),
            (
                "2027-02-15T00:00:00Z",
                "2027-01-31T10:00:00Z",
                "2027-02-28T10:00:00Z",
            ),
            (
                "2027-02-28T10:00:00Z",
                "2027-02-28T10:00:00Z",
                "2027-03-31T10:00:00Z",
            ),
            (
                "2027-03-01T00:00:00Z",
                "2027-02-28T10:00:00Z",
                "2027-03-31T10:00:00Z",
            ),
            (
                "2027-04-10T00:00:00Z",
                "2027-03-31T10:00:00Z",
                "2027-04-30T10:00:00Z",
            ),
            (
                "2027-05-30T12:00:00Z",
                "2027-04-30T10:00:00Z",
                "2027-05-31T10:00:00Z",
            ),
            (
                "2029-12-31T09:00:00Z",
                "2029-11-30T10:00:00Z",
                "2029-12-31T10:00:00Z",
            ),
            (
                "2029-12-31T12:00:00Z",
                "2029-12-31T10:00:00Z",
                "2030-01-31T10:00:00Z",
            ),
        ];
        for (at, start, end) in cases {
            assert_eq!(
                anchored(WindowKind::Monthly, at, starts, Tz::UTC),
                win(start, end),
                "at {at}"
            );
        }
    }

    #[test]
    fn monthly_leap_year() {
        let starts = "2028-01-31T10:00:00Z";
        assert_eq!(
            anchored(WindowKind::Monthly, "2028-02-10T00:00:00Z", starts, Tz::UTC),
            win("2028-01-31T10:00:00Z", "2028-02-29T10:00:00Z")
        );
        assert_eq!(
            anchored(WindowKind::Monthly, "2028-03-01T00:00:00Z", starts, Tz::UTC),
            win("2028-02-29T10:00:00Z", "2028-03-31T10:00:00Z")
        );
    }

    #[test]
    fn monthly_shanghai() {
        let tz = Tz::Asia__Shanghai;
        // Anchored 2027-01-31 10:00+08 = 02:00Z.
        let starts = "2027-01-31T02:00:00Z";
        assert_eq!(
            anchored(WindowKind::Monthly, "2027-02-28T01:59:59Z", starts, tz),
            win("2027-01-31T02:00:00Z", "2027-02-28T02:00:00Z")
        );
        assert_eq!(
            anchored(WindowKind::Monthly, "2027-02-28T02:00:00Z", starts, tz),
            win("2027-02-28T02:00:00Z", "2027-03-31T02:00:00Z")
        );
        assert_eq!(
            anchored(WindowKind::Monthly, "2027-04-01T00:00:00Z", starts, tz),
            win("2027-03-31T02:00:00Z", "2027-04-30T02:00:00Z")
        );
        // Leap year: 2028-01-31 10:00+08 -> 2028-02-29 10:00+08.
        assert_eq!(
            anchored(
                WindowKind::Monthly,
                "2028-02-01T00:00:00Z",
                "2028-01-31T02:00:00Z",
                tz
            ),
            win("2028-01-31T02:00:00Z", "2028-02-29T02:00:00Z")
        );
        // Local midnight anchor on the 31st: 2027-03-31 00:00+08 (= 03-30T16:00Z) -> 04-30 00:00+08.
        assert_eq!(
            anchored(
                WindowKind::Monthly,
                "2027-04-15T00:00:00Z",
                "2027-03-30T16:00:00Z",
                tz
            ),
            win("2027-03-30T16:00:00Z", "2027-04-29T16:00:00Z")
        );
    }

    #[test]
    fn monthly_new_york_keeps_local_wall_time() {
        // Anchored 2026-02-15 10:00 EST; 2026-03-15 10:00 is EDT.
        let tz = Tz::America__New_York;
        assert_eq!(
            anchored(
                WindowKind::Monthly,
                "2026-03-01T00:00:00Z",
                "2026-02-15T15:00:00Z",
                tz
            ),
            win("2026-02-15T15:00:00Z", "2026-03-15T14:00:00Z")
        );
        assert_eq!(
            anchored(
                WindowKind::Monthly,
                "2026-03-20T00:00:00Z",
                "2026-02-15T15:00:00Z",
                tz
            ),
            win("2026-03-15T14:00:00Z", "2026-04-15T14:00:00Z")
        );
    }

    #[test]
    fn monthly_far_from_the_anchor() {
        // 84,361 months after the anchor; 9000 is not a leap year.
        let w = window_at(
            WindowKind::Monthly,
            utc("9000-03-15T00:00:00Z"),
            utc("1970-01-31T10:00:00Z"),
            utc("9999-12-31T00:00:00Z"),
            Tz::UTC,
        );
        assert_eq!(w, Some(win("9000-02-28T10:00:00Z", "9000-03-31T10:00:00Z")));
    }

    #[test]
    fn end_is_clamped_to_expires_at() {
        let (starts, expires) = (utc("2026-05-01T08:00:00Z"), utc("2026-05-10T18:00:00Z"));
        let at = utc("2026-05-10T13:00:00Z");
        assert_eq!(
            window_at(WindowKind::Daily, at, starts, expires, Tz::UTC),
            Some(win("2026-05-10T00:00:00Z", "2026-05-10T18:00:00Z"))
        );
        assert_eq!(
            window_at(WindowKind::Weekly, at, starts, expires, Tz::UTC),
            Some(win("2026-05-08T08:00:00Z", "2026-05-10T18:00:00Z"))
        );
        assert_eq!(
            window_at(WindowKind::Monthly, at, starts, expires, Tz::UTC),
            Some(win("2026-05-01T08:00:00Z", "2026-05-10T18:00:00Z"))
        );
        // The first day is the whole calendar day: its start is not clamped to starts_at.
        assert_eq!(
            window_at(WindowKind::Daily, starts, starts, expires, Tz::UTC),
            Some(win("2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z"))
        );
        // Unclamped natural ends stay as they are.
        assert_eq!(
            window_at(WindowKind::Weekly, starts, starts, expires, Tz::UTC),
            Some(win("2026-05-01T08:00:00Z", "2026-05-08T08:00:00Z"))
        );
    }

    #[test]
    fn no_window_outside_the_package() {
        let (starts, expires) = (utc("2026-05-01T08:00:00Z"), utc("2026-06-01T08:00:00Z"));
        let ms = TimeDelta::milliseconds(1);
        for kind in WindowKind::ALL {
            for tz in [Tz::UTC, Tz::Asia__Shanghai, Tz::America__New_York] {
                assert_eq!(window_at(kind, expires, starts, expires, tz), None);
                assert_eq!(window_at(kind, expires + ms, starts, expires, tz), None);
                assert_eq!(window_at(kind, starts - ms, starts, expires, tz), None);
                // An empty or inverted package has no window at all.
                assert_eq!(window_at(kind, starts, starts, starts, tz), None);
                assert_eq!(window_at(kind, expires, expires, starts, tz), None);
                // The edges that are inside.
                let first = window_at(kind, starts, starts, expires, tz).expect("at starts_at");
                assert!(first.start <= starts && starts < first.end);
                let last = window_at(kind, expires - ms, starts, expires, tz).expect("last ms");
                assert_eq!(last.end, expires);
            }
        }
    }

    #[test]
    fn effective_used_only_counts_the_same_window() {
        let w = win("2026-05-10T00:00:00Z", "2026-05-11T00:00:00Z");
        let start_ms = w.start.timestamp_millis();
        assert_eq!(effective_used(Some(start_ms), 42, &w), 42);
        assert_eq!(effective_used(Some(start_ms - 86_400_000), 42, &w), 0);
        assert_eq!(effective_used(Some(start_ms + 1), 42, &w), 0);
        assert_eq!(effective_used(None, 42, &w), 0);
        assert_eq!(effective_used(Some(start_ms), 0, &w), 0);
    }

    #[test]
    fn extremes_of_the_time_range_do_not_panic() {
        let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
        let h = TimeDelta::hours(1);
        let ats = [min, min + h, DateTime::<Utc>::UNIX_EPOCH, max - h, max];
        for kind in WindowKind::ALL {
            for tz in ZONES
                .into_iter()
                .chain([Tz::Pacific__Kiritimati, Tz::Etc__GMTPlus12])
            {
                for at in ats {
                    // An open-ended package over the whole range, and one ending at `at + 1ns`.
                    let just_after = at.checked_add_signed(TimeDelta::nanoseconds(1));
                    for expires in [max, just_after.unwrap_or(max)] {
                        if let Some(w) = window_at(kind, at, min, expires, tz) {
                            assert!(w.start <= at && at < w.end && w.end <= expires);
                        }
                    }
                }
            }
            let mid = window_at(kind, DateTime::<Utc>::UNIX_EPOCH, min, max, Tz::UTC);
            assert!(mid.is_some(), "{kind:?}");
        }
    }

    // ---- property tests ----

    const ZONES: [Tz; 8] = [
        Tz::UTC,
        Tz::Asia__Shanghai,
        Tz::America__New_York,
        Tz::Europe__London,
        Tz::Australia__Lord_Howe,
        Tz::America__Santiago,
        Tz::America__Sao_Paulo,
        Tz::Asia__Kolkata,
    ];
    const DAY_MS: i64 = 86_400_000;
    /// 2014-01-01T00:00:00Z .. 2034-01-01T00:00:00Z
    const RANGE_MS: std::ops::Range<i64> = 1_388_534_400_000..2_019_686_400_000;

    fn from_ms(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("in range")
    }

    fn wall(tz: Tz, u: DateTime<Utc>) -> NaiveDateTime {
        u.with_timezone(&tz).naive_local()
    }

    /// Reference resolution of a local wall time, written independently of the module: the
    /// earlier instant when ambiguous; in a gap, the wall time read with the offset in force a
    /// day earlier (zones in `ZONES` change offset at most twice a year).
    fn oracle_resolve(tz: Tz, w: NaiveDateTime) -> DateTime<Utc> {
        match tz.from_local_datetime(&w) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
            LocalResult::None => {
                let before = tz.offset_from_utc_datetime(&(w - TimeDelta::days(1))).fix();
                (w - TimeDelta::seconds(i64::from(before.local_minus_utc()))).and_utc()
            }
        }
    }

    /// A starts_at: either any millisecond, or a night-time local wall time on a quarter hour
    /// of a Sunday (the day all DST changes of `ZONES` happen on in these years), so that
    /// weekly/monthly anchors often land in DST gaps and overlaps.
    fn arb_starts(tz: Tz) -> impl Strategy<Value = DateTime<Utc>> {
        prop_oneof![
            1 => RANGE_MS.prop_map(from_ms),
            2 => (RANGE_MS, 0u32..4, 0u32..4).prop_map(move |(ms, h, q)| {
                let date = from_ms(ms).date_naive();
                let to_sunday = (7 - date.weekday().num_days_from_sunday()) % 7;
                let sunday = date + TimeDelta::days(i64::from(to_sunday));
                let w = sunday.and_hms_opt(h, q * 15, 0).expect("valid time");
                oracle_resolve(tz, w)
            }),
        ]
    }

    fn max_days(kind: WindowKind) -> i64 {
        match kind {
            WindowKind::Daily => 400,
            WindowKind::Weekly => 3 * 366,
            WindowKind::Monthly => 6 * 366,
        }
    }

    /// (kind, tz, starts_at, expires_at) with a duration from a minute to several years.
    fn arb_package() -> impl Strategy<Value = (WindowKind, Tz, DateTime<Utc>, DateTime<Utc>)> {
        (
            prop::sample::select(WindowKind::ALL.to_vec()),
            prop::sample::select(ZONES.to_vec()),
        )
            .prop_flat_map(|(kind, tz)| {
                (
                    Just(kind),
                    Just(tz),
                    arb_starts(tz),
                    60_000i64..max_days(kind) * DAY_MS,
                )
            })
            .prop_map(|(kind, tz, starts, dur)| {
                (kind, tz, starts, starts + TimeDelta::milliseconds(dur))
            })
    }

    /// Checks what a single window of `kind` must look like.
    fn check_shape(
        kind: WindowKind,
        w: &Window,
        starts: DateTime<Utc>,
        expires: DateTime<Utc>,
        tz: Tz,
    ) -> Result<(), TestCaseError> {
        prop_assert!(w.start < w.end && w.end <= expires, "{w:?}");
        let clamped = w.end == expires;
        let len_min = (w.end - w.start).num_minutes();
        let local_start = wall(tz, w.start);
        let anchor = wall(tz, starts);
        match kind {
            WindowKind::Daily => {
                // The first instant of its local date.
                let before = wall(tz, w.start - TimeDelta::milliseconds(1));
                prop_assert!(before.date() < local_start.date(), "{w:?} {local_start}");
                let allowed: &[i64] = if tz == Tz::Australia__Lord_Howe {
                    &[23 * 60 + 30, 24 * 60, 24 * 60 + 30]
                } else {
                    &[23 * 60, 24 * 60, 25 * 60]
                };
                if clamped {
                    prop_assert!(len_min <= 25 * 60, "{w:?}");
                } else {
                    prop_assert!(allowed.contains(&len_min), "{w:?} is {len_min} min");
                }
            }
            WindowKind::Weekly => {
                prop_assert!(w.start >= starts);
                if w.start != starts {
                    let k = ((w.start - starts).num_minutes() as f64 / (7.0 * 1440.0)).round();
                    let expected = anchor + TimeDelta::days(7 * k as i64);
                    prop_assert!(k >= 1.0);
                    prop_assert_eq!(w.start, oracle_resolve(tz, expected), "week {}", k);
                }
                if !clamped {
                    prop_assert!((167 * 60..=169 * 60).contains(&len_min), "{w:?}");
                }
            }
            WindowKind::Monthly => {
                prop_assert!(w.start >= starts);
                let (d, ad) = (local_start.day(), anchor.day());
                let last_day = local_start
                    .date()
                    .checked_add_months(Months::new(1))
                    .and_then(|n| n.with_day(1))
                    .and_then(|n| n.pred_opt())
                    .expect("in range");
                prop_assert!(
                    d == ad || (d < ad && d == last_day.day()),
                    "start {} vs anchor {}",
                    local_start,
                    anchor
                );
                if w.start != starts {
                    let k = (local_start.year() - anchor.year()) * 12 + local_start.month0() as i32
                        - anchor.month0() as i32;
                    prop_assert!(k >= 1);
                    let expected = anchor
                        .checked_add_months(Months::new(k as u32))
                        .expect("in range");
                    prop_assert_eq!(w.start, oracle_resolve(tz, expected), "month {}", k);
                }
                if !clamped {
                    prop_assert!(
                        (28 * 1440 - 120..=31 * 1440 + 120).contains(&len_min),
                        "{w:?}"
                    );
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The hand-written day is chrono's, for any instant of years 1 to 9999.
        #[test]
        fn day_string_is_chronos_date(secs in -62_135_596_800i64..253_402_300_799, east in any::<bool>()) {
            let at = DateTime::from_timestamp(secs, 0).expect("in range");
            let tz = if east { chrono_tz::Pacific::Kiritimati } else { chrono_tz::Pacific::Pago_Pago };
            let d = at.with_timezone(&tz).date_naive();
            prop_assert_eq!(
                day_string(at, tz),
                format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
            );
        }

        /// Random instants inside random packages.
        #[test]
        fn window_contains_at_and_tiles(
            (kind, tz, starts, expires) in arb_package(),
            pos in 0.0f64..1.0,
            used in 0i64..1_000_000,
        ) {
            let span = (expires - starts).num_milliseconds();
            let at = starts + TimeDelta::milliseconds(((span as f64) * pos) as i64 % span);
            let w = window_at(kind, at, starts, expires, tz).expect("at is inside the package");
            prop_assert!(w.start <= at && at < w.end, "{w:?} does not contain {at}");
            prop_assert!(w.end <= expires);
            check_shape(kind, &w, starts, expires, tz)?;

            // The same window up to its last millisecond...
            let last = w.end - TimeDelta::milliseconds(1);
            prop_assert_eq!(window_at(kind, last, starts, expires, tz), Some(w));
            // ...and from its first one (when that is inside the package).
            if w.start >= starts {
                prop_assert_eq!(window_at(kind, w.start, starts, expires, tz), Some(w));
            }
            // The next window starts exactly at this one's end.
            if w.end < expires {
                let next = window_at(kind, w.end, starts, expires, tz).expect("next window");
                prop_assert_eq!(next.start, w.end);
                prop_assert_eq!(effective_used(Some(w.start.timestamp_millis()), used, &next), 0);
            } else {
                prop_assert_eq!(window_at(kind, w.end, starts, expires, tz), None);
            }
            prop_assert_eq!(effective_used(Some(w.start.timestamp_millis()), used, &w), used);
        }

        /// The cached window function answers what the calendar does, for instants in any
        /// order across several packages sharing the cache.
        #[test]
        fn cached_windows_equal_computed_ones(
            pkgs in proptest::collection::vec(arb_package(), 1..12),
            picks in proptest::collection::vec((0usize..12, 0.0f64..1.2), 1..64),
            // Then a few instants close by: mostly inside the same window, so answered from
            // the cache, sometimes across a reset.
            steps in proptest::collection::vec(-86_400_000i64..172_800_000, 1..6),
        ) {
            for (i, pos) in picks {
                let (kind, tz, starts, expires) = pkgs[i % pkgs.len()];
                let span = (expires - starts).num_milliseconds();
                let mut at = starts + TimeDelta::milliseconds(((span as f64) * pos) as i64);
                for step in std::iter::once(&0).chain(&steps) {
                    at += TimeDelta::milliseconds(*step);
                    prop_assert_eq!(
                        super::window_at(kind, at, starts, expires, tz),
                        window_uncached(kind, at, starts, expires, tz)
                    );
                }
            }
        }

        /// Walking a whole package window by window: no gaps, no overlaps, every window well shaped.
        #[test]
        fn windows_tile_the_whole_package((kind, tz, starts, expires) in arb_package()) {
            let mut w = window_at(kind, starts, starts, expires, tz).expect("first window");
            if kind == WindowKind::Daily {
                prop_assert!(w.start <= starts);
            } else {
                prop_assert_eq!(w.start, starts);
            }
            let mut count = 1;
            loop {
                check_shape(kind, &w, starts, expires, tz)?;
                if w.end == expires {
                    break;
                }
                let next = window_at(kind, w.end, starts, expires, tz).expect("next window");
                prop_assert_eq!(next.start, w.end);
                w = next;
                count += 1;
                prop_assert!(count <= 500, "too many windows");
            }
            prop_assert_eq!(window_at(kind, expires, starts, expires, tz), None);
        }
    }
}
