-- Webhooks (API-WH-001…003, ADR 0015): each endpoint keeps its own place in the tenant's event
-- feed. The sender (one replica, under the lease `webhooks`) turns the events after that place
-- into deliveries and moves the place in the same transaction, so an event is either waiting as a
-- delivery or not yet read: a crash loses none. Each delivery is tried on its own schedule, so one
-- failing event never holds back the later ones; every attempt is recorded.

CREATE TABLE webhooks (
    webhook_id        uuid        PRIMARY KEY,
    tenant_id         uuid        NOT NULL,
    url               text        NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
    types             text[]      NOT NULL,
    description       text        CHECK (length(description) <= 500),
    -- The signing secret, wrapped under the tenant's data key `key_id`; the secret it replaced
    -- keeps signing until `previous_until`.
    key_id            text        NOT NULL,
    secret            bytea       NOT NULL,
    previous_secret   bytea,
    previous_until    timestamptz,
    -- The feed position read up to: (transaction, source, position), as in a feed cursor.
    after_tx          bigint      NOT NULL,
    after_source      smallint    NOT NULL,
    after_position    bigint      NOT NULL,
    enabled           boolean     NOT NULL DEFAULT true,
    disabled_reason   text,
    disabled_at       timestamptz,
    -- Since when every attempt has failed (NULL once one succeeds).
    failing_since     timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    created_by        text        NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhooks_by_tenant ON webhooks (tenant_id, created_at);

CREATE TABLE webhook_deliveries (
    delivery_id     uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    webhook_id      uuid        NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    -- The `webhook-id` header: the same for every attempt of this delivery.
    message_id      text        NOT NULL,
    event_type      text        NOT NULL,
    event_cursor    text        NOT NULL,
    event_time      timestamptz NOT NULL,
    body            text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, created_at DESC, delivery_id);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE state <> 'pending';

CREATE TABLE webhook_attempts (
    delivery_id      uuid        NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    attempt          integer     NOT NULL,
    tenant_id        uuid        NOT NULL,
    at               timestamptz NOT NULL,
    duration_ms      integer     NOT NULL,
    status_code      integer,
    response_excerpt text,
    error            text,
    next_attempt_at  timestamptz,
    PRIMARY KEY (delivery_id, attempt)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON webhooks, webhook_deliveries, webhook_attempts TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON webhooks, webhook_deliveries, webhook_attempts TO efms_system;

ALTER TABLE webhooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhooks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhooks TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON webhooks TO efms_system USING (true) WITH CHECK (true);

ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_deliveries TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON webhook_deliveries TO efms_system USING (true) WITH CHECK (true);

ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_attempts TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON webhook_attempts TO efms_system USING (true) WITH CHECK (true);
