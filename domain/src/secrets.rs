//! Secret material at rest (NFR-SE-003): envelope encryption with AES-256-GCM.
//!
//! Each tenant has data keys; each data key is stored wrapped (encrypted) under the master key
//! from the configuration. In an Envoy `Secret`, every data source under a sensitive field
//! (`private_key`, `password`, `secret`, `pkcs12`, the `keys` of session tickets) is sealed with the
//! tenant's data key before the document reaches the database: the data source object is replaced
//! by `{"inline_string": "efms:enc:v1:<key id>:<base64 nonce+ciphertext>"}`, so the stored document
//! keeps Envoy's shape and validates. The nonce is derived from the plaintext (HMAC-SHA256 under
//! the data key), so the same secret seals to the same text: content hashes, "nothing changed"
//! and merges still compare secrets by content, while the text reveals nothing but equality.
//! Only the xDS server opens sealed data sources, for the tenant's own proxies.

use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The prefix of a sealed data source's text.
pub const SEALED_PREFIX: &str = "efms:enc:v1:";

/// The fields of an Envoy `Secret` whose data sources hold private material.
pub const SENSITIVE_FIELDS: [&str; 5] = ["private_key", "password", "secret", "keys", "pkcs12"];

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

    fn seal(&self, key_id: &str, plaintext: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(plaintext);
        let tag = mac.finalize().into_bytes();
        let nonce = nonce_of(&tag[..12]);
        let cipher = Aes256Gcm::new((&self.0).into());
        let mut sealed = nonce.to_vec();
        sealed.extend(
            cipher
                .encrypt(&nonce, plaintext)
                .expect("AES-GCM encrypts any length used here"),
        );
        format!("{SEALED_PREFIX}{key_id}:{}", STANDARD.encode(sealed))
    }

    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < 12 {
            return Err(SecretError::Malformed);
        }
        Aes256Gcm::new((&self.0).into())
            .decrypt(&nonce_of(&sealed[..12]), &sealed[12..])
            .map_err(|_| SecretError::DoesNotOpen)
    }
}

/// A 96-bit nonce from its 12 bytes.
fn nonce_of(bytes: &[u8]) -> Nonce<aes_gcm::aes::cipher::consts::U12> {
    let array: [u8; 12] = bytes.try_into().expect("12 bytes");
    array.into()
}

/// Seals every sensitive data source of an Envoy `Secret` document with `key` (named `key_id`);
/// data sources sealed already are left as they are.
pub fn seal_document(document: &mut Value, key_id: &str, key: &Key) {
    visit_sources(document, &mut |source| {
        if sealed_text(source).is_some() {
            return Ok(());
        }
        let plaintext = serde_json::to_vec(source).expect("JSON serialises");
        *source = serde_json::json!({ "inline_string": key.seal(key_id, &plaintext) });
        Ok(())
    })
    .expect("sealing does not fail");
}

/// Opens every sealed data source of a document, with the data key its text names.
pub fn open_document(
    document: &mut Value,
    key_of: &dyn Fn(&str) -> Option<Key>,
) -> Result<(), SecretError> {
    visit_sources(document, &mut |source| {
        let Some(text) = sealed_text(source) else {
            return Ok(());
        };
        let (key_id, body) = text.split_once(':').ok_or(SecretError::Malformed)?;
        let key = key_of(key_id).ok_or_else(|| SecretError::UnknownKey(key_id.to_owned()))?;
        let sealed = STANDARD.decode(body).map_err(|_| SecretError::Malformed)?;
        let plain = key.open(&sealed)?;
        *source = serde_json::from_slice(&plain).map_err(|_| SecretError::Malformed)?;
        Ok(())
    })
}

/// The data key ids a document's sealed data sources name.
pub fn sealed_key_ids(document: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    let mut copy = document.clone();
    let _ = visit_sources(&mut copy, &mut |source| {
        if let Some((id, _)) = sealed_text(source).and_then(|text| text.split_once(':')) {
            if !ids.iter().any(|known| known == id) {
                ids.push(id.to_owned());
            }
        }
        Ok(())
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

/// Calls `f` on every data source (an object) under a sensitive field.
fn visit_sources(
    value: &mut Value,
    f: &mut dyn FnMut(&mut Value) -> Result<(), SecretError>,
) -> Result<(), SecretError> {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if SENSITIVE_FIELDS.contains(&key.as_str()) {
                    match inner {
                        Value::Array(items) => {
                            for item in items.iter_mut().filter(|item| item.is_object()) {
                                f(item)?;
                            }
                        }
                        Value::Object(_) => f(inner)?,
                        _ => {}
                    }
                } else {
                    visit_sources(inner, f)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|item| visit_sources(item, f)),
        _ => Ok(()),
    }
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
    fn a_data_key_wraps_under_the_master_key_only() {
        let (master, data) = (Key::generate(), Key::generate());
        let wrapped = master.wrap(&data);
        assert_eq!(master.unwrap_key(&wrapped).unwrap(), data);
        assert!(Key::generate().unwrap_key(&wrapped).is_err());
        assert!(Key::from_base64("c2hvcnQ=").is_err());
        assert_eq!(master.fingerprint().len(), 16);
    }
}
