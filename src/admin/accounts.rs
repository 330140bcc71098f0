//! Upstream accounts: create and change.

use super::parse::{models, one_of};
use super::{AdminError, Problem, Result};
use crate::config::Secret;
use crate::domain::{AccountStatus, Provider};
use crate::i18n::Tr;
use crate::proxy::probe::{self, Probe};
use crate::state::AppState;
use crate::store::accounts::{Account, AccountFields, ModelMap};

/// The fields of an account as sent; on update, `None` keeps the stored value.
#[derive(Default)]
pub struct AccountInput {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub models: Option<Vec<String>>,
    pub priority: Option<i64>,
    pub weight: Option<i64>,
    pub status: Option<String>,
    /// `{"client-name": "upstream-name"}` as sent (anything else is refused); `{}` clears.
    pub model_map: Option<serde_json::Value>,
}

/// Validate the fields present; `creating` requires name, provider, base_url and api_key.
fn fields(b: AccountInput, creating: bool) -> Result<AccountFields> {
    for (field, missing) in [
        ("name", b.name.is_none()),
        ("provider", b.provider.is_none()),
        ("base_url", b.base_url.is_none()),
        ("api_key", b.api_key.is_none()),
    ] {
        if creating && missing {
            return Err(AdminError::invalid(field, Problem::Required));
        }
    }
    // The length counts the name as sent, surrounding spaces included (stored trimmed).
    if let Some(n) = &b.name {
        if n.trim().is_empty() || n.chars().count() > 128 {
            return Err(AdminError::invalid(
                "name",
                Problem::Length { min: 1, max: 128 },
            ));
        }
    }
    let provider = b
        .provider
        .as_deref()
        .map(|p| one_of::<Provider>("provider", p))
        .transpose()?;
    if let Some(u) = &b.base_url {
        let ok = url::Url::parse(u)
            .map(|x| matches!(x.scheme(), "http" | "https") && x.host().is_some())
            .unwrap_or(false);
        if !ok {
            return Err(AdminError::invalid("base_url", Problem::NotAUrl));
        }
    }
    if matches!(&b.api_key, Some(k) if k.trim().is_empty()) {
        return Err(AdminError::invalid("api_key", Problem::Empty));
    }
    if matches!(b.weight, Some(w) if !(1..=1000).contains(&w)) {
        return Err(AdminError::invalid(
            "weight",
            Problem::OutOfRange { min: 1, max: 1000 },
        ));
    }
    if let Some(m) = &b.models {
        models("models", m)?;
    }
    let model_map = b.model_map.as_ref().map(model_map).transpose()?;
    let status = b
        .status
        .as_deref()
        .map(|s| one_of::<AccountStatus>("status", s))
        .transpose()?;
    Ok(AccountFields {
        name: b.name.map(|s| s.trim().to_string()),
        provider,
        base_url: b.base_url.map(|u| u.trim_end_matches('/').to_string()),
        secret: b.api_key.map(Secret::new),
        models: b.models,
        priority: b.priority,
        weight: b.weight,
        status,
        model_map,
    })
}

/// A JSON object of non-empty model names to non-empty model names (names trimmed).
fn model_map(v: &serde_json::Value) -> Result<ModelMap> {
    let bad = || AdminError::invalid("model_map", Problem::NotAModelMap);
    let obj = v.as_object().ok_or_else(bad)?;
    let mut map = std::collections::BTreeMap::new();
    for (client, upstream) in obj {
        let upstream = upstream.as_str().map(str::trim).unwrap_or_default();
        if client.trim().is_empty() || upstream.is_empty() {
            return Err(bad());
        }
        map.insert(client.trim().to_string(), upstream.to_string());
    }
    Ok(ModelMap(map))
}

pub async fn create_account(st: &AppState, a: AccountInput) -> Result<Account> {
    let f = fields(a, true)?;
    if let (Some(provider), Some(base_url)) = (f.provider, &f.base_url) {
        check_base_url(provider, base_url)?;
    }
    let account = st.db.create_account(&f, st.now_ms()).await?;
    st.proxy.forget_cached();
    Ok(account)
}

pub async fn update_account(st: &AppState, id: i64, a: AccountInput) -> Result<Account> {
    let f = fields(a, false)?;
    let stored = st
        .db
        .get_account(id)
        .await
        .map_err(AdminError::lookup("account"))?;
    // A new provider is checked against the stored base URL, and the other way round.
    if f.provider.is_some() || f.base_url.is_some() {
        check_base_url(
            f.provider.unwrap_or(stored.provider),
            f.base_url.as_deref().unwrap_or(&stored.base_url),
        )?;
    }
    let account = st.db.update_account(id, &f, st.now_ms()).await?;
    // A new secret or a re-enable is the administrator's word that the account may serve.
    if f.secret.is_some() || f.status == Some(AccountStatus::Active) {
        st.proxy.health.reset(id);
    }
    st.proxy.forget_cached();
    Ok(account)
}

/// The administrator's Test (SPEC §11.2): one probe of the account now; a success clears all
/// of its health, `auth_failed` included. The account is returned with it (for its name).
pub async fn test_account(st: &AppState, id: i64) -> Result<(Account, Probe)> {
    let account = st
        .db
        .get_account(id)
        .await
        .map_err(AdminError::lookup("account"))?;
    let p = probe::test(st, &account).await;
    Ok((account, p))
}

/// A base URL accepted with a caution, shown with the account in the API and on its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warning {
    /// An OpenAI-compatible base without a version segment (`/v1`, `/v4`, `/v1beta`, …):
    /// requests go to `{base_url}/chat/completions`, which most such upstreams do not serve.
    NoVersionPath,
}

impl Warning {
    pub const ALL: &'static [Warning] = &[Warning::NoVersionPath];

    /// The stable code; its text is `warning.{code}`.
    pub fn code(self) -> &'static str {
        match self {
            Warning::NoVersionPath => "no_version_path",
        }
    }

    /// The field it is about.
    pub fn field(self) -> &'static str {
        "base_url"
    }

    pub fn text(self, tr: Tr) -> &'static str {
        tr.t(&format!("warning.{}", self.code()))
    }
}

/// Refuse a base URL that cannot be right for `provider` (a query or fragment; an Anthropic
/// base ending in `/v1`, to which `/v1/messages` is added; `api.openai.com` without `/v1`);
/// a base that may be wrong gets [`Warning`]s. `base_url` is an http(s) URL already.
pub fn check_base_url(provider: Provider, base_url: &str) -> Result<Vec<Warning>> {
    let refuse = |p: Problem| Err(AdminError::invalid("base_url", p));
    let Ok(url) = url::Url::parse(base_url) else {
        return refuse(Problem::NotAUrl);
    };
    if url.query().is_some() || url.fragment().is_some() {
        return refuse(Problem::UrlQueryOrFragment);
    }
    let path = url.path().trim_end_matches('/').to_ascii_lowercase();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match provider {
        Provider::Anthropic if segments.last() == Some(&"v1") => {
            refuse(Problem::AnthropicBaseWithV1)
        }
        Provider::Anthropic => Ok(Vec::new()),
        Provider::OpenAi if url.host_str() == Some("api.openai.com") && path != "/v1" => {
            refuse(Problem::OpenAiBaseWithoutV1)
        }
        Provider::OpenAi => {
            let versioned = segments.iter().any(|s| {
                s.strip_prefix('v')
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            });
            Ok(if versioned {
                Vec::new()
            } else {
                vec![Warning::NoVersionPath]
            })
        }
    }
}

/// The warnings of a stored account's base URL (none for one that would now be refused: it
/// predates the checks, and the page shows its errors).
pub fn base_url_warnings(a: &Account) -> Vec<Warning> {
    check_base_url(a.provider, &a.base_url).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(provider: Provider, url: &str) -> std::result::Result<Vec<Warning>, &'static str> {
        check_base_url(provider, url).map_err(|e| match e {
            AdminError::Invalid { field, problem } => {
                assert_eq!(field, "base_url");
                problem.code()
            }
            e => panic!("{e}"),
        })
    }

    #[test]
    fn base_urls_that_cannot_be_right_are_refused_and_doubtful_ones_warned() {
        use Provider::{Anthropic, OpenAi};
        let none: Vec<Warning> = Vec::new();
        for (provider, url, want) in [
            (OpenAi, "https://api.openai.com/v1", Ok(none.clone())),
            (
                OpenAi,
                "https://api.openai.com",
                Err("openai_base_without_v1"),
            ),
            (
                OpenAi,
                "https://API.openai.com/v2",
                Err("openai_base_without_v1"),
            ),
            (OpenAi, "https://api.groq.com/openai/v1", Ok(none.clone())),
            (
                OpenAi,
                "https://open.bigmodel.cn/api/paas/v4",
                Ok(none.clone()),
            ),
            (OpenAi, "https://g.example/v1beta/openai", Ok(none.clone())),
            (
                OpenAi,
                "https://api.deepseek.com",
                Ok(vec![Warning::NoVersionPath]),
            ),
            (
                OpenAi,
                "http://127.0.0.1:9/openai",
                Ok(vec![Warning::NoVersionPath]),
            ),
            (
                OpenAi,
                "https://up.example/v1?x=1",
                Err("url_query_or_fragment"),
            ),
            (
                OpenAi,
                "https://up.example/v1#top",
                Err("url_query_or_fragment"),
            ),
            (Anthropic, "https://api.anthropic.com", Ok(none.clone())),
            (
                Anthropic,
                "https://relay.example/anthropic",
                Ok(none.clone()),
            ),
            (
                Anthropic,
                "https://api.anthropic.com/v1",
                Err("anthropic_base_with_v1"),
            ),
            (
                Anthropic,
                "https://relay.example/x/V1",
                Err("anthropic_base_with_v1"),
            ),
            (
                Anthropic,
                "https://api.anthropic.com?beta=1",
                Err("url_query_or_fragment"),
            ),
        ] {
            assert_eq!(check(provider, url), want, "{provider} {url}");
        }
    }
}
