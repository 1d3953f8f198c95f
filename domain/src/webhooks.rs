//! Webhooks (API-WH-001…003, ADR 0015): how a delivery is signed, when a failed one is tried
//! again, and which targets are refused. Deliveries follow the Standard Webhooks conventions: the
//! message id stays the same across retries, and the signature is `v1,` + base64 of
//! HMAC-SHA256 over `{id}.{timestamp}.{body}` keyed by the secret's bytes (`whsec_` + base64).

use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// What a webhook's signing secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// A webhook's signing secret as its owner receives it: `whsec_` and the base64 of its bytes.
#[must_use]
pub fn secret_text(bytes: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The `webhook-signature` value for one delivery attempt: one `v1,<signature>` per secret,
/// space-separated (two while a rotated secret overlaps the new one).
#[must_use]
pub fn signature_header(secrets: &[&[u8]], id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|secret| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body.as_bytes());
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The default gaps between a delivery's attempts: after the first fails, 5 s, then 5 min, and
/// so on to a last try about two days after the event.
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h,14h";

/// The longest `Retry-After` honoured: a receiver cannot push a retry further than this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3_600);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status.
    Answered {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After`, in seconds, when it gave one.
        retry_after: Option<Duration>,
    },
    /// No answer: refused, timed out, an address refused by policy.
    Failed,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Delivered: nothing more to do.
    Delivered,
    /// Try again after this long.
    RetryAfter(Duration),
    /// The schedule is spent: the delivery failed (a user may redeliver it).
    GiveUp,
    /// The receiver said the endpoint is gone (410): the webhook is disabled.
    DisableEndpoint,
}

/// What follows attempt number `attempt` (1 for the first) that ended with `result`, under
/// `schedule` (the gaps after the 1st, 2nd, … failed attempt); `jitter` in [-1, 1] moves the gap
/// by up to a tenth, so that retries of many deliveries do not arrive together.
#[must_use]
pub fn next_step(
    result: &AttemptResult,
    attempt: u32,
    schedule: &[Duration],
    jitter: f64,
) -> NextStep {
    let retry_after = match result {
        AttemptResult::Answered { status, .. } if (200..300).contains(status) => {
            return NextStep::Delivered
        }
        AttemptResult::Answered { status: 410, .. } => return NextStep::DisableEndpoint,
        AttemptResult::Answered { retry_after, .. } => *retry_after,
        AttemptResult::Failed => None,
    };
    let Some(gap) = usize::try_from(attempt)
        .ok()
        .and_then(|attempt| schedule.get(attempt.saturating_sub(1)))
    else {
        return NextStep::GiveUp;
    };
    let jittered = gap.mul_f64(1.0 + jitter.clamp(-1.0, 1.0) / 10.0);
    let asked = retry_after.map_or(Duration::ZERO, |asked| asked.min(MAX_RETRY_AFTER));
    NextStep::RetryAfter(jittered.max(asked))
}

/// Reads a retry schedule: gaps such as `5s,5m,2h,1d`, each from 100 ms to 7 days, 1 to 20 of
/// them; the error says what is wrong.
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let gaps: Vec<Duration> = text
        .split(',')
        .map(|gap| parse_duration(gap.trim()))
        .collect::<Result<_, _>>()?;
    if gaps.is_empty() || gaps.len() > 20 {
        return Err("a retry schedule has 1 to 20 gaps".to_owned());
    }
    if let Some(gap) = gaps
        .iter()
        .find(|gap| **gap < Duration::from_millis(100) || **gap > Duration::from_secs(7 * 86_400))
    {
        return Err(format!("a gap of {gap:?} is outside 100ms to 7d"));
    }
    Ok(gaps)
}

/// A duration such as `250ms`, `5s`, `5m`, `2h` or `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 250ms, 5s, 5m, 2h or 1d"))?;
    let seconds = |factor: u64| Duration::from_secs(value.saturating_mul(factor));
    match &text[digits.len()..] {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3_600)),
        "d" => Ok(seconds(86_400)),
        _ => Err(format!(
            "`{text}` is not a duration such as 250ms, 5s, 5m, 2h or 1d"
        )),
    }
}

/// Why an address may not be a webhook's target (unless private targets are allowed): loopback,
/// private, link-local, unspecified, multicast, shared or documentation ranges; `None` when it
/// is a public address.
#[must_use]
pub fn forbidden_address(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                Some("a private address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || a == 0 {
                Some("not a unicast address")
            } else if v4.is_documentation() || a >= 240 {
                Some("a reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("a loopback address")
            } else if first & 0xfe00 == 0xfc00 {
                Some("a private address")
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else {
                None
            }
        }
    }
}

/// A network in CIDR notation, such as `10.20.0.0/16` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = text.split_once('/').unwrap_or((text, ""));
        let base: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not a network such as 10.20.0.0/16 or fd00::/8"))?;
        let bits = if base.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            bits
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(|| format!("`{text}`: the prefix length is 0 to {bits}"))?
        };
        Ok(Self { base, prefix })
    }
}

impl Network {
    /// Whether `address` lies in it (an IPv4-mapped IPv6 address counts as its IPv4 address).
    #[must_use]
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        let masked = |value: u128, bits: u32| {
            let shift = bits - u32::from(self.prefix);
            value.checked_shr(shift).unwrap_or(0)
        };
        match (self.base, address) {
            (IpAddr::V4(base), IpAddr::V4(address)) => {
                masked(u128::from(u32::from(base)), 32)
                    == masked(u128::from(u32::from(address)), 32)
            }
            (IpAddr::V6(base), IpAddr::V6(address)) => {
                masked(u128::from(base), 128) == masked(u128::from(address), 128)
            }
            _ => false,
        }
    }
}

/// Which addresses webhooks may reach: public ones always; private, loopback and link-local
/// ones when every private target is allowed, or when they lie in one of the allowed networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Every address is allowed.
    pub allow_private: bool,
    /// Networks reachable although private (an internal receiver's, say).
    pub allowed_networks: Vec<Network>,
}

impl TargetPolicy {
    /// Every address allowed.
    pub const EVERYWHERE: Self = Self {
        allow_private: true,
        allowed_networks: Vec::new(),
    };

    /// Why `address` may not be a webhook's target, if it may not.
    #[must_use]
    pub fn refuses(&self, address: IpAddr) -> Option<&'static str> {
        if self.allow_private
            || self
                .allowed_networks
                .iter()
                .any(|network| network.contains(address))
        {
            return None;
        }
        forbidden_address(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let header = signature_header(
            &[&secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn during_a_rotation_each_secret_signs() {
        let header = signature_header(&[b"new", b"old"], "msg_1", 1, "{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|part| part.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn failures_follow_the_schedule_and_a_2xx_ends_it() {
        let schedule = parse_schedule("1s,10s").unwrap();
        let failed = AttemptResult::Answered {
            status: 500,
            retry_after: None,
        };
        assert_eq!(
            next_step(&failed, 1, &schedule, 0.0),
            NextStep::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            next_step(&AttemptResult::Failed, 2, &schedule, 0.0),
            NextStep::RetryAfter(Duration::from_secs(10))
        );
        assert_eq!(next_step(&failed, 3, &schedule, 0.0), NextStep::GiveUp);
        let ok = AttemptResult::Answered {
            status: 204,
            retry_after: None,
        };
        assert_eq!(next_step(&ok, 3, &schedule, 0.0), NextStep::Delivered);
    }

    #[test]
    fn a_redirect_is_a_failure_and_410_disables() {
        let schedule = parse_schedule("1s").unwrap();
        let redirect = AttemptResult::Answered {
            status: 302,
            retry_after: None,
        };
        assert!(matches!(
            next_step(&redirect, 1, &schedule, 0.0),
            NextStep::RetryAfter(_)
        ));
        let gone = AttemptResult::Answered {
            status: 410,
            retry_after: None,
        };
        assert_eq!(
            next_step(&gone, 1, &schedule, 0.0),
            NextStep::DisableEndpoint
        );
    }

    #[test]
    fn retry_after_lengthens_a_gap_within_a_bound_and_jitter_stays_within_a_tenth() {
        let schedule = parse_schedule("1s").unwrap();
        let busy = |seconds| AttemptResult::Answered {
            status: 429,
            retry_after: Some(Duration::from_secs(seconds)),
        };
        assert_eq!(
            next_step(&busy(30), 1, &schedule, 0.0),
            NextStep::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            next_step(&busy(10 * 86_400), 1, &schedule, 0.0),
            NextStep::RetryAfter(MAX_RETRY_AFTER)
        );
        let NextStep::RetryAfter(late) = next_step(&AttemptResult::Failed, 1, &schedule, 1.0)
        else {
            panic!("a retry")
        };
        assert_eq!(late, Duration::from_millis(1_100));
    }

    #[test]
    fn schedules_and_durations_are_read_with_their_units() {
        assert_eq!(
            parse_schedule(DEFAULT_RETRY_SCHEDULE).unwrap()[1],
            Duration::from_secs(300)
        );
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_schedule("1ms").is_err());
        assert!(parse_schedule("").is_err());
    }

    #[test]
    fn allowed_networks_open_their_private_addresses_only() {
        let policy = TargetPolicy {
            allow_private: false,
            allowed_networks: vec!["10.20.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
        };
        let refuses = |text: &str| policy.refuses(text.parse().unwrap());
        assert_eq!(refuses("10.20.3.4"), None);
        assert_eq!(refuses("::ffff:10.20.3.4"), None);
        assert_eq!(refuses("fd12::1"), None);
        assert_eq!(refuses("10.21.0.1"), Some("a private address"));
        assert_eq!(refuses("127.0.0.1"), Some("a loopback address"));
        assert_eq!(refuses("93.184.216.34"), None);
        let single: Network = "127.0.0.1".parse().unwrap();
        assert!(single.contains("127.0.0.1".parse().unwrap()));
        assert!(!single.contains("127.0.0.2".parse().unwrap()));
        let everything: Network = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains("192.168.1.1".parse().unwrap()));
        assert!("10.0.0.0/33"
            .parse::<Network>()
            .unwrap_err()
            .contains("0 to 32"));
        assert!("ten/8".parse::<Network>().is_err());
    }

    #[test]
    fn private_loopback_and_link_local_targets_are_named() {
        let verdict = |text: &str| forbidden_address(text.parse().unwrap());
        assert_eq!(verdict("127.0.0.1"), Some("a loopback address"));
        assert_eq!(verdict("10.1.2.3"), Some("a private address"));
        assert_eq!(verdict("192.168.0.9"), Some("a private address"));
        assert_eq!(verdict("100.64.0.1"), Some("a private address"));
        assert_eq!(verdict("169.254.169.254"), Some("a link-local address"));
        assert_eq!(verdict("::1"), Some("a loopback address"));
        assert_eq!(verdict("fd00::1"), Some("a private address"));
        assert_eq!(verdict("fe80::1"), Some("a link-local address"));
        assert_eq!(verdict("::ffff:127.0.0.1"), Some("a loopback address"));
        assert_eq!(verdict("0.0.0.0"), Some("not a unicast address"));
        assert_eq!(verdict("93.184.216.34"), None);
        assert_eq!(verdict("2606:4700::1"), None);
    }
}
