-- The fleet (ADR 0011): VMs, their join tokens and presence, the containers on them, and their
-- utilisation samples.
--
-- `vms`, `containers` and `container_history` are read models of the VM streams in the log
-- (projection `fleet`, written as efms_system). `vm_join_tokens` is written by the API (a tenant's
-- admin or operator), `vm_presence` and the samples by the agents' streams (efms_system): they are
-- not history, so they are not in the log. Samples are range-partitioned by day, so retention drops
-- whole partitions instead of deleting rows.

CREATE TABLE vms (
    tenant_id     uuid        NOT NULL,
    name          text        NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    labels        jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(labels) = 'object'),
    region        text,
    zone          text,
    state         text        NOT NULL CHECK (state IN ('down', 'ready', 'docker_unreachable', 'removed')),
    state_reason  text        NOT NULL DEFAULT '',
    state_since   timestamptz NOT NULL,
    facts         jsonb,
    registered_at timestamptz NOT NULL,
    registered_by text        NOT NULL,
    removed_at    timestamptz,
    removed_by    text,
    version       bigint      NOT NULL CHECK (version >= 1),
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE containers (
    tenant_id     uuid        NOT NULL,
    container_id  text        NOT NULL CHECK (container_id ~ '^[0-9a-f]{64}$'),
    vm_name       text        NOT NULL,
    name          text        NOT NULL,
    image         text        NOT NULL,
    image_id      text        NOT NULL DEFAULT '',
    node_id       text,
    state         text        NOT NULL,
    health        text        NOT NULL,
    restart_count bigint      NOT NULL DEFAULT 0,
    exit_code     bigint,
    oom_killed    boolean     NOT NULL DEFAULT false,
    created_at    timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    limits        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ports         jsonb       NOT NULL DEFAULT '[]'::jsonb,
    labels        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    first_seen_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    gone_at       timestamptz,
    gone_reason   text,
    -- The whole container as the log says it is now (the columns above are for filtering).
    document      jsonb       NOT NULL,
    PRIMARY KEY (tenant_id, container_id)
);

CREATE INDEX containers_by_vm ON containers (tenant_id, vm_name);
CREATE INDEX containers_by_node ON containers (tenant_id, node_id) WHERE node_id IS NOT NULL;

-- Every change of a container, in its VM stream's order: its events page and `?at=`.
CREATE TABLE container_history (
    tenant_id    uuid        NOT NULL,
    container_id text        NOT NULL,
    vm_name      text        NOT NULL,
    seq          bigint      NOT NULL,
    recorded_at  timestamptz NOT NULL,
    -- `observed`, `gone`, or a lifecycle event's kind (`die`, `oom`, ...).
    change       text        NOT NULL,
    -- The engine's time for a lifecycle event; else when it was recorded.
    at           timestamptz NOT NULL,
    exit_code    bigint,
    signal       text,
    health       text,
    reason       text,
    -- The container as this change left it.
    container    jsonb       NOT NULL,
    -- `seq` is a place in the VM's stream: one container id reported by two VMs (a cloned VM)
    -- makes two histories, never a collision.
    PRIMARY KEY (tenant_id, vm_name, container_id, seq)
);

CREATE INDEX container_history_by_container ON container_history (tenant_id, container_id, recorded_at);

-- Join tokens: only a SHA-256 digest is kept; the token is shown once, when issued.
CREATE TABLE vm_join_tokens (
    tenant_id  uuid        NOT NULL,
    vm_name    text        NOT NULL,
    token_id   uuid        NOT NULL,
    digest     bytea       NOT NULL UNIQUE CHECK (length(digest) = 32),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    issued_by  text        NOT NULL,
    revoked_at timestamptz,
    revoked_by text,
    PRIMARY KEY (tenant_id, token_id),
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);

-- At most one live token per VM.
CREATE UNIQUE INDEX vm_join_tokens_live ON vm_join_tokens (tenant_id, vm_name) WHERE revoked_at IS NULL;

-- What the agents' streams last said: heartbeat, engine, utilisation now, and where each agent
-- process's reports stand (its epoch and the last seq stored), so that a reconnection to any replica
-- resumes exactly.
CREATE TABLE vm_presence (
    tenant_id         uuid        NOT NULL,
    vm_name           text        NOT NULL,
    connected         boolean     NOT NULL DEFAULT false,
    connected_at      timestamptz,
    disconnected_at   timestamptz,
    last_heartbeat_at timestamptz,
    engine_reachable  boolean,
    engine_error      text,
    usage             jsonb,
    epoch             text,
    acked_seq         bigint      NOT NULL DEFAULT 0,
    -- The stream that last connected: only its end marks the VM disconnected.
    stream_id         uuid,
    last_event_nanos  bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, vm_name)
);

CREATE INDEX vm_presence_by_heartbeat ON vm_presence (last_heartbeat_at);

CREATE TABLE vm_samples (
    tenant_id                   uuid             NOT NULL,
    vm_name                     text             NOT NULL,
    sampled_at                  timestamptz      NOT NULL,
    cpu_percent                 real             NOT NULL,
    load_1m                     real             NOT NULL,
    load_5m                     real             NOT NULL,
    load_15m                    real             NOT NULL,
    memory_used_bytes           bigint           NOT NULL,
    memory_total_bytes          bigint           NOT NULL,
    network_rx_bytes_per_second double precision NOT NULL,
    network_tx_bytes_per_second double precision NOT NULL,
    disks                       jsonb            NOT NULL DEFAULT '[]'::jsonb
) PARTITION BY RANGE (sampled_at);

CREATE INDEX vm_samples_by_vm ON vm_samples (tenant_id, vm_name, sampled_at);

CREATE TABLE container_samples (
    tenant_id          uuid        NOT NULL,
    container_id       text        NOT NULL,
    vm_name            text        NOT NULL,
    sampled_at         timestamptz NOT NULL,
    cpu_percent        real        NOT NULL,
    memory_used_bytes  bigint      NOT NULL,
    memory_limit_bytes bigint,
    pids               bigint
) PARTITION BY RANGE (sampled_at);

CREATE INDEX container_samples_by_container ON container_samples (tenant_id, container_id, sampled_at);

-- Creates the daily partitions of the sample tables from `keep_days` ago to `ahead_days` ahead and
-- drops those that ended more than `keep_days` ago. Runs as the owner (efms_system may not create
-- or drop tables), and touches nothing but the sample partitions.
CREATE FUNCTION efms_fleet_sample_partitions(keep_days integer, ahead_days integer)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    base  text;
    day   date;
    part  record;
    done  integer := 0;
BEGIN
    IF keep_days < 1 OR ahead_days < 1 OR keep_days > 3660 OR ahead_days > 31 THEN
        RAISE EXCEPTION 'keep_days must be 1 to 3660 and ahead_days 1 to 31';
    END IF;
    FOREACH base IN ARRAY ARRAY['vm_samples', 'container_samples'] LOOP
        FOR day IN SELECT generate_series(current_date - keep_days, current_date + ahead_days, '1 day')::date LOOP
            IF to_regclass(format('%s_%s', base, to_char(day, 'YYYYMMDD'))) IS NULL THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               format('%s_%s', base, to_char(day, 'YYYYMMDD')), base, day, day + 1);
                done := done + 1;
            END IF;
        END LOOP;
        FOR part IN
            SELECT c.relname
            FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            JOIN pg_class p ON p.oid = i.inhparent
            WHERE p.relname = base AND c.relname ~ ('^' || base || '_[0-9]{8}$')
              AND to_date(right(c.relname, 8), 'YYYYMMDD') < current_date - keep_days
        LOOP
            EXECUTE format('DROP TABLE %I', part.relname);
            done := done + 1;
        END LOOP;
    END LOOP;
    RETURN done;
END
$$;

REVOKE ALL ON FUNCTION efms_fleet_sample_partitions(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION efms_fleet_sample_partitions(integer, integer) TO efms_system;

SELECT efms_fleet_sample_partitions(7, 2);

-- Leases: background work that one replica must do (sweeps, retention) is claimed here, for a
-- while, by one holder; another replica takes it over once it expires. Not tenant data.
CREATE TABLE leases (
    name       text        PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 100),
    holder     uuid        NOT NULL,
    expires_at timestamptz NOT NULL
);

GRANT SELECT, INSERT, UPDATE ON leases TO efms_system;

DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['vms', 'containers', 'container_history', 'vm_presence',
                               'vm_samples', 'container_samples'] LOOP
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

GRANT SELECT, INSERT, UPDATE ON vm_join_tokens TO efms_app;
GRANT SELECT ON vm_join_tokens TO efms_system;
ALTER TABLE vm_join_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE vm_join_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON vm_join_tokens TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_read ON vm_join_tokens FOR SELECT TO efms_system USING (true);
