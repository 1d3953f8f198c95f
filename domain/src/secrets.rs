//! Secret material at rest (NFR-SE-003): envelope encryption with AES-256-GCM.
//!
//! Each tenant has data keys; each data key is stored wrapped (encrypted) under the master key
//! from the configuration. In an Envoy `Secret`, every data source under a field Envoy's schema
//! marks sensitive (see [`crate::envoy::sensitive`]: the private key, password and PKCS#12 of a
//! certificate, a generic secret and each value of its map, session ticket keys, ...) is sealed
//! with the tenant's data key before the document reaches the database: the data source object is
//! replaced by `{"inline_string": "efms:enc:v2:<key id>:<base64 nonce+ciphertext>"}`, so the stored
//! document keeps Envoy's shape and validates. The nonce is derived from the plaintext (HMAC-SHA256),
//! so the same secret seals to the same text: content hashes, "nothing changed" and merges still
//! compare secrets by content, while the text reveals nothing but equality. The nonce and the
//! encryption use two subkeys derived from the data key, never the data key itself (`v1` texts,
//! which used the data key for both, still open). Only the xDS server opens sealed data sources,
//! for the tenant's own proxies.

use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::envoy::sensitive::{self, Material};
use crate::envoy::ResourceKind;

/// The prefix of a sealed data source's text, before its format version.
pub const SEALED_PREFIX: &str = "efms:enc:";

/// The format sealing writes: subkeys derived from the data key.
const CURRENT_FORMAT: &str = "v2";
/// The first format: the data key both derived the nonce and encrypted. Opened, never written.
const LEGACY_FORMAT: &str = "v1";

/// A 256-bit key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

/// Why a key or a sealed text cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The key text is not base64 of 32 bytes.
    #[error("a key is 32 bytes, base64-encoded (such as the output of `head -c 32 /dev/urandom | base64`)")]
    BadKey,
    /// Decryption failed: another key, or altered data.
    #[error("sealed data does not open with this key (another key, or altered data)")]
    DoesNotOpen,
    /// The sealed text is not one this version wrote.
    #[error("malformed sealed data")]
    Malformed,
    /// The key the text names is unknown.
    #[error("no data key `{0}`")]
    UnknownKey(String),
}

impl Key {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(Aes256Gcm::generate_key(OsRng).into())
    }

    /// A key from its base64 text (32 bytes).
    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::BadKey)?;
        Ok(Self(bytes.try_into().map_err(|_| SecretError::BadKey)?))
    }

    /// The key's bytes, for a key that is itself handed out (a webhook's signing secret).
    #[must_use]
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short public fingerprint: which key wrapped a data key, without revealing it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0);
        digest[..8]
            .iter()
            .fold(String::with_capacity(16), |mut hex, byte| {
                use std::fmt::Write as _;
                let _ = write!(hex, "{byte:02x}");
                hex
            })
    }

    /// Encrypts `key` under this key (random nonce): what the database stores of a data key.
    pub fn wrap(&self, key: &Key) -> Vec<u8> {
        let cipher = Aes256Gcm::new((&self.0).into());
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(
            cipher
                .encrypt(&nonce, key.0.as_slice())
                .expect("AES-GCM encrypts 32 bytes"),
        );
        out
    }

    /// Decrypts a data key wrapped by [`Key::wrap`] under this key.
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Key, SecretError> {
        if wrapped.len() < 12 {
            return Err(SecretError::Malformed);
        }
        let cipher = Aes256Gcm::new((&self.0).into());
        let plain = cipher
            .decrypt(&nonce_of(&wrapped[..12]), &wrapped[12..])
            .map_err(|_| SecretError::DoesNotOpen)?;
        Ok(Key(plain.try_into().map_err(|_| SecretError::Malformed)?))
    }

    /// A subkey for one purpose, derived from this key (HMAC-SHA256 of the purpose's label).
    fn subkey(&self, purpose: &[u8]) -> Key {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(purpose);
        Key(mac.finalize().into_bytes().into())
    }

    fn seal(&self, key_id: &str, plaintext: &[u8]) -> String {
        let (nonce_key, encryption_key) = (
            self.subkey(b"efms seal v2 nonce"),
            self.subkey(b"efms seal v2 encryption"),
        );
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&nonce_key.0).expect("HMAC takes any key");
        mac.update(plaintext);
        let tag = mac.finalize().into_bytes();
        let nonce = nonce_of(&tag[..12]);
        let cipher = Aes256Gcm::new((&encryption_key.0).into());
        let mut sealed = nonce.to_vec();
        sealed.extend(
            cipher
                .encrypt(&nonce, plaintext)
                .expect("AES-GCM encrypts any length used here"),
        );
        format!(
            "{SEALED_PREFIX}{CURRENT_FORMAT}:{key_id}:{}",
            STANDARD.encode(sealed)
        )
    }

    fn open(&self, format: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < 12 {
            return Err(SecretError::Malformed);
        }
        let key = match format {
            CURRENT_FORMAT => self.subkey(b"efms seal v2 encryption"),
            LEGACY_FORMAT => self.clone(),
            _ => return Err(SecretError::Malformed),
        };
        Aes256Gcm::new((&key.0).into())
            .decrypt(&nonce_of(&sealed[..12]), &sealed[12..])
            .map_err(|_| SecretError::DoesNotOpen)
    }
}

/// A 96-bit nonce from its 12 bytes.
fn nonce_of(bytes: &[u8]) -> Nonce<aes_gcm::aes::cipher::consts::U12> {
    let array: [u8; 12] = bytes.try_into().expect("12 bytes");
    array.into()
}

/// Seals every sensitive data source of an Envoy `Secret` document that holds material in clear
/// with `key` (named `key_id`); sealed data sources and references to files or environment
/// variables are left as they are.
pub fn seal_document(document: &mut Value, key_id: &str, key: &Key) {
    sensitive::for_each(ResourceKind::Secret, document, &mut |value| {
        if value.data_source && value.material() == Material::Clear {
            let plaintext = serde_json::to_vec(&*value.value).expect("JSON serialises");
            *value.value = serde_json::json!({ "inline_string": key.seal(key_id, &plaintext) });
        }
    });
}

/// Opens every sealed data source of a secret, with the data key its text names.
pub fn open_document(
    document: &mut Value,
    key_of: &dyn Fn(&str) -> Option<Key>,
) -> Result<(), SecretError> {
    let mut outcome = Ok(());
    sensitive::for_each(ResourceKind::Secret, document, &mut |value| {
        if outcome.is_err() {
            return;
        }
        let Some(sealed) = sealed_text(value.value) else {
            return;
        };
        outcome = open_text(sealed, key_of).map(|opened| *value.value = opened);
    });
    outcome
}

/// The data source a sealed text (after [`SEALED_PREFIX`]) holds.
fn open_text(text: &str, key_of: &dyn Fn(&str) -> Option<Key>) -> Result<Value, SecretError> {
    let (format, rest) = text.split_once(':').ok_or(SecretError::Malformed)?;
    let (key_id, body) = rest.split_once(':').ok_or(SecretError::Malformed)?;
    let key = key_of(key_id).ok_or_else(|| SecretError::UnknownKey(key_id.to_owned()))?;
    let sealed = STANDARD.decode(body).map_err(|_| SecretError::Malformed)?;
    let plain = key.open(format, &sealed)?;
    serde_json::from_slice(&plain).map_err(|_| SecretError::Malformed)
}

/// The data key ids a secret's sealed data sources name.
pub fn sealed_key_ids(document: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    let mut copy = document.clone();
    sensitive::for_each(ResourceKind::Secret, &mut copy, &mut |value| {
        let id = sealed_text(value.value)
            .and_then(|text| text.split(':').nth(1))
            .map(str::to_owned);
        if let Some(id) = id {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    });
    ids
}

/// The text after the prefix, when `source` is a sealed data source.
fn sealed_text(source: &Value) -> Option<&str> {
    source
        .get("inline_string")
        .and_then(Value::as_str)
        .and_then(|text| text.strip_prefix(SEALED_PREFIX))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn secret() -> Value {
        json!({ "name": "s", "tls_certificate": {
            "certificate_chain": { "inline_string": "CERT" },
            "private_key": { "inline_string": "PRIVATE KEY" },
            "password": { "inline_bytes": "cGFzcw==" } } })
    }

    #[test]
    fn sealed_material_is_gone_from_the_text_and_opens_back() {
        let key = Key::generate();
        let mut document = secret();
        seal_document(&mut document, "k1", &key);
        let text = document.to_string();
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("cGFzcw=="),
            "{text}"
        );
        assert!(text.contains("CERT"), "public parts stay readable");
        assert_eq!(sealed_key_ids(&document), ["k1"]);
        open_document(&mut document, &|id| (id == "k1").then(|| key.clone())).unwrap();
        assert_eq!(document, secret());
    }

    #[test]
    fn the_same_material_seals_to_the_same_text_and_only_opens_with_its_key() {
        let key = Key::generate();
        let (mut a, mut b) = (secret(), secret());
        seal_document(&mut a, "k1", &key);
        seal_document(&mut b, "k1", &key);
        assert_eq!(a, b);
        let mut resealed = a.clone();
        seal_document(&mut resealed, "k1", &key);
        assert_eq!(resealed, a, "sealed data is not sealed twice");
        let other = Key::generate();
        assert_eq!(
            open_document(&mut a, &|_| Some(other.clone())),
            Err(SecretError::DoesNotOpen)
        );
    }

    #[test]
    fn every_value_of_a_generic_secrets_map_is_sealed() {
        let key = Key::generate();
        let original = json!({ "name": "g", "generic_secret": {
            "secrets": { "api": { "inline_string": "API-TOKEN" }, "db": { "inline_bytes": "REIx" } } } });
        let mut document = original.clone();
        seal_document(&mut document, "k1", &key);
        let text = document.to_string();
        assert!(
            !text.contains("API-TOKEN") && !text.contains("REIx"),
            "{text}"
        );
        assert!(text.contains("efms:enc:v2:k1:"), "{text}");
        open_document(&mut document, &|_| Some(key.clone())).unwrap();
        assert_eq!(document, original);
    }

    /// What sealing wrote before subkeys: the data key derived the nonce and encrypted.
    fn legacy_seal(key: &Key, key_id: &str, plaintext: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).unwrap();
        mac.update(plaintext);
        let nonce = nonce_of(&mac.finalize().into_bytes()[..12]);
        let mut sealed = nonce.to_vec();
        sealed.extend(
            Aes256Gcm::new((&key.0).into())
                .encrypt(&nonce, plaintext)
                .unwrap(),
        );
        format!("{SEALED_PREFIX}v1:{key_id}:{}", STANDARD.encode(sealed))
    }

    #[test]
    fn sealing_uses_subkeys_and_still_opens_what_the_data_key_sealed_alone() {
        let key = Key::generate();
        let source = json!({ "inline_string": "PRIVATE KEY" });
        let plaintext = serde_json::to_vec(&source).unwrap();
        let legacy = legacy_seal(&key, "k1", &plaintext);
        let current = key.seal("k1", &plaintext);
        let body = |text: &str| text.rsplit(':').next().unwrap().to_owned();
        assert_ne!(
            body(&legacy)[..16],
            body(&current)[..16],
            "the nonce no longer comes from the data key itself"
        );
        assert_ne!(key.subkey(b"efms seal v2 nonce"), key);
        for text in [legacy, current] {
            let mut document = json!({ "name": "s", "tls_certificate": { "private_key": { "inline_string": text } } });
            open_document(&mut document, &|_| Some(key.clone())).unwrap();
            assert_eq!(document["tls_certificate"]["private_key"], source);
        }
    }

    #[test]
    fn a_data_key_wraps_under_the_master_key_only() {
        let (master, data) = (Key::generate(), Key::generate());
        let wrapped = master.wrap(&data);
        assert_eq!(master.unwrap_key(&wrapped).unwrap(), data);
        assert!(Key::generate().unwrap_key(&wrapped).is_err());
        assert!(Key::from_base64("c2hvcnQ=").is_err());
        assert_eq!(master.fingerprint().len(), 16);
    }
}
