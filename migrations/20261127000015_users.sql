-- Users of a tenant (FR-MT-003, NFR-SE-002): people who log in with a password (argon2 hash) and
-- service accounts with long-lived tokens. Deleting one keeps its row (the audit trail names it)
-- and makes every token issued to it invalid.
CREATE TABLE users (
    tenant_id     uuid        NOT NULL,
    user_id       uuid        NOT NULL,
    username      text        NOT NULL CHECK (username ~ '^[a-z0-9][a-z0-9._@-]{0,99}$'),
    role          text        NOT NULL CHECK (role IN ('admin', 'operator', 'viewer', 'auditor')),
    kind          text        NOT NULL CHECK (kind IN ('person', 'service')),
    password_hash text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL,
    deleted_at    timestamptz,
    PRIMARY KEY (tenant_id, user_id),
    CHECK ((kind = 'person') = (password_hash IS NOT NULL))
);

CREATE UNIQUE INDEX users_live_name ON users (tenant_id, username) WHERE deleted_at IS NULL;

GRANT SELECT, INSERT, UPDATE ON users TO efms_app;
GRANT SELECT ON users TO efms_system;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_read ON users FOR SELECT TO efms_system USING (true);
