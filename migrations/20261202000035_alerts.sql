-- Alerts (NFR-OB-005, ADR 0016): a tenant's rules of built-in kinds, and the alerts their
-- evaluation (one replica, under the lease `alerts`) keeps: one open alert per rule and subject
-- (pending, then firing), resolved once its condition no longer holds. Firing and resolving are
-- facts of the tenant's event feed, written by a trigger in the same transaction.

CREATE TABLE alert_rules (
    rule_id    uuid        PRIMARY KEY,
    tenant_id  uuid        NOT NULL,
    name       text        NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])?$'),
    kind       text        NOT NULL,
    params     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    enabled    boolean     NOT NULL DEFAULT true,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE alerts (
    alert_id      uuid        PRIMARY KEY,
    tenant_id     uuid        NOT NULL,
    rule_id       uuid        NOT NULL REFERENCES alert_rules ON DELETE CASCADE,
    subject       text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    summary       text        NOT NULL,
    pending_since timestamptz NOT NULL,
    fired_at      timestamptz,
    resolved_at   timestamptz,
    acked_at      timestamptz,
    acked_by      text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Deduplication: one open alert per rule and subject.
CREATE UNIQUE INDEX alerts_open ON alerts (rule_id, subject) WHERE state <> 'resolved';
CREATE INDEX alerts_by_tenant ON alerts (tenant_id, pending_since DESC, alert_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON alert_rules, alerts TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_rules, alerts TO efms_system;

DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['alert_rules', 'alerts'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO efms_app '
            'USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant())', tbl);
        EXECUTE format('CREATE POLICY system_all ON %I TO efms_system USING (true) WITH CHECK (true)', tbl);
    END LOOP;
END
$$;

CREATE FUNCTION efms_alert_facts() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO feed_facts (tenant_id, type, payload)
    SELECT NEW.tenant_id,
           CASE WHEN NEW.state = 'firing' THEN 'alert.fired' ELSE 'alert.resolved' END,
           jsonb_strip_nulls(jsonb_build_object(
               'alert_id', NEW.alert_id, 'rule', r.name, 'rule_id', r.rule_id, 'kind', r.kind,
               'subject', NEW.subject, 'summary', NEW.summary, 'pending_since', NEW.pending_since,
               'fired_at', NEW.fired_at, 'resolved_at', NEW.resolved_at))
    FROM alert_rules r WHERE r.rule_id = NEW.rule_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER alert_fired_on_insert AFTER INSERT ON alerts
    FOR EACH ROW WHEN (NEW.state = 'firing') EXECUTE FUNCTION efms_alert_facts();
CREATE TRIGGER alert_fired_or_resolved AFTER UPDATE OF state ON alerts
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
                       AND (NEW.state = 'firing' OR (NEW.state = 'resolved' AND OLD.state = 'firing')))
    EXECUTE FUNCTION efms_alert_facts();
