//! A VM's placement: its labels, region, zone and the images its agent watches, as `POST /vms`
//! sets them and `PATCH /vms/{name}` changes them (each change an event in the VM's stream; its
//! agent's stream is cut and reconnects to be told).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use efms_domain::fleet::{check_image, check_label, VmCommand, VmPlacement, MAX_WATCHED_IMAGES};
use efms_projections::fleet::queries as read;
use serde::{Deserialize, Deserializer};

use super::views::Vm;
use super::VmPath;
use crate::access::{ManageVms, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::state::AppState;

/// What `PATCH /vms/{name}` changes; a field left out stays as it is.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementChange {
    /// The labels, all of them (`{"k": "v"}`).
    labels: Option<BTreeMap<String, String>>,
    /// The region (`null` clears it).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    region: Given<String>,
    /// The zone (`null` clears it).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    zone: Given<String>,
    /// Images whose containers the agent reports besides those labelled `efms.node_id`
    /// (`envoyproxy/envoy` watches every tag of it), all of them.
    watch_images: Option<Vec<String>>,
}

/// A field of a change: left out (unchanged), `null` (cleared) or a value.
#[derive(Debug, Default)]
enum Given<T> {
    #[default]
    Absent,
    Cleared,
    Set(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Given<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer)? {
            Some(value) => Given::Set(value),
            None => Given::Cleared,
        })
    }
}

impl<T> Given<T> {
    /// `current` after the change.
    fn applied_to(self, current: Option<T>) -> Option<T> {
        match self {
            Given::Absent => current,
            Given::Cleared => None,
            Given::Set(value) => Some(value),
        }
    }
}

/// What is wrong with `placement`, by pointer.
pub(super) fn check(placement: &VmPlacement) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    for (key, value) in &placement.labels {
        if let Err(problem) = check_label(key, value) {
            errors.push(FieldError::at(format!("/labels/{key}"), problem));
        }
    }
    for (field, value) in [("region", &placement.region), ("zone", &placement.zone)] {
        if value.as_ref().is_some_and(|v| v.is_empty() || v.len() > 63) {
            errors.push(FieldError::at(format!("/{field}"), "1 to 63 characters"));
        }
    }
    if placement.watch_images.len() > MAX_WATCHED_IMAGES {
        errors.push(FieldError::at(
            "/watch_images",
            format!("at most {MAX_WATCHED_IMAGES} images"),
        ));
    }
    for (index, image) in placement.watch_images.iter().enumerate() {
        if let Err(problem) = check_image(image) {
            errors.push(FieldError::at(format!("/watch_images/{index}"), problem));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// `PATCH /api/v1/tenants/{tenant}/vms/{name}`: changes the VM's labels, region, zone or watched
/// images; its agent's stream is cut so that it reconnects and is told.
#[utoipa::path(patch, path = "/api/v1/tenants/{tenant}/vms/{name}", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "VM name")),
    request_body = PlacementChange,
    responses((status = 200, description = "The VM as it is now", body = Vm),
        (status = 400, description = "Malformed body", body = crate::problem::Problem),
        (status = 403, description = "The role may not manage VMs", body = crate::problem::Problem),
        (status = 404, description = "No such VM, or it was removed", body = crate::problem::Problem),
        (status = 422, description = "Invalid labels, region, zone or images", body = crate::problem::Problem)))]
pub async fn change(
    State(state): State<AppState>,
    tenant: Tenant<ManageVms>,
    Path(path): Path<VmPath>,
    ApiJson(change): ApiJson<PlacementChange>,
) -> Result<Json<Vm>, ApiError> {
    let name = path.name()?;
    let row = read::get_vm(&state.pool, tenant.tenant_id, name.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no VM `{name}`")))?;
    let mut placement = VmPlacement {
        labels: serde_json::from_str(row.labels.0.get()).map_err(ApiError::internal)?,
        region: row.region,
        zone: row.zone,
        watch_images: serde_json::from_str(row.watch_images.0.get()).map_err(ApiError::internal)?,
    };
    if let Some(labels) = change.labels {
        placement.labels = labels;
    }
    placement.region = change.region.applied_to(placement.region);
    placement.zone = change.zone.applied_to(placement.zone);
    if let Some(images) = change.watch_images {
        placement.watch_images = images;
    }
    check(&placement)?;
    let actor = tenant.actor().audit_name();
    let command = VmCommand::Place { placement };
    let position = state
        .fleet
        .execute(tenant.tenant_id, name.as_str(), command, &actor)
        .await
        .map_err(|error| super::vms::vm_error(&name, error))?;
    if let Some(fleet) = state.xds.fleet() {
        fleet.recheck_now();
    }
    super::vms::wait(&state, position).await;
    Ok(Json(
        super::vms::read_vm(&state, tenant.tenant_id, &name).await?,
    ))
}
