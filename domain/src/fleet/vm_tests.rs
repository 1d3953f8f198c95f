use std::collections::BTreeMap;

use cqrs_es::Aggregate as _;

use super::*;
use crate::fleet::{EventKind, Health, Limits};

fn name() -> VmName {
    VmName::parse("vm-1").unwrap()
}

fn registered() -> Vm {
    let mut vm = Vm::default();
    let events = vm
        .decide(VmCommand::Register {
            name: name(),
            placement: VmPlacement::default(),
            token_id: Uuid::from_u128(1),
        })
        .unwrap();
    for event in events {
        vm.apply(event);
    }
    vm
}

fn apply_all(vm: &mut Vm, events: Vec<VmEvent>) {
    for event in events {
        vm.apply(event);
    }
}

fn container(id: char, state: ContainerState) -> Container {
    Container {
        id: id.to_string().repeat(64),
        name: format!("envoy-{id}"),
        image: "envoy:1".into(),
        image_id: "sha256:1".into(),
        node_id: Some(format!("node-{id}")),
        state,
        health: Health::None,
        restart_count: 0,
        exit_code: None,
        oom_killed: false,
        created_at: None,
        started_at: None,
        finished_at: None,
        limits: Limits::default(),
        ports: vec![],
        labels: BTreeMap::new(),
    }
}

fn event(id: char, kind: EventKind, time_nanos: i64) -> LifecycleEvent {
    LifecycleEvent {
        container_id: id.to_string().repeat(64),
        name: format!("envoy-{id}"),
        image: "envoy:1".into(),
        node_id: None,
        kind,
        exit_code: (kind == EventKind::Die).then_some(137),
        signal: None,
        health: None,
        time_nanos,
    }
}

#[test]
fn registering_records_the_vm_and_its_first_token_and_a_second_registration_is_refused() {
    let vm = registered();
    assert_eq!(vm.name(), Some(&name()));
    assert_eq!(vm.token_id(), Some(Uuid::from_u128(1)));
    assert_eq!(vm.state(), VmState::Down);
    let again = vm.decide(VmCommand::Register {
        name: name(),
        placement: VmPlacement::default(),
        token_id: Uuid::from_u128(2),
    });
    assert_eq!(again, Err(VmError::AlreadyExists(name())));
}

#[test]
fn a_removed_vm_refuses_reports_and_its_name_is_not_reused() {
    let mut vm = registered();
    let events = vm.decide(VmCommand::Remove).unwrap();
    apply_all(&mut vm, events);
    assert_eq!(vm.state(), VmState::Removed);
    assert_eq!(vm.token_id(), None);
    let heartbeat = vm.decide(VmCommand::Heartbeat {
        engine_reachable: true,
        reason: None,
    });
    assert_eq!(heartbeat, Err(VmError::Removed));
    let again = vm.decide(VmCommand::Register {
        name: name(),
        placement: VmPlacement::default(),
        token_id: Uuid::from_u128(2),
    });
    assert_eq!(again, Err(VmError::NameRetired(name())));
}

#[test]
fn commands_on_an_unregistered_vm_are_refused_as_not_found() {
    let vm = Vm::default();
    assert_eq!(
        vm.decide(VmCommand::IssueToken {
            token_id: Uuid::from_u128(3)
        }),
        Err(VmError::NotFound)
    );
}

#[test]
fn a_snapshot_records_new_and_changed_containers_once_and_the_missing_ones_as_gone() {
    let mut vm = registered();
    let first = vec![
        container('a', ContainerState::Running),
        container('b', ContainerState::Running),
    ];
    let events = vm
        .decide(VmCommand::Observe {
            containers: first.clone(),
        })
        .unwrap();
    assert_eq!(events.len(), 2);
    apply_all(&mut vm, events);
    assert_eq!(
        vm.decide(VmCommand::Observe { containers: first }).unwrap(),
        vec![],
        "the same snapshot again changes nothing"
    );
    let events = vm
        .decide(VmCommand::Observe {
            containers: vec![container('a', ContainerState::Exited)],
        })
        .unwrap();
    assert!(matches!(
        &events[0],
        VmEvent::ContainerObserved { container } if container.state == ContainerState::Exited
    ));
    assert!(matches!(
        &events[1],
        VmEvent::ContainerGone { container_id, .. } if container_id == &"b".repeat(64)
    ));
}

#[test]
fn a_snapshot_naming_one_container_twice_is_refused() {
    let vm = registered();
    let twice = vec![
        container('a', ContainerState::Running),
        container('a', ContainerState::Exited),
    ];
    assert_eq!(
        vm.decide(VmCommand::Observe { containers: twice }),
        Err(VmError::DuplicateContainer("a".repeat(64)))
    );
}

#[test]
fn lifecycle_events_already_recorded_are_dropped_when_told_again() {
    let mut vm = registered();
    let told = vec![
        event('a', EventKind::Start, 1),
        event('a', EventKind::Die, 2),
    ];
    let events = vm
        .decide(VmCommand::Record {
            events: told.clone(),
        })
        .unwrap();
    assert_eq!(events.len(), 2);
    apply_all(&mut vm, events);
    let mut again = told;
    again.push(event('a', EventKind::Start, 3));
    let events = vm.decide(VmCommand::Record { events: again }).unwrap();
    assert_eq!(
        events,
        vec![VmEvent::ContainerLifecycle {
            event: event('a', EventKind::Start, 3)
        }]
    );
}

#[test]
fn a_die_event_leaves_the_container_exited_with_its_exit_code() {
    let mut vm = registered();
    let events = vm
        .decide(VmCommand::Record {
            events: vec![
                event('a', EventKind::Start, 1),
                event('a', EventKind::Die, 2),
            ],
        })
        .unwrap();
    apply_all(&mut vm, events);
    let container = vm.containers().next().expect("the container is known");
    assert_eq!(container.state, ContainerState::Exited);
    assert_eq!(container.exit_code, Some(137));
}

#[test]
fn heartbeats_and_silence_change_the_state_only_when_it_differs() {
    let mut vm = registered();
    let up = vm
        .decide(VmCommand::Heartbeat {
            engine_reachable: true,
            reason: None,
        })
        .unwrap();
    assert_eq!(up.len(), 1);
    apply_all(&mut vm, up);
    assert_eq!(vm.state(), VmState::Ready);
    assert!(vm
        .decide(VmCommand::Heartbeat {
            engine_reachable: true,
            reason: None
        })
        .unwrap()
        .is_empty());
    let down = vm
        .decide(VmCommand::Silence {
            reason: "no heartbeat for 30 s".into(),
        })
        .unwrap();
    apply_all(&mut vm, down);
    assert_eq!(vm.state(), VmState::Down);
}

/// A registered VM whose agent observed container `a` running.
fn running_a() -> Vm {
    let mut vm = registered();
    let events = vm
        .decide(VmCommand::Observe {
            containers: vec![container('a', ContainerState::Running)],
        })
        .unwrap();
    apply_all(&mut vm, events);
    vm
}

#[test]
fn removing_a_vm_takes_its_containers_with_it() {
    let vm = running_a();
    let events = vm.decide(VmCommand::Remove).unwrap();
    assert!(matches!(&events[0], VmEvent::ContainerGone { .. }));
    assert_eq!(events.last(), Some(&VmEvent::Removed));
}

#[test]
fn late_events_of_a_container_known_gone_are_dropped() {
    let mut vm = running_a();
    let events = vm
        .decide(VmCommand::Observe { containers: vec![] })
        .unwrap();
    apply_all(&mut vm, events);
    let late = vm
        .decide(VmCommand::Record {
            events: vec![event('a', EventKind::Die, 5)],
        })
        .unwrap();
    assert_eq!(late, vec![], "a gone container does not come back");
    assert_eq!(vm.containers().count(), 0);
}

#[test]
fn events_recorded_together_after_their_containers_destroy_are_dropped() {
    let mut vm = running_a();
    let recorded = vm
        .decide(VmCommand::Record {
            events: vec![
                event('a', EventKind::Destroy, 5),
                event('a', EventKind::Die, 6),
            ],
        })
        .unwrap();
    assert_eq!(recorded.len(), 1, "only the destroy: {recorded:?}");
    apply_all(&mut vm, recorded);
    assert_eq!(
        vm.containers().count(),
        0,
        "a destroyed container does not come back"
    );
}

#[test]
fn a_new_placement_is_an_event_only_when_it_differs() {
    let mut vm = registered();
    let watched = VmPlacement {
        watch_images: vec!["envoyproxy/envoy".to_owned()],
        ..VmPlacement::default()
    };
    let events = vm
        .decide(VmCommand::Place {
            placement: watched.clone(),
        })
        .unwrap();
    assert_eq!(
        events,
        vec![VmEvent::Placed {
            placement: watched.clone()
        }]
    );
    apply_all(&mut vm, events);
    assert_eq!(vm.placement(), &watched);
    let again = vm.decide(VmCommand::Place { placement: watched }).unwrap();
    assert_eq!(again, vec![], "the same placement again changes nothing");
}

#[test]
fn a_placement_stored_before_images_were_watched_reads_as_watching_none() {
    let stored = serde_json::json!({ "labels": {}, "region": null, "zone": null });
    let placement: VmPlacement = serde_json::from_value(stored).unwrap();
    assert!(placement.watch_images.is_empty());
}

#[test]
fn image_references_are_checked() {
    for good in [
        "envoyproxy/envoy",
        "registry:5000/team/envoy:v1.36",
        "envoy@sha256:ab12",
    ] {
        assert!(check_image(good).is_ok(), "{good}");
    }
    for bad in ["", "-envoy", "envoy proxy", &"e".repeat(256)] {
        assert!(check_image(bad).is_err(), "{bad}");
    }
}

/// A ready VM with container `a` running (node id `node-a`).
fn ready_with_a() -> Vm {
    let mut vm = registered();
    let beat = VmCommand::Heartbeat {
        engine_reachable: true,
        reason: None,
    };
    decide_and_apply(&mut vm, beat);
    let observe = VmCommand::Observe {
        containers: vec![container('a', ContainerState::Running)],
    };
    decide_and_apply(&mut vm, observe);
    vm
}

fn launch(node_id: &str) -> ContainerOperation {
    ContainerOperation::Launch {
        node_id: node_id.into(),
        spec: crate::fleet::LaunchSpec {
            group: "edge".into(),
            image: "envoy:1".into(),
            memory_bytes: None,
            cpus: None,
            admin_port: 0,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
        },
    }
}

fn admin_port_of(operation: &ContainerOperation) -> u16 {
    match operation {
        ContainerOperation::Launch { spec, .. } => spec.admin_port,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_launch_without_an_admin_port_gets_the_lowest_free_one_and_a_taken_one_is_refused() {
    let mut vm = ready_with_a();
    decide_and_apply(&mut vm, operate(1, launch("")));
    decide_and_apply(&mut vm, operate(2, launch("")));
    let ports: Vec<u16> = vm
        .pending_operations()
        .map(|(_, operation, _)| admin_port_of(operation))
        .collect();
    assert_eq!(ports, [9901, 9902]);
    let mut taken = launch("node-x");
    if let ContainerOperation::Launch { spec, .. } = &mut taken {
        spec.admin_port = 9902;
    }
    assert_eq!(
        vm.decide(operate(3, taken)),
        Err(VmError::AdminPortTaken(9902))
    );
}

fn operate(id: u128, operation: ContainerOperation) -> VmCommand {
    VmCommand::Operate {
        operation_id: Uuid::from_u128(id),
        operation,
        requested_by: "alice".into(),
    }
}

#[test]
fn an_operation_is_refused_unless_the_vm_is_ready_and_holds_the_container() {
    let down = registered();
    assert_eq!(
        down.decide(operate(1, launch(""))),
        Err(VmError::NotReady(VmState::Down))
    );
    let vm = ready_with_a();
    let stop_b = ContainerOperation::Stop {
        container_id: "b".repeat(64),
    };
    assert_eq!(
        vm.decide(operate(1, stop_b)),
        Err(VmError::UnknownContainer("b".repeat(64)))
    );
    assert_eq!(
        vm.decide(operate(1, launch("node-a"))),
        Err(VmError::NodeIdTaken("node-a".into()))
    );
}

#[test]
fn a_launch_without_a_node_id_gets_the_lowest_free_one_and_pending_launches_count() {
    let mut vm = ready_with_a();
    decide_and_apply(&mut vm, operate(1, launch("")));
    decide_and_apply(&mut vm, operate(2, launch("")));
    let node_ids: Vec<_> = vm
        .pending_operations()
        .map(|(_, operation, _)| match operation {
            ContainerOperation::Launch { node_id, .. } => node_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(node_ids, ["vm-1-edge-1", "vm-1-edge-2"]);
}

#[test]
fn an_operation_finishes_once_and_going_down_fails_the_pending_ones() {
    let mut vm = ready_with_a();
    let restart = ContainerOperation::Restart {
        container_id: "a".repeat(64),
    };
    decide_and_apply(&mut vm, operate(1, restart));
    decide_and_apply(&mut vm, operate(2, launch("")));
    let done = VmCommand::Finish {
        operation_id: Uuid::from_u128(1),
        outcome: OperationOutcome::Succeeded {
            container_id: "a".repeat(64),
        },
    };
    let events = vm.decide(done.clone()).unwrap();
    assert_eq!(events.len(), 1);
    apply_all(&mut vm, events);
    assert_eq!(
        vm.decide(done),
        Ok(vec![]),
        "a resent outcome changes nothing"
    );
    let silence = VmCommand::Silence {
        reason: "no heartbeat".into(),
    };
    let events = vm.decide(silence).unwrap();
    assert!(matches!(
        &events[1],
        VmEvent::OperationFinished {
            operation_id,
            outcome: OperationOutcome::Failed { error },
            abandoned: true,
        } if *operation_id == Uuid::from_u128(2) && error.contains("went down")
    ));
    apply_all(&mut vm, events);
    assert_eq!(vm.pending_operations().count(), 0);
    let late = VmCommand::Finish {
        operation_id: Uuid::from_u128(2),
        outcome: OperationOutcome::Succeeded {
            container_id: "c".repeat(64),
        },
    };
    let events = vm.decide(late.clone()).unwrap();
    assert_eq!(events.len(), 1, "the agent's late word is recorded");
    apply_all(&mut vm, events);
    assert_eq!(vm.decide(late), Ok(vec![]), "once");
}

fn decide_and_apply(vm: &mut Vm, command: VmCommand) {
    let events = vm.decide(command).unwrap();
    apply_all(vm, events);
}
