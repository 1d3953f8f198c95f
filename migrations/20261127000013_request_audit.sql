-- The API's audit trail (NFR-SE-005): every write request and every refused request, with who
-- made it, from where, what it asked and how it ended. Commits are also audited by the log's
-- trigger (audit_log); this table adds what never reaches the log: refusals, and the caller's
-- address. Rows belong to the tenant the request named (a request for another tenant's data is
-- recorded in that tenant's trail).
CREATE TABLE request_audit (
    tenant_id   uuid,
    audit_id    bigint      GENERATED ALWAYS AS IDENTITY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    role        text,
    method      text        NOT NULL CHECK (method IN ('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS')),
    route       text        NOT NULL,
    path        text        NOT NULL CHECK (length(path) <= 2048),
    status      smallint    NOT NULL CHECK (status BETWEEN 100 AND 599),
    client_addr inet,
    request_id  text,
    PRIMARY KEY (audit_id)
);

CREATE INDEX request_audit_by_tenant ON request_audit (tenant_id, audit_id);

GRANT SELECT ON request_audit TO efms_app;
GRANT SELECT, INSERT ON request_audit TO efms_system;
ALTER TABLE request_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE request_audit FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON request_audit FOR SELECT TO efms_app
    USING (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON request_audit TO efms_system USING (true) WITH CHECK (true);

-- The trail is append-only, even for its owner.
CREATE FUNCTION request_audit_is_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % refused', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER request_audit_no_update_or_delete
    BEFORE UPDATE OR DELETE ON request_audit
    FOR EACH ROW EXECUTE FUNCTION request_audit_is_append_only();
