//! Operator tasks the CLI runs against the database, without serving: re-encrypting account
//! secrets under a new key, and importing a price list.

use std::path::Path;

use crate::admin::price_import::{parse_litellm, write_prices, ImportFilter, ImportPlan};
use crate::clock::Clock;
use crate::config::{Config, Secret};
use crate::secrets::at_rest::Sealer;
use crate::store::account_secrets::Resealed;

/// `tollgate secrets rotate`: open every account secret with the configured `secrets.key`
/// (or as plaintext without one) and store it encrypted under `new_key`, in one transaction.
pub async fn rotate_secrets(config: &Config, new_key: &str) -> anyhow::Result<Resealed> {
    let new = Sealer::from_config(&Secret::new(new_key)).map_err(|e| {
        anyhow::anyhow!(
            "the new key: {}",
            e.to_string().replace("`secrets.key` must", "it must")
        )
    })?;
    if !new.has_key() {
        anyhow::bail!("the new key is empty");
    }
    let db = crate::app::connect(config).await?;
    let done = db.reseal_secrets(&new, false).await?;
    db.close().await;
    Ok(done)
}

/// What `tollgate prices import` did: the plan, and whether it was written.
pub struct Imported {
    pub plan: ImportPlan,
    pub applied: bool,
}

/// `tollgate prices import FILE`: compare the list with the stored prices; write the added and
/// changed ones only when `apply`.
pub async fn import_prices(
    config: &Config,
    file: &Path,
    filter: &ImportFilter,
    apply: bool,
) -> anyhow::Result<Imported> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let list =
        parse_litellm(&text, filter).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let db = crate::app::connect(config).await?;
    let plan = ImportPlan::new(list, &db.list_prices().await?);
    let applied = apply && !plan.is_empty();
    if applied {
        write_prices(&db, &plan.writes(), Clock::System.now_ms())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    db.close().await;
    Ok(Imported { plan, applied })
}
