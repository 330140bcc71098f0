//! Upstream secrets at rest (SPEC §11.7): the one place that encrypts and decrypts account
//! secrets. With `secrets.key` set, a secret is stored as `enc:v1:<base64(nonce ‖ ciphertext ‖
//! tag)>`, AES-256-GCM with a fresh random 96-bit nonce per value (ring's AEAD, the one rustls
//! already builds on). Without a key, secrets are stored as typed and a plaintext row stays
//! readable with a key too, so rows written before the key was set are recognisable and can
//! be encrypted in place on the next start.

use base64::prelude::{Engine as _, BASE64_STANDARD};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::config::Secret;

/// The tag that marks an encrypted value; a new scheme would take `enc:v2:`.
pub const TAG: &str = "enc:v1:";
pub const KEY_LEN: usize = 32;
/// Binds a ciphertext to its purpose: an account secret sealed here opens only as one.
const AAD: &[u8] = b"tollgate account secret";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("`secrets.key` must be {KEY_LEN} bytes in base64 (e.g. from `tollgate secrets generate-key`), got {0}")]
    BadKey(String),
    #[error("a stored secret is encrypted, but `secrets.key` is not set")]
    NoKey,
    #[error("a stored secret does not decrypt with `secrets.key` (is it the key it was encrypted with?)")]
    WrongKey,
}

/// Whether a stored value is in the encrypted form.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(TAG)
}

/// Parse a base64 key of exactly 32 bytes (standard or URL-safe alphabet, padding optional).
pub fn parse_key(b64: &str) -> Result<[u8; KEY_LEN], SealError> {
    let t = b64.trim();
    let bytes = BASE64_STANDARD
        .decode(t)
        .or_else(|_| base64::prelude::BASE64_STANDARD_NO_PAD.decode(t))
        .or_else(|_| base64::prelude::BASE64_URL_SAFE.decode(t))
        .or_else(|_| base64::prelude::BASE64_URL_SAFE_NO_PAD.decode(t))
        .map_err(|_| SealError::BadKey("text that is not base64".into()))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| SealError::BadKey(format!("{} bytes", bytes.len())))
}

/// A new random key in the base64 form `secrets.key` takes.
pub fn generate_key() -> String {
    let mut k = [0u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut k);
    BASE64_STANDARD.encode(k)
}

/// Seals and opens account secrets; without a key it passes plaintext through.
#[derive(Clone, Default)]
pub struct Sealer {
    key: Option<std::sync::Arc<LessSafeKey>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.key.is_some() {
            "Sealer(key)"
        } else {
            "Sealer(plaintext)"
        })
    }
}

impl Sealer {
    /// No key: values are stored as given.
    pub fn plaintext() -> Sealer {
        Sealer::default()
    }

    /// From the configured `secrets.key` (empty = no key).
    pub fn from_config(key: &Secret) -> Result<Sealer, SealError> {
        if key.is_empty() {
            return Ok(Sealer::plaintext());
        }
        Ok(Sealer::with_key(&parse_key(key.expose())?))
    }

    pub fn with_key(key: &[u8; KEY_LEN]) -> Sealer {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256-GCM key");
        Sealer {
            key: Some(std::sync::Arc::new(LessSafeKey::new(unbound))),
        }
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// The stored form of `plain`: encrypted under a fresh nonce with a key, else as is.
    pub fn seal(&self, plain: &str) -> String {
        let Some(key) = &self.key else {
            return plain.to_string();
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut buf = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut buf,
        )
        .expect("AES-GCM seals any secret shorter than 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        format!("{TAG}{}", BASE64_STANDARD.encode(out))
    }

    /// The secret behind a stored value: decrypted when sealed, as is when plaintext.
    pub fn open(&self, stored: &str) -> Result<Secret, SealError> {
        let Some(b64) = stored.strip_prefix(TAG) else {
            return Ok(Secret::new(stored));
        };
        let key = self.key.as_ref().ok_or(SealError::NoKey)?;
        let mut raw = BASE64_STANDARD
            .decode(b64)
            .map_err(|_| SealError::WrongKey)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::WrongKey);
        }
        let mut body = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw).map_err(|_| SealError::WrongKey)?;
        let plain = key
            .open_in_place(nonce, Aad::from(AAD), &mut body)
            .map_err(|_| SealError::WrongKey)?;
        String::from_utf8(plain.to_vec())
            .map(Secret::new)
            .map_err(|_| SealError::WrongKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Sealer {
        Sealer::with_key(&[b; KEY_LEN])
    }

    #[test]
    fn sealed_values_open_and_hide_the_secret() {
        let s = key(7);
        let a = s.seal("sk-very-distinctive-secret");
        let b = s.seal("sk-very-distinctive-secret");
        assert!(is_sealed(&a), "{a}");
        assert!(!a.contains("distinctive"), "{a}");
        // A fresh nonce per value: the same secret never seals to the same text.
        assert_ne!(a, b);
        assert_eq!(s.open(&a).unwrap().expose(), "sk-very-distinctive-secret");
        assert_eq!(s.open(&b).unwrap().expose(), "sk-very-distinctive-secret");
    }

    #[test]
    fn a_wrong_key_a_missing_key_or_a_damaged_value_is_refused() {
        let sealed = key(1).seal("sk-x");
        assert_eq!(key(2).open(&sealed).unwrap_err(), SealError::WrongKey);
        assert_eq!(
            Sealer::plaintext().open(&sealed).unwrap_err(),
            SealError::NoKey
        );
        // One ciphertext character changed: the tag no longer matches.
        let mid = TAG.len() + 20;
        let flipped = if &sealed[mid..=mid] == "A" { "B" } else { "A" };
        let damaged = format!("{}{flipped}{}", &sealed[..mid], &sealed[mid + 1..]);
        assert_eq!(key(1).open(&damaged).unwrap_err(), SealError::WrongKey);
        assert_eq!(
            key(1).open("enc:v1:c2hvcnQ=").unwrap_err(),
            SealError::WrongKey
        );
    }

    #[test]
    fn plaintext_passes_through_with_or_without_a_key() {
        assert_eq!(Sealer::plaintext().seal("sk-plain"), "sk-plain");
        assert_eq!(
            Sealer::plaintext().open("sk-plain").unwrap().expose(),
            "sk-plain"
        );
        assert_eq!(key(3).open("sk-plain").unwrap().expose(), "sk-plain");
    }

    #[test]
    fn keys_are_32_bytes_of_base64() {
        let k = generate_key();
        assert_eq!(parse_key(&k).unwrap().len(), 32);
        assert_ne!(k, generate_key());
        assert!(parse_key(&BASE64_STANDARD.encode([0u8; 16])).is_err());
        assert!(parse_key("not base64 !!").is_err());
        let msg = Sealer::from_config(&Secret::new("c2hvcnQ="))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("secrets.key") && msg.contains("5 bytes"),
            "{msg}"
        );
        assert!(!Sealer::from_config(&Secret::default()).unwrap().has_key());
        assert!(Sealer::from_config(&Secret::new(k)).unwrap().has_key());
    }
}
