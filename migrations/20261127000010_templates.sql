-- Templates (FR-EP-004): a template is a resource of the repository like a group; a resource
-- declared from one keeps its declaration (template, parameter values, overrides) beside its
-- rendered document, so branches and merges carry it and a template change re-renders it.
ALTER TABLE config_resources DROP CONSTRAINT config_resources_kind_check;
ALTER TABLE config_resources ADD CONSTRAINT config_resources_kind_check
    CHECK (kind IN ('cluster', 'endpoints', 'listener', 'route', 'secret', 'group', 'template'));
ALTER TABLE config_resource_versions DROP CONSTRAINT config_resource_versions_kind_check;
ALTER TABLE config_resource_versions ADD CONSTRAINT config_resource_versions_kind_check
    CHECK (kind IN ('cluster', 'endpoints', 'listener', 'route', 'secret', 'group', 'template'));

ALTER TABLE config_resources
    ADD COLUMN derivation jsonb CHECK (derivation IS NULL OR jsonb_typeof(derivation) = 'object');
ALTER TABLE config_resource_versions
    ADD COLUMN derivation jsonb CHECK (derivation IS NULL OR jsonb_typeof(derivation) = 'object');
