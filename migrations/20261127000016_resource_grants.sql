-- Sharing between tenants (FR-MT-005): an owner tenant grants another tenant read access to named
-- resources of its `main` branch. The grantee reads them and refers to them as `owner/name`.
CREATE TABLE resource_grants (
    tenant_id    uuid        NOT NULL,  -- the owner
    owner_slug   text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('cluster', 'template')),
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 253),
    grantee_id   uuid        NOT NULL,
    grantee_slug text        NOT NULL,
    granted_at   timestamptz NOT NULL DEFAULT now(),
    granted_by   text        NOT NULL,
    PRIMARY KEY (tenant_id, kind, name, grantee_id),
    CHECK (grantee_id <> tenant_id)
);

CREATE INDEX resource_grants_by_grantee ON resource_grants (grantee_id);

GRANT SELECT, INSERT, DELETE ON resource_grants TO efms_app;
GRANT SELECT ON resource_grants TO efms_system;
ALTER TABLE resource_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE resource_grants FORCE ROW LEVEL SECURITY;
-- The owner manages its grants; the grantee sees what it was given.
CREATE POLICY owner_all ON resource_grants TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY grantee_read ON resource_grants FOR SELECT TO efms_app
    USING (grantee_id = efms_current_tenant());
CREATE POLICY system_read ON resource_grants FOR SELECT TO efms_system USING (true);

-- A grantee reads the granted resources of the owner's `main`, and nothing else of the owner's.
CREATE POLICY shared_read ON config_resources FOR SELECT TO efms_app
    USING (branch = 'main' AND EXISTS (
        SELECT 1 FROM resource_grants g
        WHERE g.tenant_id = config_resources.tenant_id
          AND g.grantee_id = efms_current_tenant()
          AND g.kind = config_resources.kind
          AND g.name = config_resources.name));

-- What each resource refers to in other tenants (`kind:owner/name`), so that an owner can learn
-- what revoking a grant would break.
ALTER TABLE config_resources ADD COLUMN shared_refs jsonb
    CHECK (shared_refs IS NULL OR jsonb_typeof(shared_refs) = 'array');
