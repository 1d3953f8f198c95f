-- Proxy tokens (NFR-SE-001): every token a bootstrap mints, by its id (the token's `jti`), bound
-- to one group of one tenant. Revoking one (setting `revoked_at`) refuses it and ends the streams
-- open under it; the row stays, so the list says who issued and who revoked what.
CREATE TABLE proxy_tokens (
    tenant_id  uuid        NOT NULL,
    token_id   uuid        NOT NULL,
    group_name text        NOT NULL CHECK (length(group_name) BETWEEN 1 AND 253),
    node_id    text        CHECK (length(node_id) BETWEEN 1 AND 253),
    issued_by  text        NOT NULL,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    revoked_by text,
    PRIMARY KEY (tenant_id, token_id),
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);

GRANT SELECT, INSERT, UPDATE ON proxy_tokens TO efms_app;
GRANT SELECT ON proxy_tokens TO efms_system;
ALTER TABLE proxy_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE proxy_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON proxy_tokens TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_read ON proxy_tokens FOR SELECT TO efms_system USING (true);
