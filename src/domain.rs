//! The vocabulary of the domain: every closed set of values that a column stores as a string
//! (statuses, package kind, role, provider, billing status) and the live health of an account.
//!
//! Each value has one spelling, [`Vocabulary::as_str`], used alike in the database, in JSON and
//! in the UI's catalogue keys. The strings are the ones the schema has always stored, so no
//! migration is involved. A value read from either database that is not one of the spellings is
//! a decode error of that row, never a silent default.

use std::fmt;

use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

/// A string that is not one of a vocabulary's spellings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`")]
pub struct UnknownValue {
    /// What the vocabulary names, such as `key status`.
    pub what: &'static str,
    pub value: String,
}

/// A closed set of values with one spelling each.
pub trait Vocabulary: Copy + Eq + std::str::FromStr<Err = UnknownValue> + 'static {
    /// What the values name, for messages (`user status`, `provider`, ...).
    const WHAT: &'static str;
    /// Every value, in the order messages list them.
    const ALL: &'static [Self];
    /// Every value's spelling, in the same order.
    const NAMES: &'static [&'static str];
    fn as_str(self) -> &'static str;
}

/// Define a vocabulary: the enum, its spelling both ways, serde with the same spelling, and
/// sqlx encoding and decoding as that string on every database whose `str` type it can use.
macro_rules! vocabulary {
    (
        $(#[$doc:meta])*
        $name:ident ($what:literal) {
            $( $(#[$vdoc:meta])* $variant:ident = $s:literal, )+
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vdoc])* #[serde(rename = $s)] $variant, )+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $s, )+
                }
            }
        }

        impl Vocabulary for $name {
            const WHAT: &'static str = $what;
            const ALL: &'static [$name] = $name::ALL;
            const NAMES: &'static [&'static str] = &[$($s),+];
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $( $s => Ok($name::$variant), )+
                    _ => Err(UnknownValue { what: $what, value: s.to_string() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<DB: Database> Type<DB> for $name
        where
            str: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $name
        where
            &'r str: Decode<'r, DB>,
        {
            fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&'r str as Decode<'r, DB>>::decode(value)?.parse::<$name>()?)
            }
        }

        impl<'q, DB: Database> Encode<'q, DB> for $name
        where
            &'q str: Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut DB::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, BoxDynError> {
                <&'q str as Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }
    };
}

vocabulary! {
    /// `users.status`.
    UserStatus ("user status") {
        Active = "active",
        Disabled = "disabled",
    }
}

vocabulary! {
    /// `users.role`.
    Role ("role") {
        Admin = "admin",
        User = "user",
    }
}

vocabulary! {
    /// `api_keys.status`. Expiry comes from `expires_at`, not from a status.
    KeyStatus ("key status") {
        Active = "active",
        Revoked = "revoked",
    }
}

vocabulary! {
    /// `packages.type` (and the copy in `user_packages.type`).
    PackageKind ("package type") {
        /// Daily, weekly and monthly limits that reset.
        Subscription = "subscription",
        /// One `quota_total` that never resets.
        Quota = "quota",
    }
}

vocabulary! {
    /// `packages.status`: whether the catalogue package can be granted.
    CatalogueStatus ("package status") {
        Active = "active",
        Disabled = "disabled",
    }
}

vocabulary! {
    /// `user_packages.status`. Expiry comes from the times, not from a status.
    GrantStatus ("grant status") {
        Active = "active",
        Cancelled = "cancelled",
    }
}

vocabulary! {
    /// `accounts.status`: set by an administrator.
    AccountStatus ("account status") {
        Active = "active",
        Disabled = "disabled",
    }
}

vocabulary! {
    /// `accounts.provider`: which API an upstream account speaks.
    Provider ("provider") {
        OpenAi = "openai",
        Anthropic = "anthropic",
    }
}

vocabulary! {
    /// An active account's live health (SPEC §11.2), kept in memory by the router.
    AccountHealth ("account health") {
        Ok = "ok",
        /// Taken out after consecutive failures until its cooldown ends or a probe succeeds.
        CoolingDown = "cooling_down",
        /// Upstream refused its secret; left out until an administrator edits it.
        AuthFailed = "auth_failed",
    }
}

vocabulary! {
    /// `request_logs.billing_status`: how the cost of a request was established.
    BillingStatus ("billing status") {
        /// Usage as reported by upstream for the whole response.
        Complete = "complete",
        /// The client went away; usage reported so far.
        Partial = "partial",
        /// No usage reported; an estimate from what passed through.
        Estimated = "estimated",
        /// Nothing billable reached upstream (or upstream failed without usage).
        Void = "void",
        /// Upstream reported usage that cannot be true (negative, not an integer, above
        /// `upstream.max_tokens_per_request`, or a cost that does not fit): charged at the
        /// estimate.
        Disputed = "disputed",
        /// Refused at admission for a known key: a log row only (cost 0), no other sink.
        Refused = "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of `T` spells out and parses back, serde agrees with `as_str`, and these
    /// strings are exactly the vocabulary.
    fn round_trips<T: Vocabulary + fmt::Debug + serde::Serialize + serde::de::DeserializeOwned>(
        spellings: &[&str],
    ) {
        let all: Vec<&str> = T::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(all, spellings, "{}", T::WHAT);
        for &v in T::ALL {
            assert_eq!(v.as_str().parse::<T>(), Ok(v));
            let json = serde_json::to_value(v).unwrap();
            assert_eq!(json, serde_json::Value::from(v.as_str()));
            assert_eq!(serde_json::from_value::<T>(json).unwrap(), v);
        }
        for bad in ["", "Active", "ACTIVE", " active", "bogus"] {
            if spellings.contains(&bad) {
                continue;
            }
            assert_eq!(
                bad.parse::<T>(),
                Err(UnknownValue {
                    what: T::WHAT,
                    value: bad.to_string()
                })
            );
            assert!(serde_json::from_value::<T>(serde_json::Value::from(bad)).is_err());
        }
    }

    #[test]
    fn every_vocabulary_round_trips_and_refuses_unknown_values() {
        round_trips::<UserStatus>(&["active", "disabled"]);
        round_trips::<Role>(&["admin", "user"]);
        round_trips::<KeyStatus>(&["active", "revoked"]);
        round_trips::<PackageKind>(&["subscription", "quota"]);
        round_trips::<CatalogueStatus>(&["active", "disabled"]);
        round_trips::<GrantStatus>(&["active", "cancelled"]);
        round_trips::<AccountStatus>(&["active", "disabled"]);
        round_trips::<Provider>(&["openai", "anthropic"]);
        round_trips::<AccountHealth>(&["ok", "cooling_down", "auth_failed"]);
        round_trips::<BillingStatus>(&[
            "complete",
            "partial",
            "estimated",
            "void",
            "disputed",
            "refused",
        ]);
    }

    #[test]
    fn an_unknown_value_names_its_vocabulary() {
        let e = "deleted".parse::<KeyStatus>().unwrap_err();
        assert_eq!(e.to_string(), "unknown key status `deleted`");
        assert_eq!(Provider::Anthropic.to_string(), "anthropic");
    }
}
