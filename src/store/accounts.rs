//! Upstream accounts and model prices.

use serde::Serialize;

use super::{column_to_list, execute, insert_id, list_to_column, on_db, ser, Db, Result};
use crate::config::Secret;
use crate::domain::{AccountStatus, Provider};

#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub provider: Provider,
    pub base_url: String,
    /// The upstream credential: never serialised, never shown (`Debug` prints `[redacted]`);
    /// exposed only to build the upstream request's auth header.
    #[serde(skip)]
    #[sqlx(try_from = "String")]
    pub secret: Secret,
    #[serde(serialize_with = "ser::list")]
    pub models: Option<String>,
    /// Client model name → this account's own name for it (SPEC §11.2 "Model aliases").
    #[sqlx(try_from = "Option<String>")]
    pub model_map: ModelMap,
    pub priority: i64,
    pub weight: i64,
    pub status: AccountStatus,
    #[serde(serialize_with = "ser::usd")]
    pub total_cost: i64,
    pub request_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub last_error: Option<String>,
    #[serde(serialize_with = "ser::opt_ms")]
    pub last_error_at: Option<i64>,
    #[serde(serialize_with = "ser::opt_ms")]
    pub last_used_at: Option<i64>,
    #[serde(serialize_with = "ser::ms")]
    pub created_at: i64,
    #[serde(serialize_with = "ser::ms")]
    pub updated_at: i64,
}

impl Account {
    /// Models this account serves; an empty list means every model.
    pub fn models(&self) -> Vec<String> {
        column_to_list(&self.models)
    }
    /// An empty `models` list serves every model; otherwise the names listed and the client
    /// names of `model_map`.
    pub fn serves(&self, model: &str) -> bool {
        let m = self.models();
        m.is_empty() || m.iter().any(|x| x == model) || self.model_map.0.contains_key(model)
    }
    /// The name this account's upstream knows `model` by, when it is not `model` itself.
    pub fn upstream_model(&self, model: &str) -> Option<&str> {
        self.model_map
            .0
            .get(model)
            .map(String::as_str)
            .filter(|u| *u != model)
    }
}

/// An account's model aliases, stored as a JSON object (NULL when there are none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ModelMap(pub std::collections::BTreeMap<String, String>);

impl ModelMap {
    fn to_column(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| serde_json::to_string(&self.0).unwrap_or_default())
    }
}

impl TryFrom<Option<String>> for ModelMap {
    type Error = serde_json::Error;
    fn try_from(v: Option<String>) -> std::result::Result<Self, Self::Error> {
        match v.as_deref().map(str::trim) {
            None | Some("") => Ok(ModelMap::default()),
            Some(s) => Ok(ModelMap(serde_json::from_str(s)?)),
        }
    }
}

/// Fields of an account; on update, `None` keeps the stored value.
#[derive(Default)]
pub struct AccountFields {
    pub name: Option<String>,
    pub provider: Option<Provider>,
    pub base_url: Option<String>,
    pub secret: Option<Secret>,
    pub models: Option<Vec<String>>,
    pub priority: Option<i64>,
    pub weight: Option<i64>,
    pub status: Option<AccountStatus>,
    /// An empty map clears the aliases.
    pub model_map: Option<ModelMap>,
}

#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct ModelPrice {
    pub model: String,
    #[serde(rename = "input", serialize_with = "ser::usd")]
    pub input_price: i64,
    #[serde(rename = "output", serialize_with = "ser::usd")]
    pub output_price: i64,
    #[serde(rename = "cache_read", serialize_with = "ser::opt_usd")]
    pub cache_read_price: Option<i64>,
    #[serde(rename = "cache_write", serialize_with = "ser::opt_usd")]
    pub cache_write_price: Option<i64>,
    #[serde(serialize_with = "ser::ms")]
    pub updated_at: i64,
}

impl ModelPrice {
    pub fn price(&self) -> crate::billing::cost::Price {
        crate::billing::cost::Price {
            input: self.input_price,
            output: self.output_price,
            cache_read: self.cache_read_price,
            cache_write: self.cache_write_price,
        }
    }
}

const ACC_COLS: &str =
    "id, name, provider, base_url, secret, models, model_map, priority, weight, status, \
    total_cost, request_count, input_tokens, output_tokens, cache_read_tokens, \
    cache_write_tokens, last_error, last_error_at, last_used_at, created_at, updated_at";
const PRICE_COLS: &str =
    "model, input_price, output_price, cache_read_price, cache_write_price, updated_at";

impl Db {
    /// Insert an account; `f` must carry name, provider, base_url and secret (without a
    /// provider the database refuses the row).
    pub async fn create_account(&self, f: &AccountFields, now: i64) -> Result<Account> {
        let id = insert_id!(
            self,
            sqlx::query(
                "INSERT INTO accounts (name, provider, base_url, secret, models, priority, weight, \
                 status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            .bind(f.name.as_deref().unwrap_or_default())
            .bind(f.provider)
            .bind(f.base_url.as_deref().unwrap_or_default())
            .bind(f.secret.as_ref().map(|s| self.seal_secret(s)).unwrap_or_default())
            .bind(f.models.as_deref().and_then(list_to_column))
            .bind(f.priority.unwrap_or(0))
            .bind(f.weight.unwrap_or(1))
            .bind(f.status.unwrap_or(AccountStatus::Active))
            .bind(now)
            .bind(now)
        );
        self.set_model_map(id, f.model_map.as_ref()).await?;
        self.get_account(id).await
    }

    /// Store an account's aliases (kept out of the main statements: one field, one place).
    async fn set_model_map(&self, id: i64, map: Option<&ModelMap>) -> Result<()> {
        let Some(map) = map else { return Ok(()) };
        execute!(
            self,
            sqlx::query("UPDATE accounts SET model_map = ? WHERE id = ?")
                .bind(map.to_column())
                .bind(id)
        )?;
        Ok(())
    }

    pub async fn get_account(&self, id: i64) -> Result<Account> {
        let sql = format!("SELECT {ACC_COLS} FROM accounts WHERE id = ?");
        self.opened(on_db!(self, |p| sqlx::query_as(&sql)
            .bind(id)
            .fetch_one(p)
            .await)?)
    }

    pub async fn list_accounts(&self, cursor: Option<i64>, limit: i64) -> Result<Vec<Account>> {
        self.bounded(async {
            let sql = format!("SELECT {ACC_COLS} FROM accounts WHERE id > ? ORDER BY id LIMIT ?");
            self.all_opened(on_db!(self, |p| sqlx::query_as(&sql)
                .bind(cursor.unwrap_or(0))
                .bind(limit)
                .fetch_all(p)
                .await)?)
        })
        .await
    }

    /// Active accounts of a provider, highest priority first.
    pub async fn active_accounts(&self, provider: Provider) -> Result<Vec<Account>> {
        self.bounded(async {
            let sql = format!(
                "SELECT {ACC_COLS} FROM accounts WHERE provider = ? AND status = ? \
             ORDER BY priority DESC, id"
            );
            self.all_opened(on_db!(self, |p| sqlx::query_as(&sql)
                .bind(provider)
                .bind(AccountStatus::Active)
                .fetch_all(p)
                .await)?)
        })
        .await
    }

    pub async fn update_account(&self, id: i64, f: &AccountFields, now: i64) -> Result<Account> {
        let cur = self.get_account(id).await?;
        let models = match &f.models {
            Some(m) => list_to_column(m),
            None => cur.models.clone(),
        };
        execute!(self, sqlx::query(
            "UPDATE accounts SET name = ?, provider = ?, base_url = ?, secret = ?, models = ?, \
             priority = ?, weight = ?, status = ?, updated_at = ? WHERE id = ?"
        )
        .bind(f.name.as_deref().unwrap_or(&cur.name))
        .bind(f.provider.unwrap_or(cur.provider))
        .bind(f.base_url.as_deref().unwrap_or(&cur.base_url))
        .bind(self.seal_secret(f.secret.as_ref().unwrap_or(&cur.secret)))
        .bind(models)
        .bind(f.priority.unwrap_or(cur.priority))
        .bind(f.weight.unwrap_or(cur.weight))
        .bind(f.status.unwrap_or(cur.status))
        .bind(now)
        .bind(id))?;
        self.set_model_map(id, f.model_map.as_ref()).await?;
        self.get_account(id).await
    }

    /// Remember an upstream failure for display (health is kept in memory by the router).
    pub async fn set_account_error(&self, id: i64, error: &str, now: i64) -> Result<()> {
        execute!(
            self,
            sqlx::query("UPDATE accounts SET last_error = ?, last_error_at = ? WHERE id = ?")
                .bind(error)
                .bind(now)
                .bind(id)
        )?;
        Ok(())
    }

    pub async fn upsert_price(
        &self,
        model: &str,
        price: &crate::billing::cost::Price,
        now: i64,
    ) -> Result<ModelPrice> {
        let sql = super::pricing::upsert_price_sql(self.kind());
        execute!(
            self,
            sqlx::query(sql)
                .bind(model)
                .bind(price.input)
                .bind(price.output)
                .bind(price.cache_read)
                .bind(price.cache_write)
                .bind(now)
        )?;
        self.get_price(model)
            .await?
            .ok_or(super::StoreError::NotFound)
    }

    pub async fn get_price(&self, model: &str) -> Result<Option<ModelPrice>> {
        self.bounded(async {
            let sql = format!("SELECT {PRICE_COLS} FROM model_prices WHERE model = ?");
            Ok(on_db!(self, |p| sqlx::query_as(&sql)
                .bind(model)
                .fetch_optional(p)
                .await)?)
        })
        .await
    }

    pub async fn list_prices(&self) -> Result<Vec<ModelPrice>> {
        self.bounded(async {
            let sql = format!("SELECT {PRICE_COLS} FROM model_prices ORDER BY model");
            Ok(on_db!(self, |p| sqlx::query_as(&sql).fetch_all(p).await)?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_never_shows_its_secret() {
        let a = Account {
            id: 1,
            name: "a".into(),
            provider: Provider::OpenAi,
            base_url: "http://x".into(),
            secret: Secret::new("sk-upstream-secret"),
            models: None,
            model_map: ModelMap::default(),
            priority: 0,
            weight: 1,
            status: AccountStatus::Active,
            total_cost: 0,
            request_count: 0,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            last_error: None,
            last_error_at: None,
            last_used_at: None,
            created_at: 0,
            updated_at: 0,
        };
        let debug = format!("{a:?}");
        assert!(!debug.contains("sk-upstream-secret"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("sk-upstream-secret"), "{json}");
        assert_eq!(a.secret.expose(), "sk-upstream-secret");
    }
}
