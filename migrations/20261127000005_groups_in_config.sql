-- Proxy groups (FR-CL-001/002) are kept in the configuration repository beside the Envoy resources,
-- so they are versioned, diffed and rolled back alike.
ALTER TABLE config_resources DROP CONSTRAINT config_resources_kind_check;
ALTER TABLE config_resources ADD CONSTRAINT config_resources_kind_check
    CHECK (kind IN ('cluster', 'endpoints', 'listener', 'route', 'secret', 'group'));
ALTER TABLE config_resource_versions ADD CONSTRAINT config_resource_versions_kind_check
    CHECK (kind IN ('cluster', 'endpoints', 'listener', 'route', 'secret', 'group'));
