//! Secret material is sealed before it reaches the aggregate (NFR-SE-003).

use efms_domain::config::{Change, ConfigCommand};
use efms_domain::envoy::ResourceKind;
use uuid::Uuid;

use super::ConfigServiceError;
use crate::keys::Keyring;

/// Seals the private material of every secret the command writes with the tenant's data key, so
/// that none reaches the database in clear; the aggregate refuses any that is left in clear.
pub async fn seal_secrets(
    keyring: &Keyring,
    tenant_id: Uuid,
    command: &mut ConfigCommand,
) -> Result<(), ConfigServiceError> {
    let changes = match command {
        ConfigCommand::Commit { changes, .. } | ConfigCommand::Merge { changes, .. } => changes,
        ConfigCommand::Fork { resources, .. } => resources,
        ConfigCommand::DeleteBranch => return Ok(()),
    };
    let mut key = None;
    for change in changes.iter_mut() {
        if let Change::Put {
            kind: ResourceKind::Secret,
            document,
            ..
        } = change
        {
            if key.is_none() {
                key = Some(
                    keyring
                        .active(tenant_id)
                        .await
                        .map_err(|error| ConfigServiceError::Internal(error.into()))?,
                );
            }
            let (key_id, key) = key.as_ref().expect("set above");
            efms_domain::secrets::seal_document(document, key_id, key);
        }
    }
    Ok(())
}
