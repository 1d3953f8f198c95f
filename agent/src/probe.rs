//! Which Envoy an image holds: `--version` run once in a throwaway container (no network), its
//! output read and the container removed.

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt as _;

use crate::engine::Engine;

/// How long `--version` may run before the probe gives up (and removes its container).
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The image's id and the version its Envoy reports (`1.40.0`).
pub async fn envoy_version(engine: &Engine, image: &str) -> Result<(String, String), String> {
    let docker = engine.docker();
    let failed = |error: bollard::errors::Error| engine.api_error(error).to_string();
    let inspected = docker.inspect_image(image).await.map_err(failed)?;
    let image_id = inspected.id.unwrap_or_default();
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["--version".to_owned()]),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_owned()),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let name = format!("efms-probe-{}", uuid::Uuid::new_v4().simple());
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let created = docker
        .create_container(Some(options), body)
        .await
        .map_err(failed)?;
    let output = tokio::time::timeout(PROBE_TIMEOUT, async {
        docker
            .start_container(&created.id, None)
            .await
            .map_err(failed)?;
        let mut waiting = docker.wait_container(&created.id, None);
        while let Some(waited) = waiting.next().await {
            waited.map_err(failed)?;
        }
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
        let mut logs = docker.logs(&created.id, Some(options));
        let mut text = String::new();
        while let Some(chunk) = logs.next().await {
            text.push_str(&chunk.map_err(failed)?.to_string());
        }
        Ok::<_, String>(text)
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "`{image} --version` did not end within {PROBE_TIMEOUT:?}"
        ))
    });
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = docker.remove_container(&created.id, Some(remove)).await;
    let output = output?;
    let version = parse_version(&output)
        .ok_or_else(|| format!("`{image} --version` named no Envoy version: {output}"))?;
    Ok((image_id, version))
}

/// The release in Envoy's `--version` line (`envoy  version: <sha>/1.40.0/Clean/RELEASE/…`).
fn parse_version(output: &str) -> Option<String> {
    let (_, rest) = output.split_once("version: ")?;
    rest.split(['/', ' ', '\n'])
        .find(|part| {
            let numbers: Vec<&str> = part.split('.').collect();
            numbers.len() == 3
                && numbers
                    .iter()
                    .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn the_release_is_read_from_envoys_version_line() {
        let line = "\nenvoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse_version(line).as_deref(), Some("1.40.0"));
        assert_eq!(parse_version("no version here"), None);
        assert_eq!(parse_version("version: abc/def"), None);
    }
}
