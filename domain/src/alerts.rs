//! Alert rules (NFR-OB-005, ADR 0016): the built-in kinds a tenant watches, with their
//! parameters checked, and an alert's lifecycle: pending while its condition has held for less
//! than the rule's `for`, firing once it has, resolved once it no longer holds.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::webhooks::parse_duration;

/// The kinds of rule, as the API names them.
pub const RULE_KINDS: [&str; 13] = [
    "proxy_nacked",
    "proxy_behind",
    "proxy_disconnected",
    "vm_down",
    "container_exited",
    "container_restarting",
    "container_oom_killed",
    "container_unhealthy",
    "route_5xx_ratio",
    "route_p99",
    "route_5xx_anomaly",
    "cluster_healthy_below",
    "tls_certificate_expiring",
];

/// The longest window or duration a rule may name.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// A rule's condition, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// A proxy refuses its configuration.
    ProxyNacked,
    /// A proxy has not accepted what it was sent.
    ProxyBehind,
    /// No stream of a proxy is open.
    ProxyDisconnected,
    /// A VM sends no heartbeat.
    VmDown,
    /// An Envoy container is not running (exited or dead) and still on its engine.
    ContainerExited,
    /// An Envoy container died more than `count` times within `window`.
    ContainerRestarting {
        /// How many deaths are too many.
        count: u32,
        /// Within what.
        window: Duration,
    },
    /// The OOM killer struck in an Envoy container within `window`.
    ContainerOomKilled {
        /// How long an OOM kill keeps the alert firing.
        window: Duration,
    },
    /// An Envoy container's health check fails.
    ContainerUnhealthy,
    /// A route's share of 5xx answers over `window` is above `ratio`.
    Route5xxRatio {
        /// The share (0 to 1).
        ratio: f64,
        /// Over what.
        window: Duration,
        /// Routes with fewer requests in the window are left alone.
        min_requests: u64,
    },
    /// A route's 99th percentile latency over `window` is above `ms`.
    RouteP99 {
        /// The latency, in milliseconds.
        ms: f64,
        /// Over what.
        window: Duration,
        /// Routes with fewer requests in the window are left alone.
        min_requests: u64,
    },
    /// A route's share of 5xx answers over `window` departs from its own recent past: above the
    /// mean of its minutes over `baseline` by more than `k` standard deviations and `floor`.
    Route5xxAnomaly {
        /// How many standard deviations.
        k: f64,
        /// The least departure that counts (so that quiet routes do not flap).
        floor: f64,
        /// The window judged.
        window: Duration,
        /// The past it is judged against (before the window).
        baseline: Duration,
        /// Routes with fewer requests in the window are left alone.
        min_requests: u64,
    },
    /// A cluster's healthy endpoints are below `percent` of its endpoints.
    ClusterHealthyBelow {
        /// The share, in percent.
        percent: f64,
    },
    /// A certificate of a TLS secret (its chain or its trusted CAs) expires within `days`.
    TlsCertificateExpiring {
        /// How many days ahead.
        days: u32,
    },
}

/// A checked rule: its condition and how long it must hold before the alert fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleSpec {
    /// What is watched.
    pub condition: Condition,
    /// How long the condition holds before the alert fires (pending until then).
    pub hold: Duration,
}

/// A problem with a rule, at a JSON pointer of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    /// Where.
    pub pointer: String,
    /// What.
    pub detail: String,
}

fn problem(pointer: &str, detail: impl Into<String>) -> RuleProblem {
    RuleProblem {
        pointer: pointer.to_owned(),
        detail: detail.into(),
    }
}

/// A duration parameter: text such as `5m`, more than zero and at most 30 days.
fn duration(
    params: &Map<String, Value>,
    name: &str,
    default: Option<Duration>,
) -> Result<Duration, RuleProblem> {
    let pointer = format!("/params/{name}");
    let Some(value) = params.get(name) else {
        return default.ok_or_else(|| problem(&pointer, "is required: a duration such as 5m"));
    };
    let text = value
        .as_str()
        .ok_or_else(|| problem(&pointer, "is a duration such as 5m, written as text"))?;
    if text.trim_start().starts_with('-') {
        return Err(problem(
            &pointer,
            "is negative; a duration is more than zero",
        ));
    }
    let parsed = parse_duration(text.trim()).map_err(|why| problem(&pointer, why))?;
    if parsed.is_zero() && name != "for" {
        return Err(problem(&pointer, "is zero; a window is more than zero"));
    }
    if parsed > MAX_DURATION {
        return Err(problem(&pointer, "is longer than 30d"));
    }
    Ok(parsed)
}

/// Checks a rule of `kind` with `params` (a JSON object; `for` is common to every kind).
pub fn check_rule(kind: &str, params: &Value) -> Result<RuleSpec, Vec<RuleProblem>> {
    let empty = Map::new();
    let params = match params {
        Value::Object(params) => params,
        Value::Null => &empty,
        _ => return Err(vec![problem("/params", "is an object")]),
    };
    let allowed: &[&str] = match kind {
        "container_restarting" => &["for", "count", "window"],
        "container_oom_killed" => &["for", "window"],
        "route_5xx_ratio" => &["for", "ratio", "window", "min_requests"],
        "route_p99" => &["for", "ms", "window", "min_requests"],
        "route_5xx_anomaly" => &["for", "k", "floor", "window", "baseline", "min_requests"],
        "cluster_healthy_below" => &["for", "percent"],
        "tls_certificate_expiring" => &["for", "days"],
        _ => &["for"],
    };
    let mut problems: Vec<RuleProblem> = params
        .keys()
        .filter(|key| !allowed.contains(&key.as_str()))
        .map(|key| {
            problem(
                &format!("/params/{key}"),
                format!("`{kind}` takes {}", allowed.join(", ")),
            )
        })
        .collect();
    let hold = duration(params, "for", Some(Duration::ZERO));
    let condition = match kind {
        "proxy_nacked" => Ok(Condition::ProxyNacked),
        "proxy_behind" => Ok(Condition::ProxyBehind),
        "proxy_disconnected" => Ok(Condition::ProxyDisconnected),
        "vm_down" => Ok(Condition::VmDown),
        "container_exited" => Ok(Condition::ContainerExited),
        "container_unhealthy" => Ok(Condition::ContainerUnhealthy),
        "tls_certificate_expiring" =>
        {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            number(params, "days", 1.0..=365.0, Some(14.0))
                .and_then(|days| {
                    (days.fract() == 0.0)
                        .then_some(days as u32)
                        .ok_or_else(|| problem("/params/days", "is a whole number of days"))
                })
                .map(|days| Condition::TlsCertificateExpiring { days })
        }
        "container_oom_killed" => duration(params, "window", Some(Duration::from_secs(900)))
            .map(|window| Condition::ContainerOomKilled { window }),
        "container_restarting" => {
            let count = match params.get("count") {
                Some(Value::Number(n)) => n
                    .as_u64()
                    .filter(|n| (1..=1_000).contains(n))
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| problem("/params/count", "is a whole number from 1 to 1000")),
                Some(_) => Err(problem("/params/count", "is a whole number from 1 to 1000")),
                None => Err(problem(
                    "/params/count",
                    "is required: deaths more than this fire",
                )),
            };
            let window = duration(params, "window", None);
            match (count, window) {
                (Ok(count), Ok(window)) => Ok(Condition::ContainerRestarting { count, window }),
                (count, window) => {
                    problems.extend(count.err());
                    problems.extend(window.err());
                    return Err(problems);
                }
            }
        }
        "route_5xx_ratio" | "route_p99" | "route_5xx_anomaly" | "cluster_healthy_below" => {
            match metric_condition(kind, params) {
                Ok(condition) => Ok(condition),
                Err(found) => {
                    problems.extend(found);
                    return Err(problems);
                }
            }
        }
        other => Err(problem(
            "/kind",
            format!(
                "`{}` is not a kind of rule; the kinds are {}",
                other.escape_default(),
                RULE_KINDS.join(", ")
            ),
        )),
    };
    match (condition, hold) {
        (Ok(condition), Ok(hold)) if problems.is_empty() => Ok(RuleSpec { condition, hold }),
        (condition, hold) => {
            problems.extend(condition.err());
            problems.extend(hold.err());
            Err(problems)
        }
    }
}

/// A number parameter within `range` (`default` when absent, required without one).
fn number(
    params: &Map<String, Value>,
    name: &str,
    range: std::ops::RangeInclusive<f64>,
    default: Option<f64>,
) -> Result<f64, RuleProblem> {
    let pointer = format!("/params/{name}");
    let within = format!("is a number from {} to {}", range.start(), range.end());
    match params.get(name) {
        None => default.ok_or_else(|| problem(&pointer, format!("is required: {within}"))),
        Some(value) => value
            .as_f64()
            .filter(|n| range.contains(n))
            .ok_or_else(|| problem(&pointer, within)),
    }
}

/// The condition of a metric kind, every problem named.
fn metric_condition(
    kind: &str,
    params: &Map<String, Value>,
) -> Result<Condition, Vec<RuleProblem>> {
    let five_minutes = Some(Duration::from_secs(300));
    let window = duration(params, "window", five_minutes);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let min_requests = number(params, "min_requests", 0.0..=1e9, Some(10.0)).map(|n| n as u64);
    let condition = match kind {
        "route_5xx_ratio" => (|| {
            Ok(Condition::Route5xxRatio {
                ratio: number(params, "ratio", 0.0..=1.0, None)?,
                window: window.clone()?,
                min_requests: min_requests.clone()?,
            })
        })(),
        "route_p99" => (|| {
            Ok(Condition::RouteP99 {
                ms: number(params, "ms", 0.0..=3_600_000.0, None)?,
                window: window.clone()?,
                min_requests: min_requests.clone()?,
            })
        })(),
        "route_5xx_anomaly" => (|| {
            Ok(Condition::Route5xxAnomaly {
                k: number(params, "k", 0.0..=100.0, Some(3.0))?,
                floor: number(params, "floor", 0.0..=1.0, Some(0.01))?,
                window: window.clone()?,
                baseline: duration(params, "baseline", Some(Duration::from_secs(3_600)))?,
                min_requests: min_requests.clone()?,
            })
        })(),
        _ => number(params, "percent", 0.0..=100.0, None)
            .map(|percent| Condition::ClusterHealthyBelow { percent }),
    };
    condition.map_err(|first| vec![first])
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// Its condition holds, for less than the rule's `for`.
    Pending,
    /// Its condition has held for the rule's `for`.
    Firing,
    /// Its condition no longer holds.
    Resolved,
}

impl AlertState {
    /// The name the API and the database use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// The state of an open alert (or of none, `open` = `None`) whose condition holds
/// (`holds_for`: for how long) or not (`None`).
#[must_use]
pub fn next_state(
    open: Option<AlertState>,
    holds_for: Option<Duration>,
    hold: Duration,
) -> Option<AlertState> {
    match (open, holds_for) {
        (_, Some(duration)) if duration >= hold => Some(AlertState::Firing),
        (Some(AlertState::Firing), Some(_)) => Some(AlertState::Firing),
        (_, Some(_)) => Some(AlertState::Pending),
        (Some(AlertState::Pending | AlertState::Firing), None) => Some(AlertState::Resolved),
        (_, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rules_are_read_with_their_parameters() {
        let rule = check_rule("proxy_disconnected", &json!({ "for": "5m" })).unwrap();
        assert_eq!(rule.condition, Condition::ProxyDisconnected);
        assert_eq!(rule.hold, Duration::from_secs(300));
        let rule = check_rule(
            "container_restarting",
            &json!({ "count": 3, "window": "10m" }),
        )
        .unwrap();
        assert_eq!(
            rule.condition,
            Condition::ContainerRestarting {
                count: 3,
                window: Duration::from_secs(600)
            }
        );
        assert_eq!(rule.hold, Duration::ZERO);
        assert!(check_rule("proxy_nacked", &Value::Null).is_ok());
    }

    #[test]
    fn metric_rules_take_their_thresholds_and_defaults() {
        let rule =
            check_rule("route_5xx_ratio", &json!({ "ratio": 0.05, "window": "1m" })).unwrap();
        assert_eq!(
            rule.condition,
            Condition::Route5xxRatio {
                ratio: 0.05,
                window: Duration::from_secs(60),
                min_requests: 10
            }
        );
        let anomaly = check_rule("route_5xx_anomaly", &json!({})).unwrap();
        assert!(matches!(
            anomaly.condition,
            Condition::Route5xxAnomaly { k, baseline, .. } if (k - 3.0).abs() < 1e-9 && baseline == Duration::from_secs(3_600)
        ));
        let refused =
            |kind: &str, params: Value| check_rule(kind, &params).unwrap_err()[0].pointer.clone();
        assert_eq!(
            refused("route_5xx_ratio", json!({ "ratio": 1.5 })),
            "/params/ratio"
        );
        assert_eq!(refused("route_p99", json!({})), "/params/ms");
        assert_eq!(
            refused("cluster_healthy_below", json!({ "percent": -1 })),
            "/params/percent"
        );
        assert_eq!(
            check_rule("tls_certificate_expiring", &json!({}))
                .unwrap()
                .condition,
            Condition::TlsCertificateExpiring { days: 14 }
        );
        for days in [json!(0), json!(1.5), json!(366), json!("7")] {
            assert_eq!(
                refused("tls_certificate_expiring", json!({ "days": days })),
                "/params/days"
            );
        }
    }

    #[test]
    fn bad_rules_name_the_pointer() {
        let pointers = |kind: &str, params: Value| -> Vec<String> {
            check_rule(kind, &params)
                .unwrap_err()
                .into_iter()
                .map(|problem| problem.pointer)
                .collect()
        };
        assert_eq!(
            pointers(
                "container_restarting",
                json!({ "count": 3, "window": "-5m" })
            ),
            ["/params/window"]
        );
        assert_eq!(
            pointers("container_restarting", json!({ "window": "5m" })),
            ["/params/count"]
        );
        assert_eq!(pointers("nonsense", json!({})), ["/kind"]);
        assert_eq!(
            pointers("vm_down", json!({ "for": "31d" })),
            ["/params/for"]
        );
        assert_eq!(
            pointers("vm_down", json!({ "window": "5m" })),
            ["/params/window"]
        );
        assert_eq!(pointers("vm_down", json!([1])), ["/params"]);
    }

    #[test]
    fn an_alert_is_pending_then_firing_then_resolved() {
        let minute = Duration::from_secs(60);
        let held = |seconds| Some(Duration::from_secs(seconds));
        assert_eq!(next_state(None, held(0), minute), Some(AlertState::Pending));
        assert_eq!(
            next_state(Some(AlertState::Pending), held(59), minute),
            Some(AlertState::Pending)
        );
        assert_eq!(
            next_state(Some(AlertState::Pending), held(60), minute),
            Some(AlertState::Firing)
        );
        assert_eq!(
            next_state(Some(AlertState::Firing), None, minute),
            Some(AlertState::Resolved)
        );
        assert_eq!(
            next_state(Some(AlertState::Pending), None, minute),
            Some(AlertState::Resolved)
        );
        assert_eq!(next_state(None, None, minute), None);
        assert_eq!(
            next_state(None, held(0), Duration::ZERO),
            Some(AlertState::Firing)
        );
    }
}
