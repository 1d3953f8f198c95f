//! Responses as they go on the wire: protobuf fields encoded once and shared by every stream that
//! sends them, then each stream's own few fields.
//!
//! A `DiscoveryResponse` for a set of resources is the same for every stream that gets that set
//! but for its nonce, so its other fields are encoded once per snapshot and set version
//! ([`GroupSnapshot::encoded`]); a `DeltaDiscoveryResponse` carries resources each encoded once
//! per version ([`XdsResource::delta_field`]). Protobuf readers accept fields in any order, so
//! the shared bytes and the stream's own are simply written one after the other.

use bytes::{BufMut, Bytes};
use efms_domain::envoy::ResourceKind;
use efms_projections::{GroupSnapshot, XdsResource};
use prost::encoding::{encode_key, encode_varint, DecodeContext, WireType};

use crate::session::static_type_url;

/// One response, encoded: its own fields, then fields it shares with other streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wire {
    /// The fields of this stream's own (the nonce; in delta also the version and removals).
    own: Vec<u8>,
    /// Fields encoded once and shared.
    shared: Vec<Bytes>,
}

impl prost::Message for Wire {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.own);
        for part in &self.shared {
            buf.put_slice(part);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent, never read: a response read back as a `Wire` is empty.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.own.len() + self.shared.iter().map(Bytes::len).sum::<usize>()
    }

    fn clear(&mut self) {
        self.own.clear();
        self.shared.clear();
    }
}

/// A string field.
fn string(tag: u32, value: &str, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value.as_bytes());
}

/// The `control_plane` field (tag 6 in SotW, 7 in delta) naming this server.
fn control_plane(tag: u32, identifier: &str, buf: &mut Vec<u8>) {
    let inner = prost::encoding::key_len(1)
        + prost::encoding::encoded_len_varint(identifier.len() as u64)
        + identifier.len();
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(inner as u64, buf);
    string(1, identifier, buf);
}

/// A State-of-the-World response: `resources` of `kind` at `version` (encoded once per snapshot
/// and version, from `snapshot`'s encodings), with this stream's `nonce`.
pub(crate) fn sotw<'a>(
    snapshot: &GroupSnapshot,
    kind: ResourceKind,
    version: &str,
    resources: impl Iterator<Item = &'a std::sync::Arc<XdsResource>>,
    identifier: &str,
    nonce: &str,
) -> Wire {
    let shared = snapshot.encoded(kind, version, || {
        let mut buf = Vec::new();
        string(1, version, &mut buf);
        for resource in resources {
            buf.extend_from_slice(&resource.sotw_field);
        }
        string(4, static_type_url(kind), &mut buf);
        control_plane(6, identifier, &mut buf);
        Bytes::from(buf)
    });
    let mut own = Vec::with_capacity(nonce.len() + 2);
    string(5, nonce, &mut own);
    Wire {
        own,
        shared: vec![shared],
    }
}

/// A delta response for `kind`: `resources` (each shared), `removed` names, the `version` of what
/// the proxy will hold, and this stream's `nonce`.
pub(crate) fn delta<'a>(
    kind: ResourceKind,
    version: &str,
    resources: impl Iterator<Item = &'a std::sync::Arc<XdsResource>>,
    removed: &[String],
    identifier: &str,
    nonce: &str,
) -> Wire {
    let mut own = Vec::with_capacity(128);
    string(1, version, &mut own);
    string(4, static_type_url(kind), &mut own);
    string(5, nonce, &mut own);
    for name in removed {
        string(6, name, &mut own);
    }
    control_plane(7, identifier, &mut own);
    Wire {
        own,
        shared: resources
            .map(|resource| resource.delta_field.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message as _;
    use uuid::Uuid;

    use super::*;

    fn resource(name: &str, version: &str) -> Arc<XdsResource> {
        let body = format!("body of {name}").into_bytes();
        Arc::new(XdsResource::new(
            ResourceKind::Cluster,
            name.to_owned(),
            version.to_owned(),
            &body,
        ))
    }

    #[test]
    fn a_shared_sotw_response_reads_as_the_response_built_field_by_field() {
        let resources = [resource("a", "1"), resource("b", "2")];
        let snapshot = GroupSnapshot {
            tenant_id: Uuid::nil(),
            group: "edge".to_owned(),
            branch: "main".to_owned(),
            revision: 1,
            exists: true,
            resources: std::collections::BTreeMap::new(),
            sets: std::collections::BTreeMap::new(),
            versions: std::collections::BTreeMap::new(),
            changes: efms_projections::snapshots::Changes::default(),
            encodings: efms_projections::snapshots::Encodings::default(),
        };
        let wire = sotw(
            &snapshot,
            ResourceKind::Cluster,
            "v1",
            resources.iter(),
            "efms test",
            "7",
        );
        let url = static_type_url(ResourceKind::Cluster).to_owned();
        let expected = DiscoveryResponse {
            version_info: "v1".to_owned(),
            resources: resources
                .iter()
                .map(|r| Any {
                    type_url: url.clone(),
                    value: r.body.to_vec(),
                })
                .collect(),
            type_url: url,
            nonce: "7".to_owned(),
            control_plane: Some(ControlPlane {
                identifier: "efms test".to_owned(),
            }),
            ..DiscoveryResponse::default()
        };
        let read = DiscoveryResponse::decode(wire.encode_to_vec().as_slice()).unwrap();
        assert_eq!(read, expected);
        // Another stream's response shares the encoding and differs by its nonce only.
        let other = sotw(
            &snapshot,
            ResourceKind::Cluster,
            "v1",
            std::iter::empty(),
            "efms test",
            "8",
        );
        let read = DiscoveryResponse::decode(other.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            read,
            DiscoveryResponse {
                nonce: "8".to_owned(),
                ..expected
            }
        );
    }

    #[test]
    fn a_delta_response_of_shared_resources_reads_as_the_response_built_field_by_field() {
        let resources = [resource("a", "1"), resource("b", "2")];
        let removed = vec!["c".to_owned()];
        let wire = delta(
            ResourceKind::Cluster,
            "v2",
            resources.iter(),
            &removed,
            "efms test",
            "9",
        );
        let url = static_type_url(ResourceKind::Cluster).to_owned();
        let expected = DeltaDiscoveryResponse {
            system_version_info: "v2".to_owned(),
            resources: resources
                .iter()
                .map(|r| Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(Any {
                        type_url: url.clone(),
                        value: r.body.to_vec(),
                    }),
                    ..Resource::default()
                })
                .collect(),
            type_url: url,
            removed_resources: removed,
            nonce: "9".to_owned(),
            control_plane: Some(ControlPlane {
                identifier: "efms test".to_owned(),
            }),
            ..DeltaDiscoveryResponse::default()
        };
        let read = DeltaDiscoveryResponse::decode(wire.encode_to_vec().as_slice()).unwrap();
        assert_eq!(read, expected);
    }
}
