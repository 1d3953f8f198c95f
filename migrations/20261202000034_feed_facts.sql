-- The tenant event feed's facts that are not in the log (ADR 0014): each is written by a trigger
-- in the transaction of the state change it reports, so its `tx_id` orders it with the log's
-- events, and a reader below the oldest running transaction never skips one that commits late.
--
-- - `proxy.status`: a proxy refused configuration (NACK, with Envoy's words), or accepted it
--   again after a refusal; from `proxy_transitions`, as the status writer records them.
-- - `job.finished`: a bulk job succeeded or failed; from `bulk_jobs`.

CREATE TABLE feed_facts (
    tenant_id uuid        NOT NULL,
    tx_id     xid8        NOT NULL DEFAULT pg_current_xact_id(),
    position  bigint      GENERATED ALWAYS AS IDENTITY,
    type      text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    payload   jsonb       NOT NULL,
    PRIMARY KEY (tenant_id, tx_id, position, at)
) PARTITION BY RANGE (at);

-- Daily partitions, kept as long as the fleet's upkeep is told.
CREATE OR REPLACE FUNCTION efms_fleet_daily_partitions(bases text[], keep_days integer, ahead_days integer)
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
    FOREACH base IN ARRAY bases LOOP
        IF base NOT IN ('vm_samples', 'container_samples', 'vm_samples_1m', 'container_samples_1m',
                        'proxy_stats', 'proxy_stats_1m', 'feed_facts') THEN
            RAISE EXCEPTION 'not a sample table: %', base;
        END IF;
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

SELECT efms_fleet_daily_partitions(ARRAY['feed_facts'], 1, 2);

GRANT SELECT, INSERT ON feed_facts TO efms_app;
GRANT SELECT, INSERT, DELETE ON feed_facts TO efms_system;
ALTER TABLE feed_facts ENABLE ROW LEVEL SECURITY;
ALTER TABLE feed_facts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON feed_facts TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON feed_facts TO efms_system USING (true) WITH CHECK (true);

-- A refusal, or the first acceptance after one, of each proxy and resource type.
CREATE FUNCTION efms_proxy_status_facts() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO feed_facts (tenant_id, type, at, payload)
    SELECT n.tenant_id, 'proxy.status', n.at,
           jsonb_strip_nulls(jsonb_build_object(
               'node_id', n.node_id, 'type_url', n.type_url, 'outcome', n.outcome,
               'version', n.version, 'revision', n.revision, 'error', n.error_detail))
    FROM new_rows n
    WHERE n.outcome = 'nacked'
       OR (SELECT p.outcome FROM proxy_transitions p
           WHERE p.tenant_id = n.tenant_id AND p.node_id = n.node_id AND p.type_url = n.type_url
             AND (p.at, p.seq) < (n.at, n.seq)
           ORDER BY p.at DESC, p.seq DESC LIMIT 1) = 'nacked'
    ORDER BY n.at, n.seq;
    RETURN NULL;
END
$$;

CREATE TRIGGER proxy_status_facts AFTER INSERT ON proxy_transitions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION efms_proxy_status_facts();

CREATE FUNCTION efms_job_finished_facts() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO feed_facts (tenant_id, type, payload)
    VALUES (NEW.tenant_id, 'job.finished', jsonb_strip_nulls(jsonb_build_object(
        'job_id', NEW.job_id, 'kind', 'bulk', 'branch', NEW.branch, 'actor', NEW.actor,
        'state', NEW.state, 'total', NEW.total, 'applied', NEW.applied,
        'revision', NEW.revision, 'problem', NEW.problem)));
    RETURN NULL;
END
$$;

CREATE TRIGGER job_finished_facts AFTER UPDATE OF state ON bulk_jobs
    FOR EACH ROW WHEN (NEW.state IN ('succeeded', 'failed') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION efms_job_finished_facts();
