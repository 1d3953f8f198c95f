-- Which replica holds which proxy's streams (NFR-OB-004, ADR 0006): every replica keeps a lease
-- here, renewed by its status writer, and counts its own streams per proxy. A replica that dies
-- stops renewing; once its lease has expired any replica reaps it, taking its streams off
-- `proxies.streams`, so its proxies read DISCONNECTED instead of connected to nothing. The lease
-- also carries the address proxies reach the replica at, which bootstraps list.

CREATE TABLE xds_replicas (
    replica_id uuid        PRIMARY KEY,
    advertised text        CHECK (length(advertised) BETWEEN 3 AND 261),
    version    text        NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX xds_replicas_by_expiry ON xds_replicas (expires_at);

-- A replica's open streams per proxy; rows of a replica that has no lease any more are orphans
-- the reaper removes.
CREATE TABLE proxy_replica_streams (
    tenant_id  uuid    NOT NULL,
    node_id    text    NOT NULL,
    replica_id uuid    NOT NULL,
    streams    integer NOT NULL CHECK (streams > 0),
    PRIMARY KEY (tenant_id, node_id, replica_id),
    FOREIGN KEY (tenant_id, node_id) REFERENCES proxies (tenant_id, node_id) ON DELETE CASCADE
);

CREATE INDEX proxy_replica_streams_by_replica ON proxy_replica_streams (replica_id);

-- Stream counts recorded before replicas kept leases belong to no lease: they start from zero,
-- and each replica's status writer records the streams it holds from now on.
UPDATE proxies SET streams = 0, disconnected_at = coalesce(disconnected_at, now()) WHERE streams > 0;

-- The replicas are no tenant's: every role may read them (a bootstrap lists their addresses).
GRANT SELECT ON xds_replicas TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON xds_replicas TO efms_system;

GRANT SELECT ON proxy_replica_streams TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON proxy_replica_streams TO efms_system;
ALTER TABLE proxy_replica_streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE proxy_replica_streams FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON proxy_replica_streams TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON proxy_replica_streams TO efms_system USING (true) WITH CHECK (true);
