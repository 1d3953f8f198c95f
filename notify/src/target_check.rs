//! The check of a webhook's target when it is created or its URL changes: the URL may not name
//! a refused address, its host name may not resolve to one, and the endpoint may not answer with
//! a redirect (a `HEAD` request shows it). Deliveries never follow redirects, so a redirecting
//! endpoint would never receive one; one that redirects to a private address is named as such.
//! An endpoint that cannot be reached yet is accepted: each attempt checks its target again.

use std::time::Duration;

use efms_domain::webhooks::TargetPolicy;

use crate::attempt::{client, refused_target};

/// The settings that open private targets, named in refusals.
const SETTINGS: &str = "EFMS_WEBHOOK_ALLOW_PRIVATE, EFMS_WEBHOOK_ALLOWED_NETWORKS";

/// Checks `url` as a webhook's target under `policy`, each step taking at most `timeout`;
/// answers why it is refused.
pub async fn check_target(
    url: &str,
    policy: &TargetPolicy,
    timeout: Duration,
) -> Result<(), String> {
    check_address(url, policy, timeout).await?;
    let Some((status, location)) = redirect(url, policy, timeout).await else {
        return Ok(());
    };
    let target = reqwest::Url::parse(url)
        .and_then(|base| base.join(&location))
        .map_err(|_| format!("redirects (HTTP {status}) to `{location}`, which is not a URL"))?;
    if !matches!(target.scheme(), "http" | "https") {
        return Err(format!(
            "redirects (HTTP {status}) to `{target}`, which is not http or https"
        ));
    }
    if let Err(why) = check_address(target.as_str(), policy, timeout).await {
        return Err(format!("redirects (HTTP {status}) to `{target}`: {why}"));
    }
    Err(format!(
        "redirects (HTTP {status}) to `{target}`; deliveries do not follow redirects, so give \
         the URL that receives them"
    ))
}

/// The URL's literal address, or every address its host name resolves to, must be allowed. A
/// name that does not resolve now is accepted.
async fn check_address(url: &str, policy: &TargetPolicy, timeout: Duration) -> Result<(), String> {
    if let Some(why) = refused_target(url, policy) {
        return Err(format!("{why}, which webhooks may not reach ({SETTINGS})"));
    }
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Ok(());
    };
    let Some(url::Host::Domain(host)) = parsed.host() else {
        return Ok(());
    };
    let port = parsed.port_or_known_default().unwrap_or(443);
    let resolved = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await;
    if let Ok(Ok(addresses)) = resolved {
        for address in addresses {
            if let Some(why) = policy.refuses(address.ip()) {
                return Err(format!(
                    "`{host}` resolves to {} ({why}), which webhooks may not reach ({SETTINGS})",
                    address.ip()
                ));
            }
        }
    }
    Ok(())
}

/// The status and `Location` of the endpoint's answer to a `HEAD`, when it is a redirect.
async fn redirect(url: &str, policy: &TargetPolicy, timeout: Duration) -> Option<(u16, String)> {
    let response = client(timeout, policy).head(url).send().await.ok()?;
    let status = response.status();
    if !status.is_redirection() {
        return None;
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((status.as_u16(), location))
}
