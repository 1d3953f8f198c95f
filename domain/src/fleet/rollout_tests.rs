use std::collections::BTreeMap;

use cqrs_es::Aggregate as _;

use super::*;

fn target(node_id: &str) -> RolloutTarget {
    RolloutTarget {
        vm: "vm-1".into(),
        node_id: node_id.into(),
        container_id: "a".repeat(64),
        launch: LaunchSpec {
            group: "edge".into(),
            image: "envoy:1".into(),
            memory_bytes: None,
            cpus: None,
            admin_port: 9901,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
        },
        step: Step::Pending,
    }
}

fn started(max_unavailable: u32, nodes: &[&str]) -> Rollout {
    let mut rollout = Rollout::default();
    let start = RolloutCommand::Start {
        spec: RolloutSpec {
            group: "edge".into(),
            image: "envoy:2".into(),
            max_unavailable,
            health_timeout_ms: 60_000,
            pause_between_ms: 0,
            force: false,
        },
        targets: nodes.iter().map(|node| target(node)).collect(),
        requested_by: "alice".into(),
    };
    run(&mut rollout, start);
    let pass = RolloutCommand::Pass {
        envoy_version: "1.40.0".into(),
    };
    run(&mut rollout, pass);
    rollout
}

fn run(rollout: &mut Rollout, command: RolloutCommand) -> usize {
    let events = rollout.decide(command).unwrap();
    let count = events.len();
    for event in events {
        rollout.apply(event);
    }
    count
}

fn advance(node_id: &str, step: Step) -> RolloutCommand {
    RolloutCommand::Advance {
        node_id: node_id.into(),
        step,
    }
}

fn removing(n: u128) -> Step {
    Step::Removing {
        operation_id: Uuid::from_u128(n),
        at: Utc::now(),
    }
}

fn launching(n: u128) -> Step {
    Step::Launching {
        operation_id: Uuid::from_u128(n),
        at: Utc::now(),
    }
}

fn done() -> Step {
    Step::Done {
        container_id: "b".repeat(64),
        at: Utc::now(),
    }
}

fn started_names(rollout: &Rollout) -> Vec<&str> {
    rollout
        .to_start()
        .iter()
        .map(|t| t.node_id.as_str())
        .collect()
}

#[test]
fn a_rollout_starts_no_more_containers_at_once_than_max_unavailable() {
    let mut rollout = started(2, &["n1", "n2", "n3"]);
    assert_eq!(started_names(&rollout), ["n1", "n2"]);
    run(&mut rollout, advance("n1", removing(1)));
    assert_eq!(started_names(&rollout), ["n2"]);
    run(&mut rollout, advance("n2", removing(2)));
    assert!(rollout.to_start().is_empty());
}

#[test]
fn nothing_is_replaced_before_the_new_envoy_version_passed_its_check() {
    let mut rollout = Rollout::default();
    let start = RolloutCommand::Start {
        spec: started(1, &["n1"]).spec().unwrap().clone(),
        targets: vec![target("n1")],
        requested_by: "alice".into(),
    };
    run(&mut rollout, start);
    assert!(rollout.to_start().is_empty());
    let probe = RolloutCommand::Probe {
        operation_id: Uuid::from_u128(9),
    };
    assert_eq!(run(&mut rollout, probe.clone()), 1);
    assert_eq!(run(&mut rollout, probe), 0, "one probe");
    assert!(rollout.to_start().is_empty());
    let pass = RolloutCommand::Pass {
        envoy_version: "1.40.0".into(),
    };
    run(&mut rollout, pass);
    assert_eq!(started_names(&rollout), ["n1"]);
}

#[test]
fn steps_follow_in_order_and_the_last_container_done_ends_the_rollout() {
    let mut rollout = started(1, &["n1", "n2"]);
    let skipping = rollout.decide(advance("n1", done()));
    assert_eq!(skipping, Err(RolloutError::OutOfOrder("n1".into())));
    for node in ["n1", "n2"] {
        run(&mut rollout, advance(node, removing(1)));
        run(&mut rollout, advance(node, launching(2)));
        let verifying = Step::Verifying {
            container_id: "b".repeat(64),
            since: Utc::now(),
        };
        run(&mut rollout, advance(node, verifying));
        run(&mut rollout, advance(node, done()));
    }
    assert_eq!(rollout.state(), Some(RolloutState::Succeeded));
    assert!(matches!(
        rollout.decide(RolloutCommand::Abort),
        Err(RolloutError::Ended(RolloutState::Succeeded))
    ));
}

#[test]
fn a_paused_rollout_finishes_what_is_under_way_and_starts_nothing() {
    let mut rollout = started(1, &["n1", "n2"]);
    run(&mut rollout, advance("n1", removing(1)));
    run(&mut rollout, RolloutCommand::Pause);
    assert!(rollout.to_start().is_empty());
    assert_eq!(run(&mut rollout, advance("n1", launching(2))), 1);
    assert_eq!(
        rollout.decide(advance("n2", removing(3))),
        Err(RolloutError::OutOfOrder("n2".into()))
    );
    run(&mut rollout, RolloutCommand::Resume);
    assert_eq!(rollout.state(), Some(RolloutState::Running));
}

#[test]
fn a_failure_stops_the_rollout_and_names_the_container() {
    let mut rollout = started(1, &["n1", "n2"]);
    let failure = RolloutFailure {
        node_id: "n1".into(),
        vm: "vm-1".into(),
        container_id: None,
        reason: "No such image".into(),
    };
    run(&mut rollout, RolloutCommand::Fail(failure.clone()));
    assert_eq!(rollout.state(), Some(RolloutState::Failed));
    assert_eq!(rollout.failure(), Some(&failure));
    assert!(rollout.to_start().is_empty());
}

#[test]
fn a_container_being_removed_when_the_rollout_ends_is_still_replaced_or_put_back() {
    let mut rollout = started(2, &["n1", "n2", "n3"]);
    run(&mut rollout, advance("n1", removing(1)));
    run(&mut rollout, advance("n2", removing(2)));
    run(&mut rollout, RolloutCommand::Abort);
    assert!(rollout.settling());
    assert_eq!(run(&mut rollout, advance("n1", launching(3))), 1);
    assert_eq!(run(&mut rollout, advance("n2", Step::Pending)), 1);
    assert!(rollout.settling(), "n1's replacement is being launched");
    let verifying = Step::Verifying {
        container_id: "c".repeat(64),
        since: Utc::now(),
    };
    assert_eq!(run(&mut rollout, advance("n1", verifying)), 1);
    assert!(!rollout.settling());
    assert!(matches!(
        rollout.decide(advance("n3", removing(4))),
        Err(RolloutError::Ended(RolloutState::Aborted))
    ));
}
