//! The HTTP routes, one module per resource.

pub mod health;
pub mod resources;
pub mod tenants;
pub mod versions;
