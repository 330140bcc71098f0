//! Users: create, and change status or password.

use super::parse::{concurrency, one_of};
use super::{AdminError, Problem, Result, Taken};
use crate::domain::{Role, UserStatus};
use crate::secrets::hash_password;
use crate::state::AppState;
use crate::store::users::User;
use crate::store::StoreError;

pub struct NewUser {
    pub username: String,
    /// `admin` or `user`; `user` when not given.
    pub role: Option<String>,
    /// At least 8 characters; a user without one cannot sign in to the UI.
    pub password: Option<String>,
}

/// What to change on a user; `None` keeps it.
#[derive(Default)]
pub struct UserPatch {
    pub status: Option<String>,
    pub password: Option<String>,
    /// `Some(None)` clears the cap.
    pub max_concurrency: Option<Option<i64>>,
}

/// Usernames: 1–64 characters, no control characters, no surrounding spaces.
fn username(u: &str) -> Result<()> {
    if u.is_empty() || u.chars().count() > 64 {
        return Err(AdminError::invalid(
            "username",
            Problem::Length { min: 1, max: 64 },
        ));
    }
    if u.trim() != u || u.chars().any(char::is_control) {
        return Err(AdminError::invalid("username", Problem::BadCharacters));
    }
    Ok(())
}

fn password(p: &str) -> Result<()> {
    if p.chars().count() < 8 {
        return Err(AdminError::invalid(
            "password",
            Problem::TooShort { min: 8 },
        ));
    }
    Ok(())
}

pub async fn create_user(st: &AppState, u: NewUser) -> Result<User> {
    username(&u.username)?;
    let role = one_of::<Role>("role", u.role.as_deref().unwrap_or("user"))?;
    let hash = match &u.password {
        Some(p) => {
            password(p)?;
            Some(hash_password(p))
        }
        None => None,
    };
    let user = st
        .db
        .create_user(&u.username, role, hash.as_deref(), st.now_ms())
        .await
        .map_err(|e| match e {
            StoreError::Conflict => AdminError::Conflict(Taken::Username(u.username.clone())),
            e => e.into(),
        })?;
    st.proxy.forget_cached();
    Ok(user)
}

pub async fn update_user(st: &AppState, id: i64, p: UserPatch) -> Result<User> {
    let status = p
        .status
        .as_deref()
        .map(|s| one_of::<UserStatus>("status", s))
        .transpose()?;
    if let Some(pw) = &p.password {
        password(pw)?;
    }
    let max_concurrency = p
        .max_concurrency
        .map(|m| concurrency("max_concurrency", m))
        .transpose()?;
    st.db
        .get_user(id)
        .await
        .map_err(AdminError::lookup("user"))?;
    let now = st.now_ms();
    if let Some(s) = status {
        st.db.set_user_status(id, s, now).await?;
    }
    if let Some(pw) = &p.password {
        st.db.set_password_hash(id, &hash_password(pw), now).await?;
    }
    if let Some(m) = max_concurrency {
        st.db.set_user_max_concurrency(id, m, now).await?;
    }
    st.proxy.forget_cached();
    Ok(st.db.get_user(id).await?)
}
