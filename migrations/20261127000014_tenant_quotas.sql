-- Per-tenant quotas (FR-MT-004), set by the system role: resources per kind (on each branch) and
-- configuration writes per minute. No row, or a NULL limit, means no limit.
CREATE TABLE tenant_quotas (
    tenant_id          uuid        PRIMARY KEY,
    resources_per_kind integer     CHECK (resources_per_kind >= 0),
    writes_per_minute  integer     CHECK (writes_per_minute >= 1),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    updated_by         text        NOT NULL
);

GRANT SELECT ON tenant_quotas TO efms_app;
GRANT SELECT, INSERT, UPDATE ON tenant_quotas TO efms_system;
ALTER TABLE tenant_quotas ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_quotas FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_quotas FOR SELECT TO efms_app
    USING (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON tenant_quotas TO efms_system USING (true) WITH CHECK (true);

-- Counting a tenant's recent commits (the writes-per-minute quota) reads this index.
CREATE INDEX config_revisions_by_tenant_time ON config_revisions (tenant_id, recorded_at);
