//! One delivery attempt: a signed `POST` of the event to the endpoint, redirects not followed,
//! and targets on private, loopback or link-local addresses refused (unless allowed) both when
//! the URL names an address and when its name resolves to one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use efms_domain::webhooks::{signature_header, AttemptResult, TargetPolicy};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The most of a response body an attempt records.
pub const EXCERPT_BYTES: usize = 1_024;

/// What one attempt did, as recorded.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What it came to, for the retry policy.
    pub result: AttemptResult,
    /// How long it took.
    pub duration: Duration,
    /// The start of the response body.
    pub excerpt: Option<String>,
    /// Why there was no answer.
    pub error: Option<String>,
}

/// The request a delivery makes.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Where to.
    pub url: &'a str,
    /// The `webhook-id`.
    pub message_id: &'a str,
    /// The JSON body.
    pub body: &'a str,
    /// The secrets that sign it (the current one first).
    pub secrets: &'a [&'a [u8]],
}

/// Resolves names as the system does, keeping only the addresses a webhook may reach.
#[derive(Debug)]
struct GuardedResolver {
    policy: TargetPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|address| policy.refuses(address.ip()).is_none())
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                let why = policy.refuses(found[0].ip()).unwrap_or("refused");
                return Err(format!(
                    "`{}` resolves to {} ({why}), which webhooks may not reach",
                    name.as_str(),
                    found[0].ip()
                )
                .into());
            }
            let addresses: Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

/// The HTTP client of the deliveries: no redirects, no proxy, a timeout per attempt.
pub fn client(timeout: Duration, policy: &TargetPolicy) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("efms-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver {
            policy: policy.clone(),
        }))
        .build()
        .expect("the webhook client builds")
}

/// Why `url` may not be a webhook's target (a literal address refused by policy), if it may not.
pub fn refused_target(url: &str, policy: &TargetPolicy) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let address = match parsed.host()? {
        url::Host::Ipv4(v4) => std::net::IpAddr::V4(v4),
        url::Host::Ipv6(v6) => std::net::IpAddr::V6(v6),
        url::Host::Domain(name) if name.eq_ignore_ascii_case("localhost") => {
            let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
            return policy
                .refuses(loopback)
                .map(|_| "`localhost` is a loopback address".to_owned());
        }
        url::Host::Domain(_) => return None,
    };
    policy
        .refuses(address)
        .map(|why| format!("{address} is {why}"))
}

/// Sends one attempt of a delivery signed at `timestamp` (Unix seconds).
pub async fn send(
    client: &reqwest::Client,
    request: Request<'_>,
    timestamp: i64,
    policy: &TargetPolicy,
) -> Outcome {
    let started = Instant::now();
    if let Some(why) = refused_target(request.url, policy) {
        return Outcome {
            result: AttemptResult::Failed,
            duration: started.elapsed(),
            excerpt: None,
            error: Some(format!("refused: {why}, which webhooks may not reach")),
        };
    }
    let signature = signature_header(request.secrets, request.message_id, timestamp, request.body);
    let sent = client
        .post(request.url)
        .header("content-type", "application/json")
        .header("webhook-id", request.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(request.body.to_owned())
        .send()
        .await;
    match sent {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let mut excerpt = Vec::new();
            while excerpt.len() < EXCERPT_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                    Ok(None) | Err(_) => break,
                }
            }
            excerpt.truncate(EXCERPT_BYTES);
            let excerpt = String::from_utf8_lossy(&excerpt).into_owned();
            let error = (300..400).contains(&status).then(|| {
                let to = response
                    .headers()
                    .get("location")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("?");
                format!("a redirect (to {to}) is not followed: a delivery needs a 2xx")
            });
            Outcome {
                result: AttemptResult::Answered {
                    status,
                    retry_after,
                },
                duration: started.elapsed(),
                excerpt: (!excerpt.is_empty()).then_some(excerpt),
                error,
            }
        }
        Err(error) => Outcome {
            result: AttemptResult::Failed,
            duration: started.elapsed(),
            excerpt: None,
            error: Some(describe(&error)),
        },
    }
}

/// An error with its causes, as one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_private_targets_are_refused_unless_allowed() {
        let strict = TargetPolicy::default();
        assert!(refused_target("http://127.0.0.1:9000/hook", &strict).is_some());
        assert!(refused_target("http://[::1]/hook", &strict).is_some());
        assert!(refused_target("https://localhost/hook", &strict).is_some());
        assert!(refused_target("http://169.254.169.254/latest", &strict).is_some());
        assert_eq!(refused_target("https://hooks.example.com/x", &strict), None);
        let open = TargetPolicy::EVERYWHERE;
        assert_eq!(refused_target("http://127.0.0.1:9000/hook", &open), None);
        let loopback = TargetPolicy {
            allow_private: false,
            allowed_networks: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert_eq!(refused_target("https://localhost/hook", &loopback), None);
        assert!(refused_target("http://10.0.0.1/hook", &loopback).is_some());
    }
}
