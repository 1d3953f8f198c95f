//! Authentication: who a request speaks for.
//!
//! - [`tokens`]: efms's own HS256 tokens (claims, issuing, verifying) and [`JwtKeys`];
//! - [`external`]: an external identity provider's public keys and tokens ([`ExternalIssuer`]);
//! - [`middleware`]: the bearer token check of `/api/v1` and the [`Principal`] extractor;
//! - [`tickets`]: short-lived tickets that open one tenant's event stream from a browser.

pub mod external;
pub mod middleware;
pub mod tickets;
pub mod tokens;

pub use crate::ttl::parse_ttl;
pub use external::ExternalIssuer;
pub use middleware::{require_bearer, Principal};
pub use tokens::{Claims, JwtKeys, TokenUser, ISSUER, MIN_SECRET_BYTES};
