-- A proxy's history (DB-005) by day, so that efms drops it by age as it does samples: every ACK
-- and NACK of every proxy adds a row, which no installation can keep for ever.
--
-- Expand and contract (docs/operations.md): the table as it was is renamed and kept whole, never
-- read under a lock or rewritten; new rows go to a table partitioned by `at`, whose `seq` goes on
-- from the old one's. `proxy_history` reads both, and is what every reader of the history uses.
-- The old table is dropped by `efms_proxy_history_retention` once everything in it is older than
-- the retention, and the view then reads the partitioned table alone.

ALTER TABLE proxy_transitions RENAME TO proxy_transitions_before;
ALTER INDEX proxy_transitions_pkey RENAME TO proxy_transitions_before_pkey;
ALTER INDEX proxy_transitions_by_node RENAME TO proxy_transitions_before_by_node;
DROP TRIGGER proxy_status_facts ON proxy_transitions_before;
REVOKE INSERT, UPDATE ON proxy_transitions_before FROM efms_system;

CREATE TABLE proxy_transitions (
    tenant_id    uuid        NOT NULL,
    node_id      text        NOT NULL,
    type_url     text        NOT NULL,
    at           timestamptz NOT NULL,
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    outcome      text        NOT NULL CONSTRAINT proxy_transitions_outcome_check
                             CHECK (outcome IN ('acked', 'nacked')),
    version      text        NOT NULL,
    revision     bigint,
    error_detail text,
    PRIMARY KEY (tenant_id, node_id, type_url, at, seq),
    CONSTRAINT proxy_transitions_check CHECK ((outcome = 'nacked') = (error_detail IS NOT NULL))
) PARTITION BY RANGE (at);

-- A proxy's history, newest first.
CREATE INDEX proxy_transitions_by_node ON proxy_transitions (tenant_id, node_id, seq);

-- The history's order goes on across the two tables.
SELECT setval(pg_get_serial_sequence('proxy_transitions', 'seq'),
              coalesce(pg_sequence_last_value(pg_get_serial_sequence('proxy_transitions_before', 'seq')), 0) + 1,
              false);

GRANT SELECT ON proxy_transitions TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON proxy_transitions TO efms_system;
ALTER TABLE proxy_transitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE proxy_transitions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON proxy_transitions TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON proxy_transitions TO efms_system USING (true) WITH CHECK (true);

-- The tables kept whole at an upgrade until everything in them is past its retention: the
-- newest moment each can hold.
CREATE TABLE retired_tables (
    name      text        PRIMARY KEY,
    newest_at timestamptz NOT NULL
);
INSERT INTO retired_tables VALUES ('proxy_transitions_before', now());

-- Both tables as one, read with the reader's own rights (and so its tenant's rows alone).
CREATE VIEW proxy_history WITH (security_invoker = true) AS
    SELECT tenant_id, node_id, type_url, at, seq, outcome, version, revision, error_detail
    FROM proxy_transitions
    UNION ALL
    SELECT tenant_id, node_id, type_url, at, seq, outcome, version, revision, error_detail
    FROM proxy_transitions_before;
GRANT SELECT ON proxy_history TO efms_app, efms_system;

-- The previous outcome of a proxy's resource type may be in either table.
CREATE OR REPLACE FUNCTION efms_proxy_status_facts() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO feed_facts (tenant_id, type, at, payload)
    SELECT n.tenant_id, 'proxy.status', n.at,
           jsonb_strip_nulls(jsonb_build_object(
               'node_id', n.node_id, 'type_url', n.type_url, 'outcome', n.outcome,
               'version', n.version, 'revision', n.revision, 'error', n.error_detail))
    FROM new_rows n
    WHERE n.outcome = 'nacked'
       OR (SELECT p.outcome FROM proxy_history p
           WHERE p.tenant_id = n.tenant_id AND p.node_id = n.node_id AND p.type_url = n.type_url
             AND (p.at, p.seq) < (n.at, n.seq)
           ORDER BY p.at DESC, p.seq DESC LIMIT 1) = 'nacked'
    ORDER BY n.at, n.seq;
    RETURN NULL;
END
$$;

CREATE TRIGGER proxy_status_facts AFTER INSERT ON proxy_transitions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION efms_proxy_status_facts();

-- Creates the history's partitions from yesterday to two days ahead (its rows are written at
-- the time they happen, so no earlier day is ever written), drops those older than `keep_days`,
-- and drops the table kept from before the partitioning once all of it is that old; how many
-- tables were created or dropped.
CREATE FUNCTION efms_proxy_history_retention(keep_days integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    day  date;
    part record;
    done integer := 0;
BEGIN
    IF keep_days < 1 OR keep_days > 3660 THEN
        RAISE EXCEPTION 'keep_days must be 1 to 3660';
    END IF;
    FOR day IN SELECT generate_series(current_date - 1, current_date + 2, '1 day')::date LOOP
        IF to_regclass(format('proxy_transitions_%s', to_char(day, 'YYYYMMDD'))) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF proxy_transitions FOR VALUES FROM (%L) TO (%L)',
                           format('proxy_transitions_%s', to_char(day, 'YYYYMMDD')), day, day + 1);
            done := done + 1;
        END IF;
    END LOOP;
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'proxy_transitions'::regclass AND c.relname ~ '^proxy_transitions_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < current_date - keep_days
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        done := done + 1;
    END LOOP;
    IF (SELECT newest_at FROM retired_tables WHERE name = 'proxy_transitions_before')
           < (current_date - keep_days)::timestamptz THEN
        CREATE OR REPLACE VIEW proxy_history WITH (security_invoker = true) AS
            SELECT tenant_id, node_id, type_url, at, seq, outcome, version, revision, error_detail
            FROM proxy_transitions;
        DROP TABLE proxy_transitions_before;
        DELETE FROM retired_tables WHERE name = 'proxy_transitions_before';
        done := done + 1;
    END IF;
    RETURN done;
END
$$;
REVOKE ALL ON FUNCTION efms_proxy_history_retention(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION efms_proxy_history_retention(integer) TO efms_system;

SELECT efms_proxy_history_retention(90);
