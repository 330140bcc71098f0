//! The admin service: every write the JSON API and the web UI make, as typed operations.
//!
//! An operation validates its input (each field parsed from its input string in one place,
//! [`parse`]), writes through the store, and drops the proxy's caches after a change so it
//! applies at once on this instance. Refusals are [`AdminError`]s: a field with a
//! [`Problem`] code, a missing object, a taken unique value, or a store error (never turned
//! into one of the others). The JSON API (`http::api`) renders them in English, the UI
//! (`http::admin`) in the page's language.

mod accounts;
mod error;
mod keys;
mod packages;
pub mod parse;
pub mod price_import;
mod prices;
mod users;

pub use accounts::{
    base_url_warnings, check_base_url, create_account, test_account, update_account, AccountInput,
    Warning,
};
pub use error::{AdminError, Problem, Result, Taken, FIELDS};
pub use keys::{
    check_key_budget, create_key, set_key_allowed_ips, set_key_status, update_key,
    update_key_budget, BudgetInput, BudgetPatch, CreatedKey, KeyPatch, NewKey,
};
pub use packages::{
    create_package, grant_package, set_grant_status, set_package_status, NewGrant, NewPackage,
};
pub use prices::{put_price, NewPrice};
pub use users::{create_user, update_user, NewUser, UserPatch};
