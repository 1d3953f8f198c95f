-- Tenant registry read model, grants and row-level security on every tenant table (DB-003, FR-MT-002).

-- The tenants read model, kept by the projector from the tenant aggregates' events.
CREATE TABLE tenants (
    tenant_id   uuid        PRIMARY KEY,
    slug        text        NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    version     bigint      NOT NULL CHECK (version >= 1),
    created_at  timestamptz NOT NULL,
    created_by  text        NOT NULL,
    updated_at  timestamptz NOT NULL,
    CHECK (updated_at >= created_at)
);

-- Privileges: the application roles get exactly what their work needs. Nobody but the owner may update
-- or delete events, and the partitions are reachable only through the parent (whose policies apply).
GRANT SELECT, INSERT ON events TO efms_app;
GRANT SELECT ON events TO efms_system;
GRANT USAGE ON SEQUENCE event_global_position TO efms_app;
GRANT SELECT, INSERT, UPDATE ON snapshots TO efms_app;
GRANT SELECT ON snapshots TO efms_system;
GRANT SELECT ON tenants TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants TO efms_system;
GRANT SELECT, INSERT, UPDATE ON projection_checkpoints TO efms_system;
GRANT SELECT ON audit_log TO efms_app, efms_system;

-- Row-level security, enabled and forced (so it binds the owner too) on every table that holds tenant
-- rows, partitions included. efms_app sees and writes only the tenant of its transaction; efms_system
-- reads across tenants. A role without a policy sees nothing.
DO $$
DECLARE
    tbl text;
BEGIN
    FOR tbl IN
        SELECT c.relname
        FROM pg_class c
        JOIN pg_namespace ns ON ns.oid = c.relnamespace
        WHERE ns.nspname = 'public'
          AND c.relkind IN ('r', 'p')
          AND (c.relname IN ('events', 'snapshots', 'tenants', 'audit_log')
               OR c.relname ~ '^events_p[0-9]{2}$')
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO efms_app '
            'USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant())', tbl);
        EXECUTE format('CREATE POLICY system_read ON %I FOR SELECT TO efms_system USING (true)', tbl);
    END LOOP;
END
$$;

-- The projector (efms_system) maintains the tenant registry.
CREATE POLICY system_write ON tenants FOR ALL TO efms_system USING (true) WITH CHECK (true);

-- The audit trigger runs as the owner; FORCE would otherwise stop even it. Only the owner holds INSERT.
CREATE POLICY audit_append ON audit_log FOR INSERT WITH CHECK (true);
