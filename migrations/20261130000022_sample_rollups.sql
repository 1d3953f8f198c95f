-- One-minute rollups of the fleet's utilisation samples, kept far longer than the raw samples
-- (90 days by default against 7): per VM and per container, how many samples a minute had, their
-- sums (so that a rollup of rollups averages right) and maxima. Rolled up by the fleet's upkeep;
-- `sample_rollups` says up to where, so reads join the rollups before that mark with the raw
-- samples after it.

CREATE TABLE vm_samples_1m (
    tenant_id                       uuid             NOT NULL,
    vm_name                         text             NOT NULL,
    minute                          timestamptz      NOT NULL,
    samples                         integer          NOT NULL,
    cpu_percent_sum                 double precision NOT NULL,
    cpu_percent_max                 real             NOT NULL,
    load_1m_sum                     double precision NOT NULL,
    memory_used_bytes_sum           double precision NOT NULL,
    memory_used_bytes_max           bigint           NOT NULL,
    network_rx_bytes_per_second_sum double precision NOT NULL,
    network_tx_bytes_per_second_sum double precision NOT NULL,
    PRIMARY KEY (tenant_id, vm_name, minute)
) PARTITION BY RANGE (minute);

CREATE TABLE container_samples_1m (
    tenant_id             uuid             NOT NULL,
    container_id          text             NOT NULL,
    vm_name               text             NOT NULL,
    minute                timestamptz      NOT NULL,
    samples               integer          NOT NULL,
    cpu_percent_sum       double precision NOT NULL,
    cpu_percent_max       real             NOT NULL,
    memory_used_bytes_sum double precision NOT NULL,
    memory_used_bytes_max bigint           NOT NULL,
    PRIMARY KEY (tenant_id, container_id, minute)
) PARTITION BY RANGE (minute);

-- The rollup reads the raw samples by time alone: a small index in time order (BRIN suits rows
-- that arrive in time order).
CREATE INDEX vm_samples_by_time ON vm_samples USING brin (sampled_at);
CREATE INDEX container_samples_by_time ON container_samples USING brin (sampled_at);

-- Up to where (excluded) each table's samples are rolled up. Not tenant data.
CREATE TABLE sample_rollups (
    name         text        PRIMARY KEY,
    rolled_up_to timestamptz NOT NULL
);

-- The daily partitions of the tables `bases` (partitioned by range of a timestamp, partitions
-- named `<base>_YYYYMMDD`): created from `keep_days` ago to `ahead_days` ahead, dropped once they
-- ended more than `keep_days` ago. Runs as the owner and touches only those partitions.
CREATE FUNCTION efms_fleet_daily_partitions(bases text[], keep_days integer, ahead_days integer)
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
        IF base NOT IN ('vm_samples', 'container_samples', 'vm_samples_1m', 'container_samples_1m') THEN
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

REVOKE ALL ON FUNCTION efms_fleet_daily_partitions(text[], integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION efms_fleet_daily_partitions(text[], integer, integer) TO efms_system;

-- The raw samples' upkeep is now the same function.
CREATE OR REPLACE FUNCTION efms_fleet_sample_partitions(keep_days integer, ahead_days integer)
    RETURNS integer
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT efms_fleet_daily_partitions(ARRAY['vm_samples', 'container_samples'], keep_days, ahead_days)
$$;

SELECT efms_fleet_daily_partitions(ARRAY['vm_samples_1m', 'container_samples_1m'], 90, 2);

GRANT SELECT ON sample_rollups TO efms_app;
GRANT SELECT, INSERT, UPDATE ON sample_rollups TO efms_system;

DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['vm_samples_1m', 'container_samples_1m'] LOOP
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
