//! What a stream does with each report once it is read: checked, stored, and how it went.

use std::collections::HashMap;
use std::time::Instant;

use efms_commands::fleet::presence_writer::{Beat, Stored};

use efms_commands::CommandError;
use efms_domain::fleet::reports::ReportFault;
use efms_domain::fleet::{VmCommand, VmError};
use efms_fleet_proto::{agent_message::Body, AgentMessage};
use tonic::Status;

use super::{convert, database, stored_or_status, Agent, FleetServer, Outcome};

impl FleetServer {
    /// Checks and stores one report.
    pub(super) async fn store(
        &self,
        agent: &mut Agent,
        report: AgentMessage,
    ) -> Result<Outcome, Status> {
        let fleet = self.inner.fleet.clone();
        let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.clone());
        let vm = vm.as_str();
        let seq = i64::try_from(report.seq).unwrap_or(i64::MAX);
        let refused = |fault: ReportFault| Ok(Outcome::Refused(fault));
        let stored = Ok(Outcome::Stored {
            last_event_nanos: None,
            recorded: false,
        });
        let recorded = Ok(Outcome::Stored {
            last_event_nanos: None,
            recorded: true,
        });
        match report.body {
            None => refused(ReportFault {
                field: "body".into(),
                problem: "a report carries one of its kinds".into(),
            }),
            Some(Body::Hello(_)) => refused(ReportFault {
                field: "hello".into(),
                problem: "Hello comes once, first".into(),
            }),
            Some(Body::Facts(facts)) => match convert::facts("facts", &facts) {
                Err(fault) => refused(fault),
                Ok(facts) => {
                    fleet
                        .report(tenant_id, vm, VmCommand::ReportFacts { facts })
                        .await
                        .map_err(stored_or_status)?;
                    stored
                }
            },
            Some(Body::Heartbeat(heartbeat)) => self.beat(agent, &heartbeat, seq).await,
            Some(Body::Snapshot(snapshot)) => self.observe(agent, &snapshot).await,
            Some(Body::Event(event)) => {
                let mut outcomes = self.store_events(agent, vec![(report.seq, event)]).await?;
                outcomes
                    .pop()
                    .map(|(_, outcome)| outcome)
                    .ok_or_else(|| Status::internal("an event report went unanswered"))
            }
            Some(Body::Done(done)) => self.finish(agent, done).await,
            Some(Body::Config(checks)) => match convert::config_checks("config", &checks) {
                Err(fault) => refused(fault),
                Ok((read_at, checks)) => {
                    let diverged = efms_commands::fleet::config_checks::record_config_checks(
                        fleet.pool(),
                        tenant_id,
                        read_at,
                        &checks,
                        &efms_projections::snapshots::set_version([]),
                    )
                    .await
                    .map_err(|error| database(&error))?;
                    if diverged > 0 {
                        tracing::warn!(%vm, diverged, "proxies hold another configuration than they accepted");
                    }
                    stored
                }
            },
            Some(Body::Usage(usages)) => match convert::usages("usage", &usages, agent.cpus) {
                Err(fault) => refused(fault),
                Ok(usages) => {
                    // Samples are not history: those that cannot be stored are logged and lost,
                    // and the stream goes on.
                    let report = Stored {
                        epoch: agent.epoch.clone(),
                        seq,
                    };
                    fleet
                        .presence()
                        .container_usage(tenant_id, vm, usages, report)
                        .await
                        .map_err(|error| database(&error))?;
                    recorded
                }
            },
        }
    }

    /// Checks and stores lifecycle event reports that arrived together, in one record of the
    /// VM's history; answers each report's outcome, in order. Where the VM's reports stand is
    /// marked with them.
    pub(super) async fn store_events(
        &self,
        agent: &mut Agent,
        reports: Vec<(u64, efms_fleet_proto::ContainerEvent)>,
    ) -> Result<Vec<(u64, Outcome)>, Status> {
        let mut outcomes = Vec::with_capacity(reports.len());
        let mut checked = Vec::with_capacity(reports.len());
        for (seq, event) in reports {
            match convert::event("event", &event) {
                Ok(event) => checked.push((seq, event)),
                Err(fault) => outcomes.push((seq, Outcome::Refused(fault))),
            }
        }
        let ids: Vec<String> = checked
            .iter()
            .map(|(_, event)| event.container_id.clone())
            .collect();
        let elsewhere = self.elsewhere(agent, &ids).await?;
        let mut recorded = Vec::with_capacity(checked.len());
        for (seq, event) in checked {
            match elsewhere.get(&event.container_id) {
                Some(other) => {
                    let problem = format!(
                        "container `{}` is on VM `{other}`, not on this one",
                        event.container_id
                    );
                    let field = "event".to_owned();
                    outcomes.push((seq, Outcome::Refused(ReportFault { field, problem })));
                }
                None => recorded.push((seq, event)),
            }
        }
        let Some(last_seq) = recorded.iter().map(|(seq, _)| *seq).max() else {
            outcomes.sort_by_key(|(seq, _)| *seq);
            return Ok(outcomes);
        };
        let last_event_nanos = recorded.iter().map(|(_, event)| event.time_nanos).max();
        let ids: Vec<String> = recorded
            .iter()
            .map(|(_, event)| event.container_id.clone())
            .collect();
        let seqs: Vec<u64> = recorded.iter().map(|(seq, _)| *seq).collect();
        let events = recorded.into_iter().map(|(_, event)| event).collect();
        let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.clone());
        let fleet = &self.inner.fleet;
        fleet
            .report(tenant_id, &vm, VmCommand::Record { events })
            .await
            .map_err(stored_or_status)?;
        agent.remember_here(&ids);
        let report = Stored {
            epoch: agent.epoch.clone(),
            seq: i64::try_from(last_seq).unwrap_or(i64::MAX),
        };
        fleet
            .presence()
            .stored(tenant_id, &vm, report, last_event_nanos)
            .await
            .map_err(|error| database(&error))?;
        let stored = || Outcome::Stored {
            last_event_nanos: None,
            recorded: true,
        };
        outcomes.extend(seqs.into_iter().map(|seq| (seq, stored())));
        outcomes.sort_by_key(|(seq, _)| *seq);
        Ok(outcomes)
    }

    /// Checks and stores a heartbeat report.
    async fn beat(
        &self,
        agent: &mut Agent,
        heartbeat: &efms_fleet_proto::Heartbeat,
        seq: i64,
    ) -> Result<Outcome, Status> {
        let usage = match heartbeat.usage.as_ref() {
            Some(usage) => match convert::host_usage("heartbeat.usage", usage) {
                Ok(usage) => Some(usage),
                Err(fault) => return Ok(Outcome::Refused(fault)),
            },
            None => None,
        };
        if let Err(fault) = convert::text("heartbeat.engine_error", &heartbeat.engine_error, 4096) {
            return Ok(Outcome::Refused(fault));
        }
        let engine_error = match (heartbeat.engine_reachable, heartbeat.engine_error.as_str()) {
            (true, _) => None,
            (false, "") => Some("the Docker engine does not answer"),
            (false, error) => Some(error),
        };
        let beat = Beat {
            engine_error: engine_error.map(str::to_owned),
            usage,
            report: Some(Stored {
                epoch: agent.epoch.clone(),
                seq,
            }),
        };
        self.heartbeat(agent, beat).await?;
        Ok(Outcome::Stored {
            last_event_nanos: None,
            recorded: true,
        })
    }

    /// Checks and stores a snapshot of the VM's containers.
    async fn observe(
        &self,
        agent: &mut Agent,
        snapshot: &efms_fleet_proto::ContainerSnapshot,
    ) -> Result<Outcome, Status> {
        let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.clone());
        let vm = vm.as_str();
        let containers = match snapshot
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| convert::container(&format!("snapshot.containers[{i}]"), c))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(containers) => containers,
            Err(fault) => return Ok(Outcome::Refused(fault)),
        };
        let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        let elsewhere = self.elsewhere(agent, &ids).await?;
        if let Some((id, other)) = ids.iter().find_map(|id| elsewhere.get_key_value(id)) {
            return Ok(Outcome::Refused(ReportFault {
                field: "snapshot.containers".into(),
                problem: format!("container `{id}` is on VM `{other}`, not on this one"),
            }));
        }
        let command = VmCommand::Observe { containers };
        match self.inner.fleet.report(tenant_id, vm, command).await {
            Err(CommandError::Rejected(VmError::DuplicateContainer(id))) => {
                Ok(Outcome::Refused(ReportFault {
                    field: "snapshot.containers".into(),
                    problem: format!("container `{id}` appears twice"),
                }))
            }
            other => {
                other.map_err(stored_or_status)?;
                agent.remember_here(&ids);
                Ok(Outcome::Stored {
                    last_event_nanos: None,
                    recorded: false,
                })
            }
        }
    }

    /// Those of `ids` that the tenant knows on another VM, with that VM. Containers this stream
    /// stored after such a check are not checked again for [`super::KNOWN_CONTAINERS_FOR`]: the
    /// tenant's other VMs are refused a container this one has, so it stays this VM's.
    async fn elsewhere(
        &self,
        agent: &mut Agent,
        ids: &[String],
    ) -> Result<HashMap<String, String>, Status> {
        if agent.known_since.elapsed() >= super::KNOWN_CONTAINERS_FOR {
            agent.known_here.clear();
            agent.known_since = Instant::now();
        }
        if ids.iter().all(|id| agent.known_here.contains(id)) {
            return Ok(HashMap::new());
        }
        let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.as_str());
        let elsewhere = efms_projections::fleet::queries::containers_elsewhere(
            self.inner.fleet.pool(),
            tenant_id,
            vm,
            ids,
        )
        .await
        .map_err(|error| database(&error))?;
        Ok(elsewhere.into_iter().collect())
    }
}
