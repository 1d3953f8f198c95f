-- Envelope encryption of secret material (NFR-SE-003): each tenant's data keys, stored only wrapped
-- under the master key from the configuration (`master_key` names which one, by fingerprint).
CREATE TABLE tenant_data_keys (
    tenant_id   uuid        NOT NULL,
    key_id      text        NOT NULL CHECK (key_id ~ '^k[0-9]{1,9}$'),
    wrapped     bytea       NOT NULL CHECK (length(wrapped) = 60),
    master_key  text        NOT NULL CHECK (master_key ~ '^[0-9a-f]{16}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz,
    PRIMARY KEY (tenant_id, key_id)
);

GRANT SELECT, INSERT ON tenant_data_keys TO efms_app;
GRANT SELECT, UPDATE ON tenant_data_keys TO efms_system;
ALTER TABLE tenant_data_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_data_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_data_keys TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON tenant_data_keys TO efms_system USING (true) WITH CHECK (true);
