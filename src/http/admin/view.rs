//! View models shared by several pages: money cells, form values to show again after an
//! error, keys, request logs, windows of a grant, charts.

use std::collections::HashMap;
use std::fmt;

use chrono_tz::Tz;

use super::format;
use crate::billing::balance::{PackageStatus, WindowStatus};
use crate::billing::money::Usd;
use crate::billing::windows::WindowKind;
use crate::domain::{GrantStatus, KeyStatus};
use crate::i18n::Tr;
use crate::store::keys::ApiKey;
use crate::store::usage::RequestLog;

/// An amount as shown: exact text, and whether it is below zero.
#[derive(Clone, Debug)]
pub struct Money {
    pub text: String,
    pub negative: bool,
}

impl Money {
    pub fn new(v: Usd) -> Money {
        Money {
            text: format::usd(v),
            negative: v.0 < 0,
        }
    }
    pub fn opt(v: Option<Usd>) -> Money {
        Money {
            text: format::opt_usd(v),
            negative: v.is_some_and(|u| u.0 < 0),
        }
    }
    pub fn nanos(n: i64) -> Money {
        Money::new(Usd(n))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a form sent, to fill it in again when it is shown with an error. Secrets (passwords,
/// upstream keys) and the CSRF token are never kept.
#[derive(Clone, Debug, Default)]
pub struct FormValues(HashMap<String, String>);

impl FormValues {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a String>)>) -> Self {
        FormValues(
            pairs
                .into_iter()
                .filter(|(k, _)| !matches!(*k, "password" | "api_key" | "csrf"))
                .filter_map(|(k, v)| Some((k.to_string(), v?.clone())))
                .collect(),
        )
    }
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
    /// Whether a `<select>` option is the one sent (or, with nothing sent, the default).
    pub fn selected(&self, name: &str, value: &str, default: bool) -> bool {
        match self.0.get(name) {
            Some(v) => v == value,
            None => default,
        }
    }
}

pub fn status_label(tr: Tr, status: &str) -> &'static str {
    match status {
        "active" => tr.t("status.active"),
        "disabled" => tr.t("status.disabled"),
        "revoked" => tr.t("status.revoked"),
        "cancelled" => tr.t("status.cancelled"),
        "expired" => tr.t("status.expired"),
        "pending" => tr.t("status.pending"),
        _ => tr.t("status.unknown"),
    }
}

pub fn kind_label(tr: Tr, kind: &str) -> &'static str {
    match kind {
        "subscription" => tr.t("type.subscription"),
        "quota" => tr.t("type.quota"),
        _ => tr.t("status.unknown"),
    }
}

pub fn window_label(tr: Tr, w: WindowKind) -> &'static str {
    match w {
        WindowKind::Daily => tr.t("window.daily"),
        WindowKind::Weekly => tr.t("window.weekly"),
        WindowKind::Monthly => tr.t("window.monthly"),
    }
}

/// One limit of a grant, as a bar: used of limit, remaining, next reset.
pub struct Bar {
    pub label: &'static str,
    pub used: Money,
    pub limit: Money,
    pub remaining: Money,
    /// Width of the filled part, 0–100 (drawing only).
    pub percent: String,
    /// `ok`, `warn` (≥ 80 %) or `over` (no room).
    pub level: &'static str,
    /// When it resets, in the billing timezone; `—` for a lifetime quota.
    pub resets: String,
}

impl Bar {
    fn new(label: &'static str, used: Usd, limit: Usd, remaining: Usd, resets: String) -> Bar {
        let p = format::percent(used.0, limit.0);
        Bar {
            label,
            used: Money::new(used),
            limit: Money::new(limit),
            remaining: Money::new(remaining),
            percent: format!("{p:.1}"),
            level: if used >= limit {
                "over"
            } else if p >= 80.0 {
                "warn"
            } else {
                "ok"
            },
            resets,
        }
    }

    pub fn window(tr: Tr, w: &WindowStatus, tz: Tz) -> Bar {
        Bar::new(
            window_label(tr, w.window),
            w.used,
            w.limit,
            w.remaining,
            format::time(w.resets_at.timestamp_millis(), tz),
        )
    }
}

/// A granted package with its bars.
pub struct Grant {
    pub id: i64,
    pub name: String,
    pub kind: &'static str,
    /// `active`, `pending` (not started), `expired` or `cancelled`.
    pub state: &'static str,
    pub state_label: &'static str,
    pub cancelled: bool,
    pub starts: String,
    pub expires: String,
    pub bars: Vec<Bar>,
    pub total_used: Money,
    /// Held by requests in flight; shown only while there are any.
    pub reserved: Option<Money>,
}

impl Grant {
    pub fn new(tr: Tr, p: &PackageStatus, now_ms: i64, tz: Tz) -> Grant {
        let starts = p.starts_at.timestamp_millis();
        let expires = p.expires_at.timestamp_millis();
        let state = if p.status != GrantStatus::Active {
            "cancelled"
        } else if now_ms < starts {
            "pending"
        } else if now_ms >= expires {
            "expired"
        } else {
            "active"
        };
        let mut bars: Vec<Bar> = p.windows.iter().map(|w| Bar::window(tr, w, tz)).collect();
        if let Some(q) = &p.quota {
            bars.push(Bar::new(
                tr.t("window.total"),
                q.used,
                q.limit,
                q.remaining,
                "—".into(),
            ));
        }
        Grant {
            id: p.id,
            name: p.name.clone(),
            kind: kind_label(tr, p.kind.as_str()),
            state,
            state_label: status_label(tr, state),
            cancelled: p.status != GrantStatus::Active,
            starts: format::time(starts, tz),
            expires: format::time(expires, tz),
            bars,
            total_used: Money::new(p.total_used),
            reserved: (p.reserved.0 != 0).then(|| Money::new(p.reserved)),
        }
    }
}

/// A key in a table.
pub struct Key {
    pub id: i64,
    pub user_id: i64,
    pub username: String,
    pub name: String,
    pub prefix: String,
    pub active: bool,
    pub status_label: &'static str,
    pub models: String,
    pub limits: String,
    pub used_cost: Money,
    pub requests: String,
    pub tokens: String,
    pub last_used: String,
    pub expires: String,
    /// The IP allow-list, comma-separated; empty when any address may use the key.
    pub allowed_ips: String,
    /// Its budgets as of now: `daily $0.40 / $1.00 · total …`, or `—`.
    pub budget: String,
    /// (field, label, value for its input) of the four budgets, for the edit form.
    pub budget_inputs: Vec<(&'static str, &'static str, String)>,
}

impl Key {
    /// Add the key's budgets as of `now` (SPEC §11.3).
    pub fn with_budget(
        mut self,
        tr: Tr,
        k: &ApiKey,
        now: chrono::DateTime<chrono::Utc>,
        tz: Tz,
    ) -> Key {
        let st = crate::billing::key_budget::status(&k.budget, k.used_cost, k.created_at, now, tz);
        self.budget = if st.is_empty() {
            "—".to_string()
        } else {
            st.iter()
                .map(|b| {
                    format!(
                        "{} {} / {}",
                        tr.t(&format!("field.{}_limit", b.window)),
                        format::usd(b.used),
                        format::usd(b.limit)
                    )
                })
                .collect::<Vec<_>>()
                .join(" · ")
        };
        let plain = |v: Option<i64>| {
            v.map(|n| {
                crate::billing::money::Usd(n)
                    .to_decimal()
                    .normalize()
                    .to_string()
            })
            .unwrap_or_default()
        };
        let b = &k.budget;
        self.budget_inputs = vec![
            (
                "daily_limit",
                tr.t("field.daily_limit"),
                plain(b.daily_limit),
            ),
            (
                "weekly_limit",
                tr.t("field.weekly_limit"),
                plain(b.weekly_limit),
            ),
            (
                "monthly_limit",
                tr.t("field.monthly_limit"),
                plain(b.monthly_limit),
            ),
            (
                "total_limit",
                tr.t("field.total_limit"),
                plain(b.total_limit),
            ),
        ];
        self
    }

    pub fn new(tr: Tr, k: &ApiKey, username: String, tz: Tz) -> Key {
        let models = k.allowed_models();
        let mut limits = match (k.rpm_limit, k.tpm_limit) {
            (None, None) => "—".to_string(),
            (r, t) => format!(
                "{} RPM · {} TPM",
                r.map_or("∞".into(), format::count),
                t.map_or("∞".into(), format::count)
            ),
        };
        if let Some(n) = k.max_concurrency {
            let cap = format!("{} {}", format::count(n), tr.t("keys.concurrent"));
            limits = if k.rpm_limit.is_none() && k.tpm_limit.is_none() {
                cap
            } else {
                format!("{limits} · {cap}")
            };
        }
        Key {
            id: k.id,
            user_id: k.user_id,
            username,
            name: k.name.clone(),
            prefix: k.key_prefix.clone(),
            active: k.status == KeyStatus::Active,
            status_label: status_label(tr, k.status.as_str()),
            models: if models.is_empty() {
                tr.t("keys.all_models").to_string()
            } else {
                models.join(", ")
            },
            limits,
            used_cost: Money::nanos(k.used_cost),
            requests: format::count(k.request_count),
            tokens: format::count(
                k.input_tokens + k.output_tokens + k.cache_read_tokens + k.cache_write_tokens,
            ),
            last_used: format::opt_time(k.last_used_at, tz),
            expires: format::opt_time(k.expires_at, tz),
            allowed_ips: crate::store::column_to_list(&k.allowed_ips).join(", "),
            budget: String::new(),
            budget_inputs: Vec::new(),
        }
    }
}

/// A request log row.
pub struct Log {
    /// The row id, for the link to its page.
    pub id: i64,
    pub time: String,
    pub request_id: String,
    pub user_id: i64,
    pub username: String,
    pub key: String,
    pub account: String,
    pub model: String,
    pub endpoint: String,
    pub stream: bool,
    pub status: i64,
    pub ok: bool,
    /// `input / output / cache read / cache write`.
    pub tokens: String,
    pub cost: Money,
    pub billing_status: String,
    pub latency: String,
    pub error: String,
}

/// Names to show for ids in logs and usage tables.
#[derive(Default)]
pub struct Names {
    pub users: HashMap<i64, String>,
    /// Key id → (name, prefix).
    pub keys: HashMap<i64, (String, String)>,
    pub accounts: HashMap<i64, String>,
}

impl Names {
    pub fn user(&self, id: i64) -> String {
        self.users
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }
    /// `name (sk-abc…)`.
    pub fn key(&self, id: i64) -> String {
        self.keys
            .get(&id)
            .map(|(name, prefix)| format!("{name} ({prefix}…)"))
            .unwrap_or_else(|| format!("#{id}"))
    }
    pub fn key_name(&self, id: i64) -> String {
        self.keys
            .get(&id)
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| format!("#{id}"))
    }
    pub fn account(&self, id: i64) -> String {
        self.accounts
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }
}

impl Log {
    pub fn new(tr: Tr, l: &RequestLog, names: &Names, tz: Tz) -> Log {
        Log {
            id: l.id,
            time: format::time_secs(l.created_at, tz),
            request_id: l.request_id.clone(),
            user_id: l.user_id,
            username: names.user(l.user_id),
            key: names.key_name(l.api_key_id),
            account: l.account_id.map_or("—".into(), |a| names.account(a)),
            model: l.model.clone(),
            endpoint: l.endpoint.clone(),
            stream: l.stream != 0,
            status: l.status,
            ok: (200..300).contains(&l.status),
            tokens: [
                l.input_tokens,
                l.output_tokens,
                l.cache_read_tokens,
                l.cache_write_tokens,
            ]
            .map(format::count)
            .join(" / "),
            cost: Money::nanos(l.cost),
            billing_status: tr.vocab(l.billing_status).to_string(),
            latency: match l.ttfb_ms {
                Some(t) => format!("{} ms ({t} ms)", format::count(l.latency_ms)),
                None => format!("{} ms", format::count(l.latency_ms)),
            },
            error: l.error.clone().unwrap_or_default(),
        }
    }
}

/// Look up the names of the users, keys and accounts these logs mention.
pub async fn names_for_logs(
    st: &crate::state::AppState,
    logs: &[RequestLog],
) -> crate::store::Result<Names> {
    let mut user_ids: Vec<i64> = logs.iter().map(|l| l.user_id).collect();
    let mut key_ids: Vec<i64> = logs.iter().map(|l| l.api_key_id).collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    key_ids.sort_unstable();
    key_ids.dedup();
    names(st, &user_ids, &key_ids).await
}

/// Names of these users and keys, and of every account.
pub async fn names(
    st: &crate::state::AppState,
    user_ids: &[i64],
    key_ids: &[i64],
) -> crate::store::Result<Names> {
    let users = st.db.user_names(user_ids).await?.into_iter().collect();
    let keys = st
        .db
        .key_labels(Some(key_ids), 0)
        .await?
        .into_iter()
        .map(|k| (k.id, (k.name, k.key_prefix)))
        .collect();
    let accounts = st
        .db
        .list_accounts(None, 1000)
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    Ok(Names {
        users,
        keys,
        accounts,
    })
}

/// A bar chart drawn as inline SVG on the server: bar geometry, gridlines and labels.
pub struct Chart {
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub bars: Vec<ChartBar>,
    pub grid: Vec<GridLine>,
    /// A few x-axis labels (not every day, so they never overlap).
    pub ticks: Vec<Tick>,
    pub empty: bool,
}

pub struct ChartBar {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    /// Tooltip: `2026-01-31: $1.25`.
    pub tip: String,
}

pub struct GridLine {
    pub y: String,
    pub label: String,
}

pub struct Tick {
    pub x: String,
    pub label: String,
}

impl Chart {
    const LEFT: f64 = 72.0;
    const BOTTOM: f64 = 22.0;
    const TOP: f64 = 8.0;

    /// `points`: (x label, value, value as shown), drawn `width` units wide. The axis has
    /// four steps of a round size, at least `min_step` (1 for counts, so gridlines stay
    /// whole). `fmt_axis` writes its values.
    pub fn bars(
        title: String,
        width: u32,
        points: &[(String, f64, String)],
        min_step: f64,
        fmt_axis: impl Fn(f64) -> String,
    ) -> Chart {
        let height = 220u32;
        let plot_w = width as f64 - Self::LEFT - 8.0;
        let plot_h = height as f64 - Self::TOP - Self::BOTTOM;
        let max = points.iter().map(|p| p.1).fold(0.0f64, f64::max);
        let top = 4.0 * nice_ceiling(max / 4.0).max(min_step);
        let n = points.len().max(1) as f64;
        let slot = plot_w / n;
        let bar_w = (slot * 0.7).max(1.0);
        let bars = points
            .iter()
            .enumerate()
            .map(|(i, (label, v, shown))| {
                let h = if top > 0.0 { v / top * plot_h } else { 0.0 };
                ChartBar {
                    x: format!("{:.1}", Self::LEFT + i as f64 * slot + (slot - bar_w) / 2.0),
                    y: format!("{:.1}", Self::TOP + plot_h - h),
                    w: format!("{bar_w:.1}"),
                    h: format!("{h:.1}"),
                    tip: format!("{label}: {shown}"),
                }
            })
            .collect();
        let grid = (0..=4)
            .map(|k| {
                let v = top * k as f64 / 4.0;
                GridLine {
                    y: format!("{:.1}", Self::TOP + plot_h - plot_h * k as f64 / 4.0),
                    label: fmt_axis(v),
                }
            })
            .collect();
        let every = (points.len() / 6).max(1);
        let ticks = points
            .iter()
            .enumerate()
            .filter(|(i, _)| i % every == 0)
            .map(|(i, (label, _, _))| Tick {
                x: format!("{:.1}", Self::LEFT + i as f64 * slot + slot / 2.0),
                label: label.clone(),
            })
            .collect();
        Chart {
            title,
            width,
            height,
            bars,
            grid,
            ticks,
            empty: max <= 0.0,
        }
    }

    pub fn axis_x(&self) -> String {
        format!("{:.1}", Self::LEFT)
    }
    pub fn axis_right(&self) -> String {
        format!("{:.1}", self.width as f64 - 8.0)
    }
    pub fn baseline(&self) -> String {
        format!("{:.1}", self.height as f64 - Self::BOTTOM)
    }
    pub fn label_y(&self) -> String {
        format!("{:.1}", self.height as f64 - 6.0)
    }
}

/// 1, 2, 2.5 or 5 × a power of ten, at least `v` (1 for nothing). The axis of every chart.
pub(super) fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// `{field}: {problem}` in the page's language.
pub fn form_error(tr: Tr, field: &str, problem_key: &str) -> String {
    format!(
        "{}{}{}",
        tr.field(field),
        tr.t("form.separator"),
        tr.t(problem_key)
    )
}

/// Models typed as a list separated by commas, spaces or lines.
pub fn model_list(v: Option<&str>) -> Vec<String> {
    v.unwrap_or("")
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

/// A whole number typed in a form: `None` when empty; `Err` with a message when not a number.
pub fn form_int(tr: Tr, field: &str, v: Option<&str>) -> Result<Option<i64>, String> {
    match v.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .map(Some)
            .map_err(|_| form_error(tr, field, "form.not_a_number")),
    }
}

/// An amount of USD typed in a form, checked here so the message is in the page's language:
/// `None` when empty.
pub fn form_money(tr: Tr, field: &str, v: Option<&str>) -> Result<Option<Usd>, String> {
    match v.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<Usd>()
            .map(Some)
            .map_err(|_| form_error(tr, field, "form.not_money")),
    }
}

/// A form that sets a status (enable, disable, revoke, cancel), with where to go back to.
#[derive(serde::Deserialize)]
pub struct StatusForm {
    pub status: Option<String>,
    pub back: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_axis_is_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert!((nice_ceiling(0.00011) - 0.0002).abs() < 1e-12);
        assert_eq!(nice_ceiling(230.0), 250.0);
        let c = Chart::bars(
            "t".into(),
            720,
            &[("a".into(), 1.0, "1".into()), ("b".into(), 2.0, "2".into())],
            1.0,
            |v| format!("{v}"),
        );
        assert_eq!(c.bars.len(), 2);
        let labels: Vec<&str> = c.grid.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, ["0", "1", "2", "3", "4"]);
        let c = Chart::bars(
            "t".into(),
            720,
            &[("a".into(), 0.00022, String::new())],
            0.0,
            |v| format!("{v:.4}"),
        );
        let labels: Vec<&str> = c.grid.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, ["0.0000", "0.0001", "0.0002", "0.0003", "0.0004"]);
        assert!(!c.empty);
    }
}
