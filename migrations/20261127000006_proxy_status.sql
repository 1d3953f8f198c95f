-- What every proxy runs (DESIGN §7, NFR-OB-004): the xDS server records, per proxy and resource
-- type, what it sent, what the proxy accepted and what it refused with Envoy's error. Current state
-- in `proxies` and `proxy_resource_status`; every accepted or refused version in
-- `proxy_transitions`, which answers what a proxy ran at any moment. Written in batches by the xDS
-- server (efms_system), never through the config streams.

CREATE TABLE proxies (
    tenant_id       uuid        NOT NULL,
    node_id         text        NOT NULL CHECK (length(node_id) BETWEEN 1 AND 253),
    group_name      text        CHECK (length(group_name) BETWEEN 1 AND 253),
    node_cluster    text        NOT NULL DEFAULT '',
    envoy_version   text,
    protocol        text        NOT NULL CHECK (protocol IN ('sotw', 'delta')),
    streams         integer     NOT NULL DEFAULT 0 CHECK (streams >= 0),
    connected_at    timestamptz NOT NULL,
    disconnected_at timestamptz,
    last_seen_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, node_id)
);

CREATE TABLE proxy_resource_status (
    tenant_id       uuid        NOT NULL,
    node_id         text        NOT NULL,
    type_url        text        NOT NULL CHECK (type_url LIKE 'type.googleapis.com/%'),
    sent_version    text,
    sent_revision   bigint,
    sent_at         timestamptz,
    acked_version   text,
    acked_revision  bigint,
    acked_at        timestamptz,
    nacked_version  text,
    nacked_revision bigint,
    nacked_at       timestamptz,
    error_detail    text,
    PRIMARY KEY (tenant_id, node_id, type_url),
    FOREIGN KEY (tenant_id, node_id) REFERENCES proxies (tenant_id, node_id) ON DELETE CASCADE,
    CHECK ((nacked_version IS NULL) = (nacked_at IS NULL))
);

CREATE TABLE proxy_transitions (
    tenant_id    uuid        NOT NULL,
    node_id      text        NOT NULL,
    type_url     text        NOT NULL,
    at           timestamptz NOT NULL,
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    outcome      text        NOT NULL CHECK (outcome IN ('acked', 'nacked')),
    version      text        NOT NULL,
    revision     bigint,
    error_detail text,
    PRIMARY KEY (tenant_id, node_id, type_url, at, seq),
    CHECK ((outcome = 'nacked') = (error_detail IS NOT NULL))
);

-- A proxy's history, newest first.
CREATE INDEX proxy_transitions_by_node ON proxy_transitions (tenant_id, node_id, seq);

DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['proxies', 'proxy_resource_status', 'proxy_transitions'] LOOP
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
