-- The proxies' own statistics, as their metrics service sinks report them: one row per series
-- (tenant, group, scope, name, detail) and time bucket, written once per replica when the bucket
-- ends (a series reported to two replicas has two rows for that bucket; reads add them up).
-- Counters and histograms are sums of what the proxies reported in the bucket; gauges the sum over
-- proxies of each one's latest value. `latency_slots` holds the request latency histogram as
-- counts per bucket of fixed bounds (Envoy's default ones, listed in the code). Raw rows are kept a
-- day by default and rolled up by the minute into `proxy_stats_1m`, kept thirty days.
-- Written by the gRPC side (efms_system), read by the API (efms_app, its tenant only).

CREATE TABLE proxy_stats (
    tenant_id             uuid             NOT NULL,
    group_name            text             NOT NULL,
    scope                 text             NOT NULL CHECK (scope IN ('cluster', 'listener', 'http', 'vhost', 'route')),
    name                  text             NOT NULL,
    detail                text             NOT NULL DEFAULT '',
    bucket                timestamptz      NOT NULL,
    seconds               integer          NOT NULL CHECK (seconds > 0),
    proxies               integer          NOT NULL,
    requests              bigint           NOT NULL,
    responses             bigint[]         NOT NULL CHECK (cardinality(responses) = 4),
    retries               bigint           NOT NULL,
    connections_new       bigint           NOT NULL,
    bytes_in              bigint           NOT NULL,
    bytes_out             bigint           NOT NULL,
    connections_active    bigint,
    circuit_breakers_open bigint,
    endpoints_healthy     bigint,
    endpoints_total       bigint,
    latency_count         bigint           NOT NULL,
    latency_sum_ms        double precision NOT NULL,
    latency_slots         bigint[]         NOT NULL CHECK (cardinality(latency_slots) = 20)
) PARTITION BY RANGE (bucket);

CREATE INDEX proxy_stats_by_series ON proxy_stats (tenant_id, scope, name, bucket);
CREATE INDEX proxy_stats_by_time ON proxy_stats USING brin (bucket);

CREATE TABLE proxy_stats_1m (LIKE proxy_stats INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (bucket);
CREATE INDEX proxy_stats_1m_by_series ON proxy_stats_1m (tenant_id, scope, name, bucket);

-- The daily partitions' upkeep now covers the statistics too.
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
                        'proxy_stats', 'proxy_stats_1m') THEN
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

SELECT efms_fleet_daily_partitions(ARRAY['proxy_stats'], 1, 2);
SELECT efms_fleet_daily_partitions(ARRAY['proxy_stats_1m'], 30, 2);

DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['proxy_stats', 'proxy_stats_1m'] LOOP
        EXECUTE format('GRANT SELECT ON %I TO efms_app', tbl);
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON %I TO efms_system', tbl);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO efms_app '
            'USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant())', tbl);
        EXECUTE format('CREATE POLICY system_all ON %I TO efms_system USING (true) WITH CHECK (true)', tbl);
    END LOOP;
END
$$;
