-- Read models of the configuration repositories (FR-VC-001..004), kept by the projector from the
-- `config` streams. Time travel reads the temporal table; it never replays the log.

-- One row per commit: the revisions list and the `?at=` lookup.
CREATE TABLE config_revisions (
    tenant_id   uuid        NOT NULL,
    branch      text        NOT NULL CHECK (length(branch) BETWEEN 1 AND 100),
    revision    bigint      NOT NULL CHECK (revision >= 1),
    recorded_at timestamptz NOT NULL,
    actor       text        NOT NULL,
    message     text,
    operation   text        NOT NULL CHECK (operation IN ('create', 'replace', 'patch', 'delete', 'rollback')),
    changes     integer     NOT NULL DEFAULT 0 CHECK (changes >= 0),
    PRIMARY KEY (tenant_id, branch, revision)
);

CREATE INDEX config_revisions_by_time ON config_revisions (tenant_id, branch, recorded_at);

-- The current state: one row per live resource.
CREATE TABLE config_resources (
    tenant_id  uuid        NOT NULL,
    branch     text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('cluster', 'endpoints', 'listener', 'route', 'secret')),
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 253),
    document   jsonb       NOT NULL CHECK (jsonb_typeof(document) = 'object'),
    hash       text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    version    bigint      NOT NULL CHECK (version >= 1),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by text        NOT NULL,
    PRIMARY KEY (tenant_id, branch, kind, name)
);

-- Every version of every resource, valid from its revision until (excluding) the next change of the
-- same resource. A deletion is a version without a document.
CREATE TABLE config_resource_versions (
    tenant_id   uuid        NOT NULL,
    branch      text        NOT NULL,
    kind        text        NOT NULL,
    name        text        NOT NULL,
    valid_from  bigint      NOT NULL CHECK (valid_from >= 1),
    valid_to    bigint      CHECK (valid_to > valid_from),
    change      text        NOT NULL CHECK (change IN ('created', 'replaced', 'deleted')),
    document    jsonb,
    hash        text,
    recorded_at timestamptz NOT NULL,
    actor       text        NOT NULL,
    PRIMARY KEY (tenant_id, branch, kind, name, valid_from),
    CHECK ((change = 'deleted') = (document IS NULL))
);

CREATE INDEX config_resource_versions_as_of
    ON config_resource_versions (tenant_id, branch, kind, valid_from, valid_to);

DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['config_revisions', 'config_resources', 'config_resource_versions'] LOOP
        EXECUTE format('GRANT SELECT ON %I TO efms_app', tbl);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO efms_system', tbl);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO efms_app '
            'USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant())', tbl);
        EXECUTE format('CREATE POLICY system_all ON %I TO efms_system USING (true) WITH CHECK (true)', tbl);
    END LOOP;
END
$$;
