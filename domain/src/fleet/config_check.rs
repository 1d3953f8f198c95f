//! Whether a proxy holds what it ACKed (NFR-OB-004): the versions an agent read from the proxy's
//! admin `config_dump` against the versions the control plane recorded as accepted. A difference
//! is configuration changed behind the control plane's back (a container of the node running a
//! hand-made bootstrap, a proxy answering another management server).

use chrono::{DateTime, Duration, Utc};

use super::reports::{check_container_id, ReportFault};

/// How long after a dump was read an acceptance may still be the one it shows: an acceptance
/// this close to the read (or after it) leaves the comparison undecided, whatever the clocks of
/// the VM and the control plane say.
pub const SETTLING: Duration = Duration::seconds(2);

/// The most types one check may carry.
const MAX_TYPES: usize = 16;

/// One proxy container's dump, as the agent read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigCheck {
    /// The container's full id.
    pub container_id: String,
    /// The container's `efms.node_id` label.
    pub node_id: String,
    /// `(type_url, version)` for each type the dump carries one version of (empty: none
    /// applied).
    pub versions: Vec<(String, String)>,
    /// Why the dump could not be read.
    pub error: Option<String>,
}

/// Checks one container's dump of a report.
pub fn check_config_check(field: &str, check: &ConfigCheck) -> Result<(), ReportFault> {
    check_container_id(&format!("{field}.container_id"), &check.container_id)?;
    if check.node_id.is_empty() || check.node_id.len() > 256 {
        return Err(fault(
            format!("{field}.node_id"),
            "a node id is 1 to 256 bytes",
        ));
    }
    if check.versions.len() > MAX_TYPES {
        return Err(fault(
            format!("{field}.versions"),
            format!("at most {MAX_TYPES} types"),
        ));
    }
    for (i, (type_url, version)) in check.versions.iter().enumerate() {
        if !type_url.starts_with("type.googleapis.com/envoy.") || type_url.len() > 200 {
            return Err(fault(
                format!("{field}.versions[{i}].type_url"),
                "an Envoy resource type URL, type.googleapis.com/envoy.…",
            ));
        }
        if version.len() > 1_024 {
            return Err(fault(
                format!("{field}.versions[{i}].version"),
                "a version is at most 1024 bytes",
            ));
        }
    }
    if check
        .error
        .as_ref()
        .is_some_and(|error| error.len() > 4_096)
    {
        return Err(fault(
            format!("{field}.error"),
            "an error is at most 4096 bytes",
        ));
    }
    Ok(())
}

fn fault(field: String, problem: impl Into<String>) -> ReportFault {
    ReportFault {
        field,
        problem: problem.into(),
    }
}

/// What the control plane recorded a proxy as accepting last, of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The resource type.
    pub type_url: String,
    /// The version accepted.
    pub version: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// The outcome of comparing a proxy's dumps with what it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every comparable type holds the version accepted.
    Agrees,
    /// Some type holds another version: why, naming the container and both versions.
    Diverges(String),
    /// Nothing could be compared (no dump read, no acceptance, or one too close to the read).
    Undecided,
}

/// The verdict on one proxy: every dump of its containers read at `read_at`, against what it
/// `accepted`. `empty_set` is the version of a set without resources: a dump holding no version
/// of a type agrees with it (Envoy records no version for an update that holds nothing).
#[must_use]
pub fn verdict(
    checks: &[&ConfigCheck],
    accepted: &[Accepted],
    read_at: DateTime<Utc>,
    empty_set: &str,
) -> Verdict {
    let mut agreeing = 0;
    let mut differences = Vec::new();
    for check in checks.iter().filter(|check| check.error.is_none()) {
        for (type_url, version) in &check.versions {
            let Some(accepted) = accepted.iter().find(|a| &a.type_url == type_url) else {
                continue;
            };
            if accepted.at > read_at - SETTLING {
                continue;
            }
            if *version == accepted.version || (version.is_empty() && accepted.version == empty_set)
            {
                agreeing += 1;
            } else {
                differences.push(format!(
                    "container `{}` holds {} version {} where `{}` was accepted",
                    check.container_id.get(..12).unwrap_or(&check.container_id),
                    short_type(type_url),
                    if version.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("`{version}`")
                    },
                    accepted.version
                ));
            }
        }
    }
    if !differences.is_empty() {
        Verdict::Diverges(differences.join("; "))
    } else if agreeing > 0 {
        Verdict::Agrees
    } else {
        Verdict::Undecided
    }
}

/// `cluster` for `type.googleapis.com/envoy.config.cluster.v3.Cluster`.
#[must_use]
pub fn short_type(type_url: &str) -> String {
    type_url
        .rsplit('.')
        .next()
        .unwrap_or(type_url)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    const EMPTY: &str = "e0";

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn dump(id: char, cluster: &str, listener: &str) -> ConfigCheck {
        ConfigCheck {
            container_id: id.to_string().repeat(64),
            node_id: "edge-1".into(),
            versions: vec![
                (CLUSTER.into(), cluster.into()),
                (LISTENER.into(), listener.into()),
            ],
            error: None,
        }
    }

    fn accepted(cluster: &str, listener: &str, when: i64) -> Vec<Accepted> {
        [(CLUSTER, cluster), (LISTENER, listener)]
            .into_iter()
            .map(|(type_url, version)| Accepted {
                type_url: type_url.into(),
                version: version.into(),
                at: at(when),
            })
            .collect()
    }

    #[test]
    fn a_dump_holding_what_was_accepted_agrees_and_another_version_diverges_naming_both() {
        let nothing_sent = accepted("c1", EMPTY, 0);
        let accepted = accepted("c1", "l1", 0);
        assert_eq!(
            verdict(&[&dump('a', "c1", "l1")], &accepted, at(60), EMPTY),
            Verdict::Agrees
        );
        let Verdict::Diverges(why) = verdict(
            &[&dump('a', "c1", "l1"), &dump('b', "", "l1")],
            &accepted,
            at(60),
            EMPTY,
        ) else {
            panic!("a container without the accepted clusters diverges");
        };
        assert_eq!(
            why,
            "container `bbbbbbbbbbbb` holds cluster version none where `c1` was accepted"
        );
        // Sent no listener, it holds no listener version.
        assert_eq!(
            verdict(&[&dump('a', "c1", "")], &nothing_sent, at(60), EMPTY),
            Verdict::Agrees
        );
    }

    #[test]
    fn an_acceptance_about_when_the_dump_was_read_or_an_unreadable_dump_decides_nothing() {
        let recent = accepted("c2", "l2", 59);
        assert_eq!(
            verdict(&[&dump('a', "c1", "l1")], &recent, at(60), EMPTY),
            Verdict::Undecided
        );
        let mut unreadable = dump('a', "x", "y");
        unreadable.error = Some("refused".into());
        assert_eq!(
            verdict(&[&unreadable], &accepted("c1", "l1", 0), at(60), EMPTY),
            Verdict::Undecided
        );
        assert_eq!(
            verdict(&[&dump('a', "c1", "l1")], &[], at(60), EMPTY),
            Verdict::Undecided
        );
    }

    #[test]
    fn a_check_naming_no_container_or_a_foreign_type_is_refused_naming_the_field() {
        let mut bad = dump('a', "c1", "l1");
        bad.container_id = "short".into();
        let fault = check_config_check("config.proxies[0]", &bad).unwrap_err();
        assert_eq!(fault.field, "config.proxies[0].container_id");
        let mut foreign = dump('a', "c1", "l1");
        foreign.versions[1].0 = "type.googleapis.com/google.protobuf.Any".into();
        let fault = check_config_check("config.proxies[0]", &foreign).unwrap_err();
        assert_eq!(fault.field, "config.proxies[0].versions[1].type_url");
        assert!(check_config_check("c", &dump('a', "c1", "l1")).is_ok());
    }
}
