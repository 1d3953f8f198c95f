//! The messages of `fleet.proto` that carry operations on a VM's containers: the server's
//! [`Order`] and the agent's [`OrderDone`].

use std::collections::HashMap;

/// An operation on the VM's containers, asked through the API.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Order {
    /// The operation's id: carried out once however often it is sent.
    #[prost(string, tag = "1")]
    pub operation_id: String,
    /// What to do.
    #[prost(oneof = "order::Action", tags = "2, 3, 4, 5, 6, 7")]
    pub action: Option<order::Action>,
}

/// What an [`Order`] asks.
pub mod order {
    /// One action.
    #[derive(Clone, PartialEq, prost::Oneof)]
    // Orders are rare and short-lived: a launch kept inline costs nothing that matters.
    #[allow(clippy::large_enum_variant)]
    pub enum Action {
        /// Create and start an Envoy container.
        #[prost(message, tag = "2")]
        Launch(super::Launch),
        /// Restart the container of this full id.
        #[prost(string, tag = "3")]
        Restart(String),
        /// Stop it.
        #[prost(string, tag = "4")]
        Stop(String),
        /// Start it.
        #[prost(string, tag = "5")]
        Start(String),
        /// Stop and remove it.
        #[prost(string, tag = "6")]
        Remove(String),
        /// Read the Envoy version of this image.
        #[prost(string, tag = "7")]
        Probe(String),
    }
}

/// How to create and start an Envoy container as a proxy of a group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Launch {
    /// The proxy's node id.
    #[prost(string, tag = "1")]
    pub node_id: String,
    /// Its group.
    #[prost(string, tag = "2")]
    pub group: String,
    /// The image.
    #[prost(string, tag = "3")]
    pub image: String,
    /// Its memory limit in bytes.
    #[prost(uint64, optional, tag = "4")]
    pub memory_bytes: Option<u64>,
    /// How many CPUs it may use.
    #[prost(double, optional, tag = "5")]
    pub cpus: Option<f64>,
    /// The port of Envoy's admin interface on 127.0.0.1.
    #[prost(uint32, tag = "6")]
    pub admin_port: u32,
    /// Environment variables.
    #[prost(map = "string, string", tag = "7")]
    pub env: HashMap<String, String>,
    /// Labels besides the agent's own.
    #[prost(map = "string, string", tag = "8")]
    pub labels: HashMap<String, String>,
    /// The Envoy bootstrap (JSON), with the proxy's token.
    #[prost(string, tag = "9")]
    pub bootstrap: String,
}

/// How an order ended.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderDone {
    /// The operation's id.
    #[prost(string, tag = "1")]
    pub operation_id: String,
    /// The container made or acted on, when it succeeded.
    #[prost(string, tag = "2")]
    pub container_id: String,
    /// The engine's words, when it failed (empty on success).
    #[prost(string, tag = "3")]
    pub error: String,
    /// A probe's answer: the image's id.
    #[prost(string, tag = "4")]
    pub image_id: String,
    /// A probe's answer: the version its Envoy reports.
    #[prost(string, tag = "5")]
    pub envoy_version: String,
}
