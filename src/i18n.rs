//! The admin UI's two languages: English and Simplified Chinese.
//!
//! A page's language comes from `?lang=en` / `?lang=zh-CN` (then remembered in the
//! `tollgate_lang` cookie), else that cookie, else `Accept-Language`, else English. Every label
//! is a key looked up in both catalogues below; a test checks that they have the same keys and
//! that every key the templates and the UI code use exists.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::domain::Vocabulary;

pub const LANG_COOKIE: &str = "tollgate_lang";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lang {
    #[default]
    En,
    ZhCn,
}

impl Lang {
    /// The code used in `?lang=`, the cookie and `<html lang>`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::ZhCn => "zh-CN",
        }
    }

    /// `en`, `zh-CN` and their usual spellings (case-insensitive; `zh`, `zh-Hans`, `zh_CN`).
    pub fn parse(s: &str) -> Option<Lang> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        let primary = s.split('-').next().unwrap_or("");
        match primary {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::ZhCn),
            _ => None,
        }
    }

    /// The supported language the client prefers most (by `q`, then by order); English when
    /// none is supported.
    pub fn from_accept_language(header: &str) -> Lang {
        let mut best: Option<(f32, Lang)> = None;
        for part in header.split(',') {
            let mut it = part.split(';');
            let tag = it.next().unwrap_or("").trim();
            let q = it
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if q <= 0.0 {
                continue;
            }
            let lang = if tag == "*" {
                Some(Lang::En)
            } else {
                Lang::parse(tag)
            };
            if let Some(l) = lang {
                if best.is_none_or(|(bq, _)| q > bq) {
                    best = Some((q, l));
                }
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    fn catalogue(self) -> &'static HashMap<&'static str, &'static str> {
        static EN_MAP: LazyLock<HashMap<&str, &str>> =
            LazyLock::new(|| EN.iter().copied().collect());
        static ZH_MAP: LazyLock<HashMap<&str, &str>> =
            LazyLock::new(|| ZH.iter().copied().collect());
        match self {
            Lang::En => &EN_MAP,
            Lang::ZhCn => &ZH_MAP,
        }
    }
}

/// A translator for one language; templates call `ctx.t("key")`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tr {
    pub lang: Lang,
}

impl Tr {
    pub fn new(lang: Lang) -> Tr {
        Tr { lang }
    }

    /// The text of `key`. A missing key (which the catalogue test rules out) shows the key
    /// itself rather than failing the page.
    pub fn t(&self, key: &str) -> &'static str {
        match self.lang.catalogue().get(key) {
            Some(v) => v,
            None => {
                tracing::warn!(key, lang = self.lang.code(), "missing translation");
                Lang::En.catalogue().get(key).copied().unwrap_or("?")
            }
        }
    }

    /// The label of a vocabulary value (a status, billing status, health, provider, role or
    /// package type) in this language: the catalogue key is [`vocab_key`].
    pub fn vocab<T: Vocabulary>(&self, v: T) -> &'static str {
        self.t(&vocab_key(v))
    }

    /// The label of a form or API field (`field.{name}`), or the name itself.
    pub fn field<'a>(&self, name: &'a str) -> &'a str {
        self.lang
            .catalogue()
            .get(format!("field.{name}").as_str())
            .copied()
            .unwrap_or(name)
    }
}

/// The catalogue section of a vocabulary: every status shares `status.`, so one word has one
/// translation whatever object it is the status of.
fn vocab_section(what: &str) -> &'static str {
    match what {
        "billing status" => "billing",
        "account health" => "health",
        "provider" => "provider",
        "role" => "role",
        "package type" => "type",
        // user, key, package, grant and account statuses
        _ => "status",
    }
}

/// `{section}.{spelling}`, such as `billing.estimated` or `health.cooling_down`.
pub fn vocab_key<T: Vocabulary>(v: T) -> String {
    format!("{}.{}", vocab_section(T::WHAT), v.as_str())
}

const EN: &[(&str, &str)] = &[
    ("nav.label", "Main"),
    ("nav.dashboard", "Dashboard"),
    ("nav.users", "Users"),
    ("nav.packages", "Packages"),
    ("nav.keys", "Keys"),
    ("nav.accounts", "Upstream accounts"),
    ("nav.models", "Model prices"),
    ("nav.usage", "Usage"),
    ("nav.logs", "Request logs"),
    ("nav.logout", "Sign out"),
    ("nav.signed_in_as", "Signed in as"),
    ("footer.times_in", "Times are shown in"),
    ("action.search", "Search"),
    ("action.clear", "Clear"),
    ("action.filter", "Apply"),
    ("action.save", "Save"),
    ("action.cancel", "Cancel"),
    ("action.edit", "Edit"),
    ("action.enable", "Enable"),
    ("action.disable", "Disable"),
    ("pager.label", "Pages"),
    ("pager.prev", "Previous"),
    ("pager.next", "Next"),
    ("pager.first", "First page"),
    ("pager.page", "Page"),
    ("pager.newest", "Newest"),
    ("pager.older", "Older"),
    ("status.active", "Active"),
    ("status.disabled", "Disabled"),
    ("status.revoked", "Revoked"),
    ("status.cancelled", "Cancelled"),
    ("status.expired", "Expired"),
    ("status.pending", "Not started"),
    ("status.unknown", "Unknown"),
    ("type.subscription", "Subscription"),
    ("type.quota", "Quota"),
    ("role.admin", "Admin"),
    ("role.user", "User"),
    ("window.daily", "Daily"),
    ("window.weekly", "Weekly"),
    ("window.monthly", "Monthly"),
    ("window.total", "Total quota"),
    ("field.username", "Username"),
    ("field.password", "Password"),
    ("field.role", "Role"),
    ("field.status", "Status"),
    ("field.created", "Created"),
    ("field.name", "Name"),
    ("field.type", "Type"),
    ("field.daily_quota", "Daily limit"),
    ("field.weekly_quota", "Weekly limit"),
    ("field.monthly_quota", "Monthly limit"),
    ("field.quota_total", "Total quota"),
    ("field.duration_days", "Duration (days)"),
    ("field.package_id", "Package"),
    ("field.starts_at", "Starts at"),
    ("field.allowed_models", "Allowed models"),
    ("field.rpm_limit", "Requests per minute"),
    ("field.tpm_limit", "Tokens per minute"),
    ("field.allowed_ips", "Allowed IPs"),
    ("field.expires_at", "Expires at"),
    ("field.daily_limit", "Daily budget"),
    ("field.weekly_limit", "Weekly budget"),
    ("field.monthly_limit", "Monthly budget"),
    ("field.total_limit", "Total budget"),
    ("keys.budget", "Budget"),
    ("keys.save_budget", "Save budget"),
    ("field.max_concurrency", "Max concurrent requests"),
    ("keys.concurrent", "in flight at most"),
    ("field.provider", "Provider"),
    ("field.base_url", "Base URL"),
    ("field.api_key", "Secret key"),
    ("field.models", "Models"),
    ("field.model_map", "Model aliases"),
    ("field.priority", "Priority"),
    ("field.weight", "Weight"),
    ("field.model", "Model"),
    ("field.input", "Input / 1M"),
    ("field.output", "Output / 1M"),
    ("field.cache_read", "Cache read / 1M"),
    ("field.cache_write", "Cache write / 1M"),
    ("field.cost", "Cost"),
    ("field.requests", "Requests"),
    ("field.tokens", "Tokens"),
    ("form.separator", ": "),
    ("form.choose", "choose one"),
    ("form.choose_option", "Choose…"),
    ("form.not_a_time", "is not a date and time"),
    ("form.not_a_number", "must be a whole number"),
    ("form.not_money", "must be an amount in USD, such as 12.5"),
    ("form.required", "is required"),
    ("notice.logged_out", "You are signed out."),
    ("notice.user_created", "User created."),
    ("notice.user_updated", "User updated."),
    ("notice.package_created", "Package created."),
    ("notice.package_updated", "Package updated."),
    ("notice.granted", "Package granted."),
    ("notice.grant_updated", "Grant updated."),
    ("notice.key_created", "Key created."),
    ("notice.key_updated", "Key updated."),
    ("notice.account_created", "Upstream account added."),
    ("notice.account_updated", "Upstream account updated."),
    ("notice.price_saved", "Prices saved."),
    ("error.unauthorized", "The admin token is wrong. Sign in, or send the token configured as admin.api_token."),
    ("error.too_large", "The form is too large."),
    ("error.csrf", "This form has expired or was not sent from this site, so nothing was changed. Go back, reload the page and try again."),
    ("error.not_found", "There is nothing here. It may have been removed, or the link is wrong."),
    ("error.internal", "Something went wrong on the server. The details are in the server log."),
    ("error.conflict", "That name is already taken. Choose another."),
    ("problem.or", " or "),
    ("problem.required", "is required"),
    ("problem.empty", "must not be empty"),
    ("problem.length", "must be {min} to {max} characters"),
    ("problem.too_short", "must be at least {min} characters"),
    ("problem.bad_characters", "must not contain control characters or leading/trailing spaces"),
    ("problem.unknown_value", "must be {allowed}"),
    ("problem.unknown_status", "must be one of: {allowed}"),
    ("problem.not_positive", "must be greater than 0"),
    ("problem.not_positive_integer", "must be a positive whole number"),
    ("problem.negative", "must not be negative"),
    ("problem.out_of_range", "must be between {min} and {max}"),
    ("problem.not_a_time", "must be an RFC 3339 time such as 2026-01-31T10:00:00Z"),
    ("problem.not_a_day", "must be a day as YYYY-MM-DD"),
    ("problem.not_a_cursor", "is not a cursor this API returned"),
    ("problem.not_a_url", "must be an http(s) URL such as https://api.openai.com/v1"),
    ("problem.url_query_or_fragment", "must not have a query (?…) or a fragment (#…): the endpoint's path is added to it"),
    ("problem.anthropic_base_with_v1", "must not end in /v1 for an Anthropic account: tollgate adds /v1/messages itself (e.g. https://api.anthropic.com)"),
    ("problem.openai_base_without_v1", "must be https://api.openai.com/v1 for api.openai.com: tollgate adds /chat/completions to it"),
    ("warning.no_version_path", "has no version in its path (such as /v1): requests go to base_url/chat/completions, which most OpenAI-compatible upstreams only serve under /v1"),
    ("problem.empty_model_name", "model names must not be empty"),
    ("problem.not_a_cidr", "`{entry}` is not an IP address or CIDR range such as 10.0.0.0/8 or 2001:db8::/32"),
    ("problem.subscription_needs_window", "a subscription needs at least one of daily_quota, weekly_quota, monthly_quota"),
    ("problem.total_on_subscription", "is for `quota` packages; a subscription has daily/weekly/monthly quotas"),
    ("problem.quota_needs_total", "is required for a `quota` package"),
    ("problem.windows_on_quota", "a `quota` package has only quota_total; use `subscription` for windowed limits"),
    ("problem.no_such_package", "package {id} does not exist"),
    ("problem.package_disabled", "this package is disabled"),
    ("problem.not_a_model_map", "must be a JSON object of client model names to upstream model names, none of them empty"),
    ("field.limit", "Page size"),
    ("field.cursor", "Cursor"),
    ("field.from", "From"),
    ("field.to", "To"),
    ("field.status_class", "Outcome"),
    ("field.billing_status", "Billing status"),
    ("error.back", "Back to the dashboard"),
    ("login.title", "Sign in to tollgate"),
    ("login.submit", "Sign in"),
    ("login.failed", "Wrong username or password."),
    ("login.expired", "The sign-in form expired. Please try again."),
    ("login.throttled", "Too many failed sign-ins from this address. Try again in {seconds} s."),
    ("dashboard.title", "Dashboard"),
    ("dashboard.today", "Today,"),
    ("dashboard.cost_today", "Cost today"),
    ("dashboard.requests_today", "Requests today"),
    ("dashboard.active_keys", "Active keys"),
    ("dashboard.active_accounts", "Active upstream accounts"),
    ("dashboard.active_grants", "Active packages"),
    ("dashboard.top_users", "Top users today"),
    ("dashboard.top_models", "Top models today"),
    ("dashboard.top_accounts", "Top upstream accounts today"),
    ("dashboard.nothing_today", "No requests yet today."),
    ("dashboard.cost_14_days", "Cost per day, last 14 days (USD)"),
    ("dashboard.stats_unavailable", "Today's real-time counters cannot be read right now (is Redis reachable?)."),
    ("balance.quota", "Quota balance"),
    ("balance.daily", "Subscription daily balance"),
    ("balance.weekly", "Weekly balance"),
    ("balance.monthly", "Monthly balance"),
    ("users.title", "Users"),
    ("users.search_placeholder", "Search by username"),
    ("users.keys", "Keys (active / all)"),
    ("users.today_cost", "Cost today"),
    ("users.none", "No users found."),
    ("users.balance_hint", "Balances are limit minus what was used in the current window, summed over the user's active packages; — means no active package limits that window."),
    ("users.new", "New user"),
    ("users.create", "Create user"),
    ("users.password_hint", "admins only, at least 8 characters"),
    ("users.disable", "Disable user"),
    ("users.disable_confirm", "Disable this user? Their keys stop working."),
    ("users.recent_requests", "Recent requests"),
    ("users.all_requests", "All requests of this user"),
    ("grants.title", "Packages"),
    ("grants.none", "No packages granted yet."),
    ("grants.remaining", "Remaining"),
    ("grants.resets", "Resets"),
    ("grants.total_used", "Used in total:"),
    ("grants.reserved", "held by requests in flight:"),
    ("grants.cancel", "Cancel grant"),
    ("grants.cancel_confirm", "Cancel this package for the user?"),
    ("grants.reactivate", "Re-activate"),
    ("grants.new", "Grant a package"),
    ("grants.grant", "Grant"),
    ("grants.starts_hint", "empty = now"),
    ("keys.title", "API keys"),
    ("keys.prefix", "Key"),
    ("keys.user", "User"),
    ("keys.models", "Models"),
    ("keys.all_models", "all models"),
    ("keys.limits", "Rate limits"),
    ("keys.last_used", "Last used"),
    ("keys.expires", "Expires"),
    ("keys.revoke", "Revoke"),
    ("keys.revoke_confirm", "Revoke this key? Requests with it will be refused."),
    ("keys.none", "No keys."),
    ("keys.new", "Create a key"),
    ("keys.create", "Create key"),
    ("keys.models_hint", "comma-separated; empty = all"),
    ("keys.ips_hint", "addresses or CIDR ranges, comma-separated; empty = any address"),
    ("keys.created_once", "Copy this key now: it is shown only once."),
    ("keys.copy", "Copy"),
    ("keys.copied", "Copied"),
    ("keys.hint", "Create keys on a user's page. A key's secret is shown once, when it is created."),
    ("packages.title", "Packages"),
    ("packages.none", "No packages yet."),
    ("packages.new", "New package"),
    ("packages.create", "Create package"),
    ("packages.no_limit", "no limit"),
    ("packages.quota_only", "quota packages only"),
    ("packages.hint", "A subscription has daily, weekly and monthly limits; a quota package has one total that never resets. Granting copies the limits, so changing the catalogue never changes existing grants."),
    ("accounts.title", "Upstream accounts"),
    ("accounts.none", "No upstream accounts yet."),
    ("accounts.new", "Add an upstream account"),
    ("accounts.create", "Add account"),
    ("accounts.edit", "Edit account"),
    ("accounts.health", "Health"),
    ("accounts.test", "Test"),
    ("accounts.test_ok", "Test of {name}: upstream answered {status} in {ms} ms."),
    ("accounts.test_failed", "Test of {name} failed after {ms} ms: {error}"),
    ("accounts.warning", "Check the base URL"),
    ("accounts.last_error", "Last error"),
    ("accounts.last_used", "Last used"),
    ("accounts.secret_masked", "Stored on the server; never shown"),
    ("accounts.secret_hint", "the provider's API key"),
    ("accounts.secret_keep", "leave blank to keep the stored key"),
    ("accounts.base_url_hint", "OpenAI: https://api.openai.com/v1 · Anthropic: https://api.anthropic.com"),
    ("accounts.models_hint", "comma-separated; empty = all models"),
    ("accounts.model_map_hint", "JSON: {\"client name\": \"upstream name\"}; clients ask for the first, the upstream gets the second; empty = none"),
    ("models.title", "Model prices"),
    ("models.hint", "Prices are USD per 1M tokens. An empty cache price charges cache tokens at the input price."),
    ("models.none", "No prices yet. A model without a price cannot be used."),
    ("models.new", "Add or change a model"),
    ("models.updated", "Updated"),
    ("models.same_as_input", "= input"),
    ("models.unpriced", "Asked for, without a price"),
    ("models.unpriced_hint", "Clients asked for these models and were refused: nothing prices them. Price one to let its requests through."),
    ("models.last_seen", "Last asked"),
    ("models.price_it", "Price it"),
    ("models.import", "Import a price list"),
    ("models.import_hint", "A file in the format of LiteLLM's model_prices_and_context_window.json. Per-token prices become prices per 1M tokens; you review the changes before anything is written."),
    ("models.import_file", "File"),
    ("models.import_list", "Price list (JSON)"),
    ("models.import_providers", "Providers (litellm_provider)"),
    ("models.import_modes", "Modes"),
    ("models.import_preview", "Review changes"),
    ("models.import_review", "Review the price import"),
    ("models.import_added", "New models"),
    ("models.import_changed", "Changed prices"),
    ("models.import_unchanged", "Unchanged"),
    ("models.import_not_taken", "Other providers or modes"),
    ("models.import_skipped", "Skipped"),
    ("models.import_old_new", "Old → new"),
    ("models.import_apply", "Apply"),
    ("models.import_nothing", "Nothing to change: the stored prices already match the list."),
    ("models.import_invalid", "Not a price list: "),
    ("models.import_bad_plan", "The confirmed import could not be read; review the list again."),
    ("models.import.skip.no_token_price", "no per-token input and output price"),
    ("models.import.skip.not_a_number", "{field} `{value}` is not a number"),
    ("models.import.skip.negative", "{field} `{value}` is negative"),
    ("models.import.skip.too_precise", "{field} `{value}` is finer than one nano-dollar per 1M tokens"),
    ("models.import.skip.name_too_long", "the model name is longer than 191 bytes"),
    ("notice.prices_imported", "Price list imported."),
    ("usage.title", "Usage"),
    ("usage.from", "From"),
    ("usage.to", "To"),
    ("usage.cost_per_day", "Cost per day (USD)"),
    ("usage.requests_per_day", "Requests per day"),
    ("usage.cost_per_day_by_user", "Cost per day by user (USD)"),
    ("usage.requests_per_day_by_user", "Requests per day by user"),
    ("usage.cost_per_day_by_key", "Cost per day by key (USD)"),
    ("usage.requests_per_day_by_key", "Requests per day by key"),
    ("usage.by_user", "By user"),
    ("usage.by_model", "By model"),
    ("usage.by_account", "By upstream account"),
    ("usage.by_key", "By key"),
    ("usage.by_day", "By day"),
    ("usage.day", "Day"),
    ("filter.all_users", "All users"),
    ("filter.all_keys", "All keys"),
    ("filter.all_models", "All models"),
    ("filter.all_accounts", "All accounts"),
    ("chart.no_data", "No usage in this range."),
    ("chart.other", "Other models"),
    ("chart.other_users", "Other users"),
    ("chart.other_keys", "Other keys"),
    ("logs.title", "Request logs"),
    ("logs.time", "Time"),
    ("logs.user", "User"),
    ("logs.key", "Key"),
    ("logs.account", "Upstream account"),
    ("logs.endpoint", "Endpoint"),
    ("logs.stream", "stream"),
    ("logs.status", "Status"),
    ("logs.input", "Input tokens"),
    ("logs.output", "Output tokens"),
    ("logs.cache", "Cache read / write"),
    ("logs.tokens", "Tokens in / out / cache r / w"),
    ("logs.tokens_title", "input / output / cache read / cache write"),
    ("logs.billing", "Billing"),
    ("logs.latency", "Latency (first byte)"),
    ("logs.error", "Error"),
    ("billing.complete", "Complete"),
    ("billing.partial", "Partial (client left)"),
    ("billing.estimated", "Estimated"),
    ("billing.void", "Void (not charged)"),
    ("billing.disputed", "Disputed (charged at estimate)"),
    ("billing.refused", "Refused"),
    ("health.ok", "OK"),
    ("health.cooling_down", "Cooling down"),
    ("health.auth_failed", "Secret refused by upstream"),
    ("provider.openai", "OpenAI"),
    ("provider.anthropic", "Anthropic"),
    // The log filters, the log page and the CSV downloads.
    ("action.download_csv", "Download CSV"),
    ("logs.from", "From"),
    ("logs.to", "Before"),
    ("logs.status_class", "Outcome"),
    ("filter.all_statuses", "All outcomes"),
    ("filter.all_billing", "All billing statuses"),
    ("logs.class_2xx", "Succeeded (2xx)"),
    ("logs.class_4xx", "Client errors (4xx)"),
    ("logs.class_5xx", "Server errors (5xx)"),
    ("logs.class_refused", "Refused at admission"),
    ("logs.filter_hint", "Times are on the billing timezone's clock; the range includes From and stops before Before. The CSV has every matching row, not only this page."),
    ("logs.cache_read", "Cache read tokens"),
    ("logs.cache_write", "Cache write tokens"),
    ("log.title", "Request"),
    ("log.request", "Request"),
    ("log.request_id", "Request ID"),
    ("log.grant", "Paying package (grant)"),
    ("log.latency", "Latency"),
    ("log.ttfb", "Time to first byte"),
    ("log.tokens_and_cost", "Tokens and cost"),
    ("log.class", "Class"),
    ("log.total", "Total"),
    ("log.no_split", "The cost is not split by class: the model's price changed after this request, or the charge was an estimate."),
    ("logs.none", "No requests."),
    ("nav.audit", "Audit log"),
    ("audit.title", "Audit log"),
    ("audit.actor", "Who"),
    ("audit.source", "Via"),
    ("audit.all_sources", "All"),
    ("audit.source_api", "API"),
    ("audit.source_ui", "Web UI"),
    ("audit.source_login", "Sign-in"),
    ("audit.path", "Path contains"),
    ("audit.action", "What"),
    ("audit.target", "Target"),
    ("audit.fields", "Fields sent"),
    ("audit.outcome_success", "Succeeded"),
    ("audit.outcome_failure", "Failed"),
    ("audit.outcome_throttled", "Throttled"),
    ("audit.none", "Nothing recorded."),
];

const ZH: &[(&str, &str)] = &[
    ("nav.label", "主导航"),
    ("nav.dashboard", "概览"),
    ("nav.users", "用户"),
    ("nav.packages", "套餐"),
    ("nav.keys", "密钥"),
    ("nav.accounts", "上游账号"),
    ("nav.models", "模型价格"),
    ("nav.usage", "用量"),
    ("nav.logs", "请求日志"),
    ("nav.logout", "退出登录"),
    ("nav.signed_in_as", "当前登录"),
    ("footer.times_in", "时间均按此时区显示："),
    ("action.search", "搜索"),
    ("action.clear", "清除"),
    ("action.filter", "筛选"),
    ("action.save", "保存"),
    ("action.cancel", "取消"),
    ("action.edit", "编辑"),
    ("action.enable", "启用"),
    ("action.disable", "停用"),
    ("pager.label", "分页"),
    ("pager.prev", "上一页"),
    ("pager.next", "下一页"),
    ("pager.first", "第一页"),
    ("pager.page", "第"),
    ("pager.newest", "最新"),
    ("pager.older", "更早"),
    ("status.active", "正常"),
    ("status.disabled", "已停用"),
    ("status.revoked", "已吊销"),
    ("status.cancelled", "已取消"),
    ("status.expired", "已过期"),
    ("status.pending", "未开始"),
    ("status.unknown", "未知"),
    ("type.subscription", "订阅"),
    ("type.quota", "额度"),
    ("role.admin", "管理员"),
    ("role.user", "普通用户"),
    ("window.daily", "每日"),
    ("window.weekly", "每周"),
    ("window.monthly", "每月"),
    ("window.total", "总额度"),
    ("field.username", "用户名"),
    ("field.password", "密码"),
    ("field.role", "角色"),
    ("field.status", "状态"),
    ("field.created", "创建时间"),
    ("field.name", "名称"),
    ("field.type", "类型"),
    ("field.daily_quota", "每日限额"),
    ("field.weekly_quota", "每周限额"),
    ("field.monthly_quota", "每月限额"),
    ("field.quota_total", "总额度"),
    ("field.duration_days", "有效期（天）"),
    ("field.package_id", "套餐"),
    ("field.starts_at", "开始时间"),
    ("field.allowed_models", "允许的模型"),
    ("field.rpm_limit", "每分钟请求数"),
    ("field.tpm_limit", "每分钟 Token 数"),
    ("field.allowed_ips", "允许的 IP"),
    ("field.expires_at", "过期时间"),
    ("field.daily_limit", "每日预算"),
    ("field.weekly_limit", "每周预算"),
    ("field.monthly_limit", "每月预算"),
    ("field.total_limit", "总预算"),
    ("keys.budget", "预算"),
    ("keys.save_budget", "保存预算"),
    ("field.max_concurrency", "最大并发请求数"),
    ("keys.concurrent", "并发上限"),
    ("field.provider", "服务商"),
    ("field.base_url", "接口地址"),
    ("field.api_key", "密钥"),
    ("field.models", "模型"),
    ("field.model_map", "模型别名"),
    ("field.priority", "优先级"),
    ("field.weight", "权重"),
    ("field.model", "模型"),
    ("field.input", "输入 / 百万"),
    ("field.output", "输出 / 百万"),
    ("field.cache_read", "缓存读取 / 百万"),
    ("field.cache_write", "缓存写入 / 百万"),
    ("field.cost", "费用"),
    ("field.requests", "请求数"),
    ("field.tokens", "Token 数"),
    ("form.separator", "："),
    ("form.choose", "请选择"),
    ("form.choose_option", "请选择…"),
    ("form.not_a_time", "不是有效的日期时间"),
    ("form.not_a_number", "须为整数"),
    ("form.not_money", "须为美元金额，例如 12.5"),
    ("form.required", "必填"),
    ("notice.logged_out", "已退出登录。"),
    ("notice.user_created", "用户已创建。"),
    ("notice.user_updated", "用户已更新。"),
    ("notice.package_created", "套餐已创建。"),
    ("notice.package_updated", "套餐已更新。"),
    ("notice.granted", "套餐已发放。"),
    ("notice.grant_updated", "已更新发放的套餐。"),
    ("notice.key_created", "密钥已创建。"),
    ("notice.key_updated", "密钥已更新。"),
    ("notice.account_created", "上游账号已添加。"),
    ("notice.account_updated", "上游账号已更新。"),
    ("notice.price_saved", "价格已保存。"),
    ("error.unauthorized", "管理令牌不正确。请登录，或使用 admin.api_token 中配置的令牌。"),
    ("error.too_large", "表单内容过大。"),
    ("error.csrf", "表单已过期或并非从本站提交，未做任何更改。请返回、刷新页面后重试。"),
    ("error.not_found", "这里什么都没有。它可能已被删除，或链接有误。"),
    ("error.internal", "服务器出错了，详情见服务器日志。"),
    ("error.conflict", "该名称已被占用，请换一个。"),
    ("problem.or", " 或 "),
    ("problem.required", "必填"),
    ("problem.empty", "不能为空"),
    ("problem.length", "长度须为 {min} 到 {max} 个字符"),
    ("problem.too_short", "至少 {min} 个字符"),
    ("problem.bad_characters", "不能包含控制字符，首尾不能有空格"),
    ("problem.unknown_value", "须为 {allowed}"),
    ("problem.unknown_status", "须为以下之一：{allowed}"),
    ("problem.not_positive", "须大于 0"),
    ("problem.not_positive_integer", "须为正整数"),
    ("problem.negative", "不能为负数"),
    ("problem.out_of_range", "须在 {min} 到 {max} 之间"),
    ("problem.not_a_time", "须为时间，例如 2026-01-31T10:00:00Z"),
    ("problem.not_a_day", "须为日期，格式 YYYY-MM-DD"),
    ("problem.not_a_cursor", "不是本接口返回的分页游标"),
    ("problem.not_a_url", "须为 http(s) 地址，例如 https://api.openai.com/v1"),
    ("problem.url_query_or_fragment", "不能带查询参数（?…）或片段（#…）：接口路径会接在它后面"),
    ("problem.anthropic_base_with_v1", "Anthropic 账号的地址不能以 /v1 结尾：tollgate 会自己加上 /v1/messages（例如 https://api.anthropic.com）"),
    ("problem.openai_base_without_v1", "api.openai.com 的地址须为 https://api.openai.com/v1：tollgate 会在后面加上 /chat/completions"),
    ("warning.no_version_path", "路径里没有版本号（例如 /v1）：请求会发往 base_url/chat/completions，而多数 OpenAI 兼容上游只在 /v1 下提供这些接口"),
    ("problem.empty_model_name", "模型名不能为空"),
    ("problem.not_a_cidr", "`{entry}` 不是 IP 地址或 CIDR 网段，例如 10.0.0.0/8 或 2001:db8::/32"),
    ("problem.subscription_needs_window", "订阅套餐至少需要日、周、月额度之一"),
    ("problem.total_on_subscription", "仅用于额度套餐；订阅套餐使用日/周/月额度"),
    ("problem.quota_needs_total", "额度套餐必须填写"),
    ("problem.windows_on_quota", "额度套餐只有总额度；按日/周/月限额请使用订阅套餐"),
    ("problem.no_such_package", "套餐 {id} 不存在"),
    ("problem.package_disabled", "该套餐已停用"),
    ("problem.not_a_model_map", "须为客户端模型名到上游模型名的 JSON 对象，且均不能为空"),
    ("field.limit", "每页条数"),
    ("field.cursor", "分页游标"),
    ("field.from", "起始日期"),
    ("field.to", "截止日期"),
    ("field.status_class", "结果"),
    ("field.billing_status", "计费状态"),
    ("error.back", "返回概览"),
    ("login.title", "登录 tollgate"),
    ("login.submit", "登录"),
    ("login.failed", "用户名或密码错误。"),
    ("login.expired", "登录表单已过期，请重试。"),
    ("login.throttled", "此地址登录失败次数过多，请 {seconds} 秒后再试。"),
    ("dashboard.title", "概览"),
    ("dashboard.today", "今天"),
    ("dashboard.cost_today", "今日费用"),
    ("dashboard.requests_today", "今日请求数"),
    ("dashboard.active_keys", "有效密钥"),
    ("dashboard.active_accounts", "可用上游账号"),
    ("dashboard.active_grants", "生效中的套餐"),
    ("dashboard.top_users", "今日用量最多的用户"),
    ("dashboard.top_models", "今日用量最多的模型"),
    ("dashboard.top_accounts", "今日用量最多的上游账号"),
    ("dashboard.nothing_today", "今天还没有请求。"),
    ("dashboard.cost_14_days", "近 14 天每日费用（美元）"),
    ("dashboard.stats_unavailable", "暂时无法读取今日实时统计（Redis 是否可达？）。"),
    ("balance.quota", "额度余额"),
    ("balance.daily", "订阅日余额"),
    ("balance.weekly", "订阅周余额"),
    ("balance.monthly", "订阅月余额"),
    ("users.title", "用户"),
    ("users.search_placeholder", "按用户名搜索"),
    ("users.keys", "密钥（有效 / 全部）"),
    ("users.today_cost", "今日费用"),
    ("users.none", "没有找到用户。"),
    ("users.balance_hint", "余额 = 限额 − 当前周期已用，按用户生效中的套餐合计；“—”表示没有生效的套餐限制该周期。"),
    ("users.new", "新建用户"),
    ("users.create", "创建用户"),
    ("users.password_hint", "仅管理员需要，至少 8 个字符"),
    ("users.disable", "停用用户"),
    ("users.disable_confirm", "确定停用该用户？其密钥将无法使用。"),
    ("users.recent_requests", "最近请求"),
    ("users.all_requests", "该用户的全部请求"),
    ("grants.title", "套餐"),
    ("grants.none", "尚未发放套餐。"),
    ("grants.remaining", "剩余"),
    ("grants.resets", "重置于"),
    ("grants.total_used", "累计已用："),
    ("grants.reserved", "进行中请求预留："),
    ("grants.cancel", "取消套餐"),
    ("grants.cancel_confirm", "确定为该用户取消此套餐？"),
    ("grants.reactivate", "重新启用"),
    ("grants.new", "发放套餐"),
    ("grants.grant", "发放"),
    ("grants.starts_hint", "留空 = 立即"),
    ("keys.title", "API 密钥"),
    ("keys.prefix", "密钥"),
    ("keys.user", "用户"),
    ("keys.models", "模型"),
    ("keys.all_models", "全部模型"),
    ("keys.limits", "速率限制"),
    ("keys.last_used", "最近使用"),
    ("keys.expires", "过期时间"),
    ("keys.revoke", "吊销"),
    ("keys.revoke_confirm", "确定吊销该密钥？使用它的请求将被拒绝。"),
    ("keys.none", "没有密钥。"),
    ("keys.new", "创建密钥"),
    ("keys.create", "创建密钥"),
    ("keys.models_hint", "用逗号分隔；留空 = 全部"),
    ("keys.ips_hint", "IP 地址或 CIDR 网段，用逗号分隔；留空 = 不限地址"),
    ("keys.created_once", "请立即复制此密钥：它只显示这一次。"),
    ("keys.copy", "复制"),
    ("keys.copied", "已复制"),
    ("keys.hint", "在用户页面创建密钥。密钥只在创建时显示一次。"),
    ("packages.title", "套餐"),
    ("packages.none", "还没有套餐。"),
    ("packages.new", "新建套餐"),
    ("packages.create", "创建套餐"),
    ("packages.no_limit", "不限"),
    ("packages.quota_only", "仅额度套餐"),
    ("packages.hint", "订阅套餐有每日、每周、每月限额；额度套餐只有一个永不重置的总额度。发放时会复制限额，修改套餐目录不会影响已发放的套餐。"),
    ("accounts.title", "上游账号"),
    ("accounts.none", "还没有上游账号。"),
    ("accounts.new", "添加上游账号"),
    ("accounts.create", "添加账号"),
    ("accounts.edit", "编辑账号"),
    ("accounts.health", "健康状况"),
    ("accounts.test", "测试"),
    ("accounts.test_ok", "{name} 测试通过：上游在 {ms} 毫秒内返回 {status}。"),
    ("accounts.test_failed", "{name} 测试失败（{ms} 毫秒）：{error}"),
    ("accounts.warning", "请检查地址"),
    ("accounts.last_error", "最近错误"),
    ("accounts.last_used", "最近使用"),
    ("accounts.secret_masked", "保存在服务器上，从不显示"),
    ("accounts.secret_hint", "服务商的 API 密钥"),
    ("accounts.secret_keep", "留空则保留已保存的密钥"),
    ("accounts.base_url_hint", "OpenAI：https://api.openai.com/v1 · Anthropic：https://api.anthropic.com"),
    ("accounts.models_hint", "用逗号分隔；留空 = 全部模型"),
    ("accounts.model_map_hint", "JSON：{\"客户端名\": \"上游名\"}；客户端使用前者，上游收到后者；留空 = 无"),
    ("models.title", "模型价格"),
    ("models.hint", "价格单位为美元 / 百万 Token。缓存价格留空时，缓存 Token 按输入价格计费。"),
    ("models.none", "还没有价格。没有价格的模型无法使用。"),
    ("models.new", "添加或修改模型"),
    ("models.updated", "更新时间"),
    ("models.same_as_input", "= 输入价"),
    ("models.unpriced", "被请求但没有价格的模型"),
    ("models.unpriced_hint", "客户端请求了这些模型但被拒绝：它们没有价格。为模型定价后，其请求即可通过。"),
    ("models.last_seen", "最近请求"),
    ("models.price_it", "定价"),
    ("models.import", "导入价格表"),
    ("models.import_hint", "LiteLLM 的 model_prices_and_context_window.json 格式的文件。每 Token 价格换算为每百万 Token 价格；写入前先确认变更。"),
    ("models.import_file", "文件"),
    ("models.import_list", "价格表（JSON）"),
    ("models.import_providers", "服务商（litellm_provider）"),
    ("models.import_modes", "模式"),
    ("models.import_preview", "查看变更"),
    ("models.import_review", "确认价格导入"),
    ("models.import_added", "新增模型"),
    ("models.import_changed", "价格变更"),
    ("models.import_unchanged", "未变"),
    ("models.import_not_taken", "其他服务商或模式"),
    ("models.import_skipped", "已跳过"),
    ("models.import_old_new", "原价 → 新价"),
    ("models.import_apply", "应用"),
    ("models.import_nothing", "没有需要变更的内容：已保存的价格与价格表一致。"),
    ("models.import_invalid", "不是价格表："),
    ("models.import_bad_plan", "无法读取确认的导入内容；请重新查看价格表。"),
    ("models.import.skip.no_token_price", "没有按 Token 计的输入和输出价格"),
    ("models.import.skip.not_a_number", "{field} `{value}` 不是数字"),
    ("models.import.skip.negative", "{field} `{value}` 为负数"),
    ("models.import.skip.too_precise", "{field} `{value}` 精度超过每百万 Token 一纳美元"),
    ("models.import.skip.name_too_long", "模型名称超过 191 字节"),
    ("notice.prices_imported", "价格表已导入。"),
    ("usage.title", "用量"),
    ("usage.from", "开始日期"),
    ("usage.to", "结束日期"),
    ("usage.cost_per_day", "每日费用（美元）"),
    ("usage.requests_per_day", "每日请求数"),
    ("usage.cost_per_day_by_user", "每日费用（按用户，美元）"),
    ("usage.requests_per_day_by_user", "每日请求数（按用户）"),
    ("usage.cost_per_day_by_key", "每日费用（按密钥，美元）"),
    ("usage.requests_per_day_by_key", "每日请求数（按密钥）"),
    ("usage.by_user", "按用户"),
    ("usage.by_model", "按模型"),
    ("usage.by_account", "按上游账号"),
    ("usage.by_key", "按密钥"),
    ("usage.by_day", "按日"),
    ("usage.day", "日期"),
    ("filter.all_users", "全部用户"),
    ("filter.all_keys", "全部密钥"),
    ("filter.all_models", "全部模型"),
    ("filter.all_accounts", "全部账号"),
    ("chart.no_data", "该时间范围内没有用量。"),
    ("chart.other", "其他模型"),
    ("chart.other_users", "其他用户"),
    ("chart.other_keys", "其他密钥"),
    ("logs.title", "请求日志"),
    ("logs.time", "时间"),
    ("logs.user", "用户"),
    ("logs.key", "密钥"),
    ("logs.account", "上游账号"),
    ("logs.endpoint", "接口"),
    ("logs.stream", "流式"),
    ("logs.status", "状态码"),
    ("logs.input", "输入 Token"),
    ("logs.output", "输出 Token"),
    ("logs.cache", "缓存读 / 写"),
    ("logs.tokens", "Token 输入 / 输出 / 缓存读 / 写"),
    ("logs.tokens_title", "输入 / 输出 / 缓存读 / 缓存写"),
    ("logs.billing", "计费"),
    ("logs.latency", "耗时（首字节）"),
    ("logs.error", "错误"),
    ("billing.complete", "已完整计费"),
    ("billing.partial", "部分计费（客户端中断）"),
    ("billing.estimated", "估算计费"),
    ("billing.void", "未计费"),
    ("billing.disputed", "用量存疑（按估算计费）"),
    ("billing.refused", "已拒绝"),
    ("health.ok", "正常"),
    ("health.cooling_down", "冷却中"),
    ("health.auth_failed", "上游拒绝了密钥"),
    ("provider.openai", "OpenAI"),
    ("provider.anthropic", "Anthropic"),
    // The log filters, the log page and the CSV downloads.
    ("action.download_csv", "下载 CSV"),
    ("logs.from", "开始时间"),
    ("logs.to", "截止时间（不含）"),
    ("logs.status_class", "结果"),
    ("filter.all_statuses", "全部结果"),
    ("filter.all_billing", "全部计费状态"),
    ("logs.class_2xx", "成功（2xx）"),
    ("logs.class_4xx", "客户端错误（4xx）"),
    ("logs.class_5xx", "服务端错误（5xx）"),
    ("logs.class_refused", "准入时拒绝"),
    ("logs.filter_hint", "时间按计费时区显示；范围包含开始时间，不含截止时间。CSV 包含全部符合条件的记录，不只是本页。"),
    ("logs.cache_read", "缓存读 Token"),
    ("logs.cache_write", "缓存写 Token"),
    ("log.title", "请求"),
    ("log.request", "请求"),
    ("log.request_id", "请求 ID"),
    ("log.grant", "扣费套餐（授予）"),
    ("log.latency", "耗时"),
    ("log.ttfb", "首字节时间"),
    ("log.tokens_and_cost", "Token 与费用"),
    ("log.class", "类别"),
    ("log.total", "合计"),
    ("log.no_split", "费用未按类别拆分：该模型的价格在此请求之后有变动，或本次按估算计费。"),
    ("logs.none", "没有请求。"),
    ("nav.audit", "审计日志"),
    ("audit.title", "审计日志"),
    ("audit.actor", "操作人"),
    ("audit.source", "来源"),
    ("audit.all_sources", "全部"),
    ("audit.source_api", "API"),
    ("audit.source_ui", "管理界面"),
    ("audit.source_login", "登录"),
    ("audit.path", "路径包含"),
    ("audit.action", "操作"),
    ("audit.target", "对象"),
    ("audit.fields", "提交的字段"),
    ("audit.outcome_success", "成功"),
    ("audit.outcome_failure", "失败"),
    ("audit.outcome_throttled", "已限流"),
    ("audit.none", "没有记录。"),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;

    fn keys(c: &[(&'static str, &str)]) -> BTreeSet<&'static str> {
        c.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn catalogues_have_the_same_keys_once_each_and_no_empty_text() {
        for (name, c) in [("en", EN), ("zh-CN", ZH)] {
            assert_eq!(keys(c).len(), c.len(), "a key appears twice in {name}");
            for (k, v) in c {
                assert!(!v.trim().is_empty(), "{name}: `{k}` is empty");
            }
        }
        let (en, zh) = (keys(EN), keys(ZH));
        let only_en: Vec<_> = en.difference(&zh).collect();
        let only_zh: Vec<_> = zh.difference(&en).collect();
        assert!(only_en.is_empty(), "missing in zh-CN: {only_en:?}");
        assert!(only_zh.is_empty(), "missing in en: {only_zh:?}");
        // Placeholders survive translation.
        for (k, v) in EN {
            if v.contains("{minutes}") {
                assert!(Tr::new(Lang::ZhCn).t(k).contains("{minutes}"), "{k}");
            }
        }
    }

    fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, ext, out);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }

    /// Every string literal of a file (no escapes inside the keys we look for).
    fn literals(text: &str) -> Vec<&str> {
        text.split('"').skip(1).step_by(2).collect()
    }

    #[test]
    fn every_key_the_templates_and_the_ui_use_exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let en = keys(EN);
        let sections: BTreeSet<&str> = en
            .iter()
            .filter_map(|k| k.split_once('.'))
            .map(|s| s.0)
            .collect();
        let mut sources = Vec::new();
        files(&root.join("templates"), "html", &mut sources);
        let templates = sources.len();
        files(&root.join("src/http/admin"), "rs", &mut sources);
        assert!(
            templates >= 10,
            "templates not found under {}",
            root.display()
        );
        let mut used = BTreeSet::new();
        for path in &sources {
            let text = std::fs::read_to_string(path).unwrap();
            for lit in literals(&text) {
                let looks_like_key = lit.split_once('.').is_some_and(|(s, rest)| {
                    sections.contains(s)
                        && !rest.is_empty()
                        && rest
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                });
                if looks_like_key {
                    used.insert(lit.to_string());
                }
            }
            // Keys in `t("…")` whatever their section, so a new section cannot slip through.
            for part in text.split(".t(\"").skip(1) {
                if let Some(k) = part.split('"').next() {
                    used.insert(k.to_string());
                }
            }
        }
        assert!(used.len() > 150, "found only {} keys in use", used.len());
        let missing: Vec<_> = used.iter().filter(|k| !en.contains(k.as_str())).collect();
        assert!(
            missing.is_empty(),
            "keys used but not in the catalogues: {missing:?}"
        );
    }

    #[test]
    fn every_problem_code_and_field_has_a_text_in_both_catalogues() {
        let mut missing = Vec::new();
        let mut keys: Vec<String> = crate::admin::Problem::examples()
            .iter()
            .map(|p| format!("problem.{}", p.code()))
            .collect();
        keys.push("problem.or".into());
        keys.extend(
            crate::admin::Warning::ALL
                .iter()
                .map(|w| format!("warning.{}", w.code())),
        );
        keys.extend(crate::admin::FIELDS.iter().map(|f| format!("field.{f}")));
        for (name, c) in [("en", EN), ("zh-CN", ZH)] {
            for k in &keys {
                if !c.iter().any(|(key, _)| key == k) {
                    missing.push(format!("{name}: {k}"));
                }
            }
        }
        assert!(missing.is_empty(), "no text for: {missing:?}");
        // Each placeholder a problem fills is in both languages' text.
        for p in crate::admin::Problem::examples() {
            for lang in [Lang::En, Lang::ZhCn] {
                let text = p.text(Tr::new(lang));
                assert!(!text.contains('{'), "{lang:?} {}: {text}", p.code());
            }
        }
    }

    /// Every value of every vocabulary, and every window, has its own text in both
    /// catalogues, and the Chinese one is not the English one left in place (providers are
    /// names and stay as they are).
    #[test]
    fn every_enum_value_is_translated() {
        use crate::billing::windows::WindowKind;
        use crate::domain::*;
        fn all<T: Vocabulary>(out: &mut Vec<(String, bool)>) {
            for &v in T::ALL {
                out.push((vocab_key(v), T::WHAT != "provider"));
            }
        }
        let mut keys = Vec::new();
        all::<UserStatus>(&mut keys);
        all::<Role>(&mut keys);
        all::<KeyStatus>(&mut keys);
        all::<PackageKind>(&mut keys);
        all::<CatalogueStatus>(&mut keys);
        all::<GrantStatus>(&mut keys);
        all::<AccountStatus>(&mut keys);
        all::<Provider>(&mut keys);
        all::<AccountHealth>(&mut keys);
        all::<BillingStatus>(&mut keys);
        for w in WindowKind::ALL {
            keys.push((format!("window.{}", w.as_str()), true));
        }
        assert!(keys.len() >= 27, "{keys:?}");
        let (en, zh) = (Lang::En.catalogue(), Lang::ZhCn.catalogue());
        let mut missing = Vec::new();
        for (k, must_differ) in &keys {
            match (en.get(k.as_str()), zh.get(k.as_str())) {
                (Some(e), Some(z)) if !must_differ || e != z => {}
                (e, z) => missing.push(format!("{k}: en={e:?} zh-CN={z:?}")),
            }
        }
        assert!(missing.is_empty(), "untranslated: {missing:?}");
        let zh = Tr::new(Lang::ZhCn);
        assert_eq!(zh.vocab(BillingStatus::Estimated), "估算计费");
        assert_eq!(zh.vocab(AccountHealth::CoolingDown), "冷却中");
        assert_eq!(zh.vocab(GrantStatus::Cancelled), "已取消");
    }

    #[test]
    fn language_negotiation() {
        assert_eq!(Lang::from_accept_language(""), Lang::En);
        assert_eq!(
            Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"),
            Lang::ZhCn
        );
        assert_eq!(
            Lang::from_accept_language("en-US,en;q=0.9,zh;q=0.8"),
            Lang::En
        );
        assert_eq!(
            Lang::from_accept_language("fr-FR,zh;q=0.5,en;q=0.4"),
            Lang::ZhCn
        );
        assert_eq!(
            Lang::from_accept_language("de;q=0.9,en;q=0.1,zh;q=0.3"),
            Lang::ZhCn
        );
        assert_eq!(Lang::from_accept_language("fr, de"), Lang::En);
        assert_eq!(Lang::from_accept_language("zh;q=0, en"), Lang::En);
        assert_eq!(Lang::from_accept_language("zh-Hans-CN"), Lang::ZhCn);
        assert_eq!(Lang::parse("zh_CN"), Some(Lang::ZhCn));
        assert_eq!(Lang::parse("EN"), Some(Lang::En));
        assert_eq!(Lang::parse("ja"), None);
        let zh = Tr::new(Lang::ZhCn);
        assert_eq!(zh.t("balance.quota"), "额度余额");
        assert_eq!(zh.t("balance.daily"), "订阅日余额");
        assert_eq!(zh.field("username"), "用户名");
        assert_eq!(zh.field("no_such_field"), "no_such_field");
    }
}
