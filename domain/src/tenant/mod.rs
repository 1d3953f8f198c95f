//! The tenant aggregate (FR-MT-001): an organisation, the isolation boundary of all its data.
//!
//! Its stream lives in the tenant's own partition of the log: tenant id (derived from the slug),
//! aggregate type `tenant`, aggregate id = slug.

mod values;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

pub use values::{check_slug, InvalidValue, SuspensionReason, TenantName, TenantSlug};

/// Commands on a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantCommand {
    /// Create the tenant; refused when it exists.
    Create {
        /// The slug that addresses it.
        slug: TenantSlug,
        /// Its display name.
        name: TenantName,
    },
    /// Change the display name; a no-op when unchanged.
    Rename {
        /// The new display name.
        name: TenantName,
    },
    /// Suspend the tenant: its own callers may read but not write, its new proxy streams are
    /// refused, its running proxies keep what they have. Refused when it is suspended already.
    Suspend {
        /// Why, as the operator wrote it.
        reason: SuspensionReason,
    },
    /// End a suspension; refused when the tenant is not suspended.
    Resume,
    /// Delete the tenant: everything of it is refused from now on, and it is purged for good at
    /// `purge_after` unless restored before. Refused when it is deleted already.
    Delete {
        /// When the grace period ends and the purge may begin.
        purge_after: DateTime<Utc>,
    },
    /// Undo a deletion within its grace period; refused when the tenant is not deleted.
    Restore,
}

/// What happened to a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantEvent {
    /// The tenant came into being.
    TenantCreated {
        /// Its slug.
        slug: TenantSlug,
        /// Its display name.
        name: TenantName,
    },
    /// The display name changed.
    TenantRenamed {
        /// The new display name.
        name: TenantName,
    },
    /// The tenant was suspended.
    TenantSuspended {
        /// Why.
        reason: SuspensionReason,
    },
    /// The tenant's suspension ended.
    TenantResumed,
    /// The tenant was deleted; it is purged at `purge_after` unless restored before.
    TenantDeleted {
        /// When the grace period ends.
        purge_after: DateTime<Utc>,
    },
    /// The tenant's deletion was undone: everything is back as it was.
    TenantRestored,
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            TenantEvent::TenantCreated { .. } => "TenantCreated",
            TenantEvent::TenantRenamed { .. } => "TenantRenamed",
            TenantEvent::TenantSuspended { .. } => "TenantSuspended",
            TenantEvent::TenantResumed => "TenantResumed",
            TenantEvent::TenantDeleted { .. } => "TenantDeleted",
            TenantEvent::TenantRestored => "TenantRestored",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a tenant command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// A tenant with this slug exists already.
    #[error("tenant `{0}` already exists")]
    AlreadyExists(TenantSlug),
    /// The tenant has not been created.
    #[error("the tenant does not exist")]
    NotFound,
    /// The tenant is suspended already.
    #[error("the tenant is suspended already ({})", .0.as_str())]
    AlreadySuspended(SuspensionReason),
    /// The tenant is not suspended.
    #[error("the tenant is not suspended")]
    NotSuspended,
    /// The tenant is deleted: nothing but its restoration may be asked of it.
    #[error("the tenant is deleted; it is purged after {0} unless restored before")]
    Deleted(DateTime<Utc>),
    /// The tenant is not deleted, so there is nothing to restore.
    #[error("the tenant is not deleted")]
    NotDeleted,
}

/// The state a tenant's commands are decided on.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    slug: Option<TenantSlug>,
    name: Option<TenantName>,
    /// Why it is suspended, while it is.
    #[serde(default)]
    suspended: Option<SuspensionReason>,
    /// When its purge may begin, while it is deleted.
    #[serde(default)]
    purge_after: Option<DateTime<Utc>>,
}

impl Tenant {
    /// The slug, once created.
    pub fn slug(&self) -> Option<&TenantSlug> {
        self.slug.as_ref()
    }

    /// The display name, once created.
    pub fn name(&self) -> Option<&TenantName> {
        self.name.as_ref()
    }

    /// Why the tenant is suspended, while it is.
    pub fn suspended(&self) -> Option<&SuspensionReason> {
        self.suspended.as_ref()
    }

    /// When the tenant's purge may begin, while it is deleted.
    pub fn purge_after(&self) -> Option<DateTime<Utc>> {
        self.purge_after
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match (command, &self.slug) {
            (TenantCommand::Create { slug, .. }, Some(_)) => Err(TenantError::AlreadyExists(slug)),
            (TenantCommand::Create { slug, name }, None) => {
                sink.write(TenantEvent::TenantCreated { slug, name }, self)
                    .await;
                Ok(())
            }
            (_, None) => Err(TenantError::NotFound),
            (TenantCommand::Restore, Some(_)) => {
                if self.purge_after.is_none() {
                    return Err(TenantError::NotDeleted);
                }
                sink.write(TenantEvent::TenantRestored, self).await;
                Ok(())
            }
            (_, Some(_)) if self.purge_after.is_some() => Err(TenantError::Deleted(
                self.purge_after.expect("checked just above"),
            )),
            (TenantCommand::Delete { purge_after }, Some(_)) => {
                sink.write(TenantEvent::TenantDeleted { purge_after }, self)
                    .await;
                Ok(())
            }
            (TenantCommand::Rename { name }, Some(_)) => {
                if self.name.as_ref() != Some(&name) {
                    sink.write(TenantEvent::TenantRenamed { name }, self).await;
                }
                Ok(())
            }
            (TenantCommand::Suspend { reason }, Some(_)) => {
                if let Some(since) = &self.suspended {
                    return Err(TenantError::AlreadySuspended(since.clone()));
                }
                sink.write(TenantEvent::TenantSuspended { reason }, self)
                    .await;
                Ok(())
            }
            (TenantCommand::Resume, Some(_)) => {
                if self.suspended.is_none() {
                    return Err(TenantError::NotSuspended);
                }
                sink.write(TenantEvent::TenantResumed, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TenantEvent::TenantCreated { slug, name } => {
                self.slug = Some(slug);
                self.name = Some(name);
            }
            TenantEvent::TenantRenamed { name } => self.name = Some(name),
            TenantEvent::TenantSuspended { reason } => self.suspended = Some(reason),
            TenantEvent::TenantResumed => self.suspended = None,
            TenantEvent::TenantDeleted { purge_after } => self.purge_after = Some(purge_after),
            TenantEvent::TenantRestored => self.purge_after = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn slug() -> TenantSlug {
        TenantSlug::parse("acme").unwrap()
    }

    fn name(text: &str) -> TenantName {
        TenantName::parse(text).unwrap()
    }

    #[test]
    fn create_on_an_empty_stream_records_tenant_created() {
        TestFramework::<Tenant>::with(())
            .given_no_previous_events()
            .when(TenantCommand::Create {
                slug: slug(),
                name: name("Acme"),
            })
            .then_expect_events(vec![TenantEvent::TenantCreated {
                slug: slug(),
                name: name("Acme"),
            }]);
    }

    #[test]
    fn create_twice_is_refused_as_already_existing() {
        TestFramework::<Tenant>::with(())
            .given(vec![TenantEvent::TenantCreated {
                slug: slug(),
                name: name("Acme"),
            }])
            .when(TenantCommand::Create {
                slug: slug(),
                name: name("Other"),
            })
            .then_expect_error(TenantError::AlreadyExists(slug()));
    }

    #[test]
    fn rename_to_the_same_name_records_nothing() {
        TestFramework::<Tenant>::with(())
            .given(vec![TenantEvent::TenantCreated {
                slug: slug(),
                name: name("Acme"),
            }])
            .when(TenantCommand::Rename { name: name("Acme") })
            .then_expect_events(vec![]);
    }

    #[test]
    fn rename_before_create_is_refused() {
        TestFramework::<Tenant>::with(())
            .given_no_previous_events()
            .when(TenantCommand::Rename { name: name("Acme") })
            .then_expect_error(TenantError::NotFound);
    }

    fn created() -> TenantEvent {
        TenantEvent::TenantCreated {
            slug: slug(),
            name: name("Acme"),
        }
    }

    fn reason(text: &str) -> SuspensionReason {
        SuspensionReason::parse(text).unwrap()
    }

    #[test]
    fn suspend_records_the_reason_and_a_second_suspension_is_refused_naming_the_first() {
        TestFramework::<Tenant>::with(())
            .given(vec![created()])
            .when(TenantCommand::Suspend {
                reason: reason("unpaid"),
            })
            .then_expect_events(vec![TenantEvent::TenantSuspended {
                reason: reason("unpaid"),
            }]);
        TestFramework::<Tenant>::with(())
            .given(vec![
                created(),
                TenantEvent::TenantSuspended {
                    reason: reason("unpaid"),
                },
            ])
            .when(TenantCommand::Suspend {
                reason: reason("compromised"),
            })
            .then_expect_error(TenantError::AlreadySuspended(reason("unpaid")));
    }

    #[test]
    fn resume_ends_a_suspension_and_is_refused_on_a_tenant_not_suspended() {
        TestFramework::<Tenant>::with(())
            .given(vec![
                created(),
                TenantEvent::TenantSuspended {
                    reason: reason("unpaid"),
                },
            ])
            .when(TenantCommand::Resume)
            .then_expect_events(vec![TenantEvent::TenantResumed]);
        TestFramework::<Tenant>::with(())
            .given(vec![
                created(),
                TenantEvent::TenantSuspended {
                    reason: reason("unpaid"),
                },
                TenantEvent::TenantResumed,
            ])
            .when(TenantCommand::Resume)
            .then_expect_error(TenantError::NotSuspended);
    }

    fn deleted() -> TenantEvent {
        TenantEvent::TenantDeleted {
            purge_after: "2026-12-10T00:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn a_deleted_tenant_refuses_everything_but_its_restoration() {
        let purge_after = "2026-12-10T00:00:00Z".parse().unwrap();
        for command in [
            TenantCommand::Delete { purge_after },
            TenantCommand::Rename { name: name("New") },
            TenantCommand::Suspend {
                reason: reason("unpaid"),
            },
            TenantCommand::Resume,
        ] {
            TestFramework::<Tenant>::with(())
                .given(vec![created(), deleted()])
                .when(command)
                .then_expect_error(TenantError::Deleted(purge_after));
        }
        TestFramework::<Tenant>::with(())
            .given(vec![created(), deleted()])
            .when(TenantCommand::Restore)
            .then_expect_events(vec![TenantEvent::TenantRestored]);
    }

    #[test]
    fn restoring_a_tenant_that_is_not_deleted_is_refused_and_a_restored_one_may_be_deleted_again() {
        TestFramework::<Tenant>::with(())
            .given(vec![created()])
            .when(TenantCommand::Restore)
            .then_expect_error(TenantError::NotDeleted);
        TestFramework::<Tenant>::with(())
            .given(vec![created(), deleted(), TenantEvent::TenantRestored])
            .when(TenantCommand::Rename { name: name("Back") })
            .then_expect_events(vec![TenantEvent::TenantRenamed { name: name("Back") }]);
    }

    #[test]
    fn suspending_a_tenant_that_does_not_exist_is_refused() {
        TestFramework::<Tenant>::with(())
            .given_no_previous_events()
            .when(TenantCommand::Suspend {
                reason: reason("unpaid"),
            })
            .then_expect_error(TenantError::NotFound);
    }
}
