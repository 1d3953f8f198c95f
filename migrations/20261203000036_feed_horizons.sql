-- Where each tenant's event feed stops being complete: the last fact that aged out of
-- `feed_facts` (its daily partitions are dropped after `EFMS_FEED_RETENTION_DAYS`). A cursor
-- before it would miss facts silently, so the feed answers it 410 Gone instead; the log's own
-- events never age out.
CREATE TABLE feed_horizons (
    tenant_id  uuid        PRIMARY KEY,
    tx_id      xid8        NOT NULL,
    position   bigint      NOT NULL,
    dropped_at timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT ON feed_horizons TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON feed_horizons TO efms_system;
ALTER TABLE feed_horizons ENABLE ROW LEVEL SECURITY;
ALTER TABLE feed_horizons FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON feed_horizons TO efms_app
    USING (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON feed_horizons TO efms_system USING (true) WITH CHECK (true);
