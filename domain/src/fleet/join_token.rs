//! Join tokens: what an agent proves it speaks for a VM with. Only a digest is ever stored.

use aes_gcm::aead::rand_core::RngCore as _;
use aes_gcm::aead::OsRng;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// What every join token starts with, so that one found in a log or a paste is recognised.
pub const PREFIX: &str = "efmsvm_";

/// A freshly issued join token: shown once, stored only as its digest.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(…)")
    }
}

impl JoinToken {
    /// A new token: the prefix, then 32 random bytes in URL-safe base64.
    pub fn generate() -> Self {
        let mut bytes = [0_u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Self {
            secret: format!(
                "{PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
            ),
        }
    }

    /// The token, to show once.
    pub fn reveal(&self) -> &str {
        &self.secret
    }

    /// Its digest, as stored.
    pub fn digest(&self) -> [u8; 32] {
        digest_of(&self.secret)
    }
}

/// The digest of a presented token, to look it up by.
pub fn digest_of(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tokens_differ_and_each_is_found_by_its_digest_alone() {
        let (a, b) = (JoinToken::generate(), JoinToken::generate());
        assert_ne!(a.reveal(), b.reveal());
        assert!(a.reveal().starts_with(PREFIX));
        assert_eq!(digest_of(a.reveal()), a.digest());
        assert_eq!(digest_of(&format!("{}\n", a.reveal())), a.digest());
        assert_ne!(a.digest(), b.digest());
        assert!(!format!("{a:?}").contains(a.reveal()));
    }
}
