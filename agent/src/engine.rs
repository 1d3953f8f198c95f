//! The connection to the local Docker engine.

use bollard::Docker;
use serde::{Deserialize, Serialize};

/// The engine an agent talks to when neither a flag nor `DOCKER_HOST` names one.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Why the engine could not be reached or answered an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The address is not one the agent can connect to.
    #[error("cannot connect to the Docker engine at {host}: {source}")]
    Connect {
        /// The address tried.
        host: String,
        /// What went wrong.
        source: bollard::errors::Error,
    },
    /// A call to the Engine API failed.
    #[error("Docker engine at {host}: {source}")]
    Api {
        /// The engine's address.
        host: String,
        /// What went wrong.
        source: bollard::errors::Error,
    },
}

/// The engine's version, as reported in the host's facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineVersion {
    /// The engine's release, e.g. `20.10.24+dfsg1`.
    pub version: String,
    /// The newest Engine API version the engine speaks, e.g. `1.41`.
    pub api_version: String,
    /// The API version this agent and the engine agreed on.
    pub negotiated_api_version: String,
}

/// A Docker engine, with the API version negotiated (an engine older than this client, such as
/// Debian's 20.10 at API 1.41, is spoken to in its own version).
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    host: String,
}

impl Engine {
    /// Connects to `host` (`unix:///path` or `tcp://host:port`), else to `DOCKER_HOST`, else to
    /// [`DEFAULT_DOCKER_HOST`], and negotiates the API version.
    pub async fn connect(host: Option<&str>) -> Result<Self, EngineError> {
        let host = host.map_or_else(
            || std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_DOCKER_HOST.to_owned()),
            str::to_owned,
        );
        let docker = Docker::connect_with_host(&host).map_err(|source| EngineError::Connect {
            host: host.clone(),
            source,
        })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| EngineError::Connect {
                host: host.clone(),
                source,
            })?;
        Ok(Self { docker, host })
    }

    /// The Engine API client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The engine's address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Wraps an Engine API error with the engine's address.
    pub(crate) fn api_error(&self, source: bollard::errors::Error) -> EngineError {
        EngineError::Api {
            host: self.host.clone(),
            source,
        }
    }

    /// The engine's release and API versions.
    pub async fn version(&self) -> Result<EngineVersion, EngineError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|error| self.api_error(error))?;
        Ok(EngineVersion {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            negotiated_api_version: self.docker.client_version().to_string(),
        })
    }
}

/// Whether `error` says the object asked for does not exist (any more).
pub(crate) fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
