//! The REST API of the Envoy Fleet Manager and the pieces of the `efms` binary.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into this library, so tests
//! can run the same router on a port of their own against a database of their own.

pub mod access;
pub mod anonymous_budget;
pub mod app;
pub mod auth;
pub mod background;
pub mod bootstrap;
pub mod config_services;
pub mod connections;
pub mod credentials;
pub mod database_watch;
pub mod db;
pub mod error;
pub mod extract;
pub mod jwks;
pub mod known_tenants;
mod launch_bootstraps;
pub mod limits;
pub mod live_feed;
pub mod logging;
pub mod login_throttle;
pub mod metrics;
pub mod openapi;
pub mod passwords;
pub mod policy;
pub mod probe;
pub mod problem;
pub mod read_replica;
pub mod reload;
pub mod replay;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod service_errors;
pub mod settings;
pub mod state;
pub mod store;
pub mod ttl;
pub mod verify;

pub use app::router;
pub use auth::JwtKeys;
pub use state::{AppState, XdsAddress};
