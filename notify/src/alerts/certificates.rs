//! The findings of [`Condition::TlsCertificateExpiring`](efms_domain::alerts::Condition): the
//! tenant's TLS secrets, on every branch, whose certificate chain or trusted CAs hold a
//! certificate that expires within the rule's days (or has expired). Only certificates the secret
//! holds inline can be read; a chain named by a file lives on the proxies' hosts.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use efms_commands::Scope;
use efms_domain::config::MAIN_BRANCH;
use efms_domain::x509::{not_after, pem_certificates};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::conditions::Finding;

/// Where in a secret its certificates are, and what they are called in a summary.
const PLACES: [(&str, &str, &str); 2] = [
    ("tls_certificate", "certificate_chain", "certificate chain"),
    ("validation_context", "trusted_ca", "trusted CA"),
];

/// The secrets of `tenant_id` holding a certificate that expires within `days`.
pub(super) async fn tls_expiring(
    pool: &PgPool,
    tenant_id: Uuid,
    days: u32,
) -> Result<Vec<Finding>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT branch, name, document
           FROM config_resources
           WHERE tenant_id = $1 AND kind = 'secret'
             AND (document ? 'tls_certificate' OR document ? 'validation_context')
           ORDER BY branch, name"#,
        tenant_id
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let horizon = Utc::now() + TimeDelta::days(i64::from(days));
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let (place, ends) = earliest_end(&row.document)?;
            (ends <= horizon).then(|| {
                let named = if row.branch == MAIN_BRANCH {
                    row.name.clone()
                } else {
                    format!("{}@{}", row.name, row.branch)
                };
                let when = ends.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let verb = if ends <= Utc::now() {
                    "expired"
                } else {
                    "expires"
                };
                Finding {
                    subject: format!("secret/{named}"),
                    since: None,
                    summary: format!("secret {named}: a certificate of its {place} {verb} {when}"),
                }
            })
        })
        .collect())
}

/// The earliest end of validity among the certificates a secret holds inline, and where it is.
fn earliest_end(document: &Value) -> Option<(&'static str, DateTime<Utc>)> {
    PLACES
        .iter()
        .filter_map(|(message, field, place)| {
            let source = document.get(message)?.get(field)?;
            certificates(source)
                .iter()
                .filter_map(|der| not_after(der).ok())
                .min()
                .map(|ends| (*place, ends))
        })
        .min_by_key(|(_, ends)| *ends)
}

/// The DER of each certificate an inline data source holds (PEM text, or PEM or DER bytes).
fn certificates(source: &Value) -> Vec<Vec<u8>> {
    if let Some(text) = source.get("inline_string").and_then(Value::as_str) {
        return pem_certificates(text);
    }
    let Some(bytes) = source
        .get("inline_bytes")
        .and_then(Value::as_str)
        .and_then(|encoded| STANDARD.decode(encoded).ok())
    else {
        return Vec::new();
    };
    match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => pem_certificates(text),
        _ => vec![bytes],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Made with `openssl req -x509 -days 1000`: valid until 2029-08-28 18:52:20.
    const PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBeTCCAR+gAwIBAgIUEBbpwwY9+sqXbc0hmYxK5XhZkVQwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHZWZtcy1jYTAeFw0yNjEyMDIxODUyMjBaFw0yOTA4MjgxODUy
MjBaMBIxEDAOBgNVBAMMB2VmbXMtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AARVhkBF7PxV7Nq52FsF2VcqK7IDb0umPiu91WD0S2ac1geyAztYSW/KwJkZu3w1
nllQcRix3R7q/gr/NscgHkjFo1MwUTAdBgNVHQ4EFgQUFmiQ3FqCj3NGwPnafbhw
wB68MiMwHwYDVR0jBBgwFoAUFmiQ3FqCj3NGwPnafbhwwB68MiMwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAw6ctuiwIZFpNYMaB2TAaELBqOuDm
umFk/n2oRyxbf3kCIAYvYf8H0byLANgmNq2hd1IaWC7huOYF1377Tna4/un0
-----END CERTIFICATE-----
";

    #[test]
    fn certificates_are_read_from_text_pem_bytes_and_der_bytes_but_not_files() {
        let der = pem_certificates(PEM).remove(0);
        let ends = "2029-08-28T18:52:20Z".parse::<DateTime<Utc>>().unwrap();
        for source in [
            json!({ "inline_string": PEM }),
            json!({ "inline_bytes": STANDARD.encode(PEM) }),
            json!({ "inline_bytes": STANDARD.encode(&der) }),
        ] {
            let secret = json!({ "tls_certificate": { "certificate_chain": source } });
            assert_eq!(earliest_end(&secret), Some(("certificate chain", ends)));
        }
        let ca = json!({ "validation_context": { "trusted_ca": { "inline_string": PEM } } });
        assert_eq!(earliest_end(&ca), Some(("trusted CA", ends)));
        let file =
            json!({ "tls_certificate": { "certificate_chain": { "filename": "/etc/c.pem" } } });
        assert_eq!(earliest_end(&file), None);
    }
}
