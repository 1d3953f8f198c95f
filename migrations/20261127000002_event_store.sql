-- The event log: every change to every aggregate, immutable, in commit order (docs/adr/0001..0003).

-- One sequence for the whole log. A partitioned table cannot own an identity column on PostgreSQL 15,
-- so the position comes from this sequence through the parent's default.
CREATE SEQUENCE event_global_position AS bigint;

CREATE TABLE events (
    -- Stream key: the tenant, then the aggregate's type and id. With `sequence` it is the primary key, so
    -- two writers that both append sequence N to one stream cannot both succeed (optimistic concurrency).
    tenant_id       uuid        NOT NULL,
    aggregate_type  text        NOT NULL CHECK (aggregate_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    aggregate_id    text        NOT NULL CHECK (length(aggregate_id) BETWEEN 1 AND 512),
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    event_type      text        NOT NULL CHECK (length(event_type) BETWEEN 1 AND 200),
    event_version   text        NOT NULL CHECK (length(event_version) BETWEEN 1 AND 50),
    payload         jsonb       NOT NULL,
    -- cqrs-es metadata: a flat object of strings (actor, request id, commit message, ...).
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    event_id        uuid        NOT NULL,
    actor           text        NOT NULL CHECK (length(actor) BETWEEN 1 AND 320),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    global_position bigint      NOT NULL DEFAULT nextval('event_global_position'),
    -- The writing transaction. Readers order by (tx_id, global_position) and only read rows of
    -- transactions older than every running one, so a late commit is never skipped (ADR 0002).
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- No further unique indexes: positions come from one sequence and event ids are fresh UUIDv7s,
    -- unique by construction; every index here is paid by every commit (docs/benchmarks.md).
    PRIMARY KEY (tenant_id, aggregate_type, aggregate_id, sequence)
) PARTITION BY HASH (tenant_id);

ALTER SEQUENCE event_global_position OWNED BY events.global_position;

-- Sixteen hash partitions: tenants spread evenly, a stream always lives in one partition (ADR 0001).
DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format(
            'CREATE TABLE events_p%s PARTITION OF events FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
            lpad(i::text, 2, '0'), i);
    END LOOP;
END
$$;

-- The commit-ordered tail reads by this key.
CREATE INDEX events_commit_order ON events (tx_id, global_position);

-- Events are facts: nobody rewrites or removes them, not even the table's owner through a partition.
CREATE FUNCTION events_are_immutable() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

-- Aggregate snapshots (cqrs-es snapshot store): a cache of a stream's state at a sequence.
CREATE TABLE snapshots (
    tenant_id        uuid        NOT NULL,
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    last_sequence    bigint      NOT NULL CHECK (last_sequence >= 1),
    snapshot_version bigint      NOT NULL CHECK (snapshot_version >= 1),
    payload          jsonb       NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, aggregate_type, aggregate_id)
);

-- Where each projection has read the log up to. Not tenant data: one row per projection.
CREATE TABLE projection_checkpoints (
    projection      text        PRIMARY KEY CHECK (length(projection) BETWEEN 1 AND 100),
    tx_id           xid8        NOT NULL DEFAULT '0'::xid8,
    global_position bigint      NOT NULL DEFAULT 0 CHECK (global_position >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Audit trail (DB-004, NFR-SE-005): one row per commit and stream, written by a trigger on the log, so
-- nothing that reaches the log escapes it, whichever code path wrote it.
CREATE TABLE audit_log (
    audit_id        bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id       uuid        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    actor           text        NOT NULL,
    db_role         text        NOT NULL DEFAULT current_user,
    client_addr     inet        DEFAULT inet_client_addr(),
    operation       text        NOT NULL CHECK (operation IN ('append')),
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    first_sequence  bigint      NOT NULL,
    last_sequence   bigint      NOT NULL CHECK (last_sequence >= first_sequence),
    event_types     text[]      NOT NULL,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- One index serves uniqueness and "a tenant's trail in order" (ids grow with time).
    PRIMARY KEY (tenant_id, audit_id)
);

-- Runs as the table owner so that the application roles need no right on audit_log at all.
--
-- The trigger does not NOTIFY: PostgreSQL serialises committing transactions that notify on one
-- database-wide lock, which took the write throughput of 16 writers down to that of one. Writers
-- ring the readers' doorbell after they commit instead (efms_commands::CommitBell).
CREATE FUNCTION events_after_append() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO audit_log (tenant_id, actor, db_role, operation, aggregate_type, aggregate_id,
                           first_sequence, last_sequence, event_types)
    SELECT n.tenant_id, min(n.actor), session_user || '/' || current_setting('role'), 'append',
           n.aggregate_type, n.aggregate_id, min(n.sequence), max(n.sequence),
           array_agg(n.event_type ORDER BY n.sequence)
    FROM new_events n
    GROUP BY n.tenant_id, n.aggregate_type, n.aggregate_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_audit
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_after_append();

REVOKE ALL ON FUNCTION events_after_append() FROM PUBLIC;
