//! Event stream tickets: a browser's `EventSource` cannot send an `Authorization` header, so a
//! caller trades its token for a ticket (`POST …/events/tickets`) and opens the stream with
//! `?ticket=`. A ticket speaks for the same caller (the same user and generation, so withdrawing
//! the user withdraws it too), lasts [`TICKET_TTL`], opens the event streams of the one tenant it
//! was issued for, and is refused everywhere else: its audience is not the API's.

use std::time::Duration;

use efms_domain::{Actor, Role, TenantSlug};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::tokens::{JwtKeys, TokenUser, ISSUER};
use crate::credentials::VerifiedToken;
use crate::error::ApiError;

/// How long a ticket opens streams.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// The audience of tickets, which no other route accepts.
const AUDIENCE: &str = "efms-event-stream";

/// What a ticket says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TicketClaims {
    sub: String,
    role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<i32>,
    /// The tenant whose event streams it opens.
    stream: String,
    iss: String,
    aud: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

impl JwtKeys {
    /// A ticket for `actor` (issued to `user`, if any) to open `stream`'s event streams.
    pub fn issue_ticket(
        &self,
        actor: &Actor,
        user: Option<TokenUser>,
        stream: &TenantSlug,
    ) -> Result<(String, i64), ApiError> {
        let now = chrono::Utc::now().timestamp();
        let exp = now + i64::try_from(TICKET_TTL.as_secs()).unwrap_or(60);
        let claims = TicketClaims {
            sub: actor.subject.clone(),
            role: actor.role,
            tenant: actor.tenant.as_ref().map(ToString::to_string),
            uid: user.map(|user| user.uid),
            generation: user.map(|user| user.generation),
            stream: stream.to_string(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            nbf: now,
            exp,
        };
        let ticket = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok((ticket, exp))
    }

    /// The caller a ticket speaks for, when it opens `stream`'s event streams.
    pub fn verify_ticket(&self, ticket: &str, stream: &str) -> Result<VerifiedToken, ApiError> {
        let refused = |why: String| ApiError::Unauthorized(format!("the ticket {why}"));
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<TicketClaims>(ticket, &self.decoding, &validation)
            .map_err(|error| refused(format!("is not valid: {error}")))?
            .claims;
        if claims.stream != stream {
            return Err(refused(format!(
                "opens the event streams of `{}`, not of `{stream}`",
                claims.stream
            )));
        }
        let tenant = claims
            .tenant
            .map(TenantSlug::parse)
            .transpose()
            .map_err(|error| refused(error.to_string()))?;
        Ok(VerifiedToken {
            actor: Actor {
                subject: claims.sub,
                role: claims.role,
                tenant,
            },
            user: claims.uid.map(|uid| TokenUser {
                uid,
                generation: claims.generation.unwrap_or_default(),
            }),
            proxy: None,
            expires_at: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_its_tenants_streams_only_and_is_no_bearer_token() {
        let keys = JwtKeys::from_secret(&[7; 32]);
        let acme = TenantSlug::parse("acme").unwrap();
        let actor = Actor {
            subject: "ops".to_owned(),
            role: Role::Viewer,
            tenant: Some(acme.clone()),
        };
        let (ticket, _) = keys.issue_ticket(&actor, None, &acme).unwrap();
        assert_eq!(keys.verify_ticket(&ticket, "acme").unwrap().actor, actor);
        assert!(keys.verify_ticket(&ticket, "other").is_err());
        assert!(keys.verify_token(&ticket).is_err(), "not a bearer token");
        let bearer = keys
            .issue("ops", Role::Viewer, Some(&acme), Duration::from_secs(60))
            .unwrap();
        assert!(
            keys.verify_ticket(&bearer, "acme").is_err(),
            "a bearer token is no ticket"
        );
    }
}
