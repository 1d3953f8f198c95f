//! Password hashing (argon2id) off the async workers: each hash or check runs on the blocking
//! pool, at most one per CPU at a time (an argon2id computation takes about 19 MiB and tens of
//! milliseconds), so logins never stall the requests around them.
//!
//! A login of a user that does not exist (or of a tenant that does not) is checked against a
//! dummy hash of the same cost, so that it takes as long as a wrong password of a real user.

use std::sync::LazyLock;

use argon2::password_hash::rand_core::{OsRng, RngCore as _};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Hashes or checks running at once.
static SLOTS: LazyLock<Semaphore> = LazyLock::new(|| {
    Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
});

/// The hash of a random password nobody knows, with the parameters of every real hash.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let mut secret = [0_u8; 32];
    OsRng.fill_bytes(&mut secret);
    Argon2::default()
        .hash_password(&secret, &SaltString::generate(&mut OsRng))
        .expect("argon2 hashes 32 bytes")
        .to_string()
});

/// Runs `work` on the blocking pool once a slot is free.
async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = SLOTS.acquire().await.map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)
}

/// The argon2id hash (PHC string) of `password`, with a fresh salt.
pub async fn hash(password: String) -> Result<String, ApiError> {
    off_the_workers(move || {
        Argon2::default()
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .map(|hash| hash.to_string())
            .map_err(ApiError::internal)
    })
    .await?
}

/// Whether `password` matches `stored` (a PHC string); a missing or unreadable `stored` is
/// checked against the dummy hash and never matches.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, ApiError> {
    off_the_workers(move || {
        matches_stored(password.as_bytes(), stored.as_deref(), |password, hash| {
            Argon2::default().verify_password(password, hash).is_ok()
        })
    })
    .await
}

/// Checks `password` with `check` against `stored`, or against the dummy hash when there is no
/// usable `stored` (the answer is then `false` whatever `check` says).
fn matches_stored(
    password: &[u8],
    stored: Option<&str>,
    check: impl FnOnce(&[u8], &PasswordHash<'_>) -> bool,
) -> bool {
    if let Some(hash) = stored.and_then(|stored| PasswordHash::new(stored).ok()) {
        return check(password, &hash);
    }
    let dummy = PasswordHash::new(&DUMMY_HASH).expect("the dummy hash is a PHC string");
    let _same_work = check(password, &dummy);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_user_is_checked_against_the_dummy_hash_and_never_matches() {
        let mut checked = Vec::new();
        let matched = matches_stored(b"guess", None, |_, hash| {
            checked.push(hash.to_string());
            true
        });
        assert!(!matched);
        assert_eq!(checked.len(), 1, "argon2 ran once");
        assert_eq!(checked[0], *DUMMY_HASH, "on the dummy hash");
        let unreadable = matches_stored(b"guess", Some("not a hash"), |_, _| true);
        assert!(!unreadable);
    }

    #[tokio::test]
    async fn an_existing_users_hash_is_checked_and_the_dummy_costs_the_same() {
        let stored = hash("correct horse battery".to_owned()).await.unwrap();
        let right = verify("correct horse battery".to_owned(), Some(stored.clone()));
        assert!(right.await.unwrap());
        let wrong = verify("guess".to_owned(), Some(stored.clone()));
        assert!(!wrong.await.unwrap());
        assert!(!verify("guess".to_owned(), None).await.unwrap());
        let (real, dummy) = (
            PasswordHash::new(&stored).unwrap(),
            PasswordHash::new(&DUMMY_HASH).unwrap(),
        );
        assert_eq!(real.algorithm, dummy.algorithm);
        assert_eq!(real.params, dummy.params, "same memory, time and lanes");
    }
}
