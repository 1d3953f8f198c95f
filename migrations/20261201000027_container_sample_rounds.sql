-- Container usage samples as one row per VM and round instead of one per container: an agent
-- reports its containers' usage together every interval, so the round is the natural row. A
-- thousand VMs of twenty containers then add a hundred rows a second instead of two thousand,
-- each with one index entry instead of twenty, and the ids take 32 bytes (bytea) instead of 64
-- characters. The columns are parallel arrays: element i of each is the i-th container's.
-- Samples already rolled up (before the mark in `sample_rollups`) are read by nothing else and are
-- dropped with the old table; those after it, a minute or two of them, are carried over, grouped
-- by their VM and time.

ALTER TABLE container_samples RENAME TO container_samples_by_row;
ALTER INDEX container_samples_by_container RENAME TO container_samples_by_row_container;
ALTER INDEX container_samples_by_time RENAME TO container_samples_by_row_time;

DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'container_samples_by_row'
    LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', part.relname,
                       replace(part.relname, 'container_samples_', 'container_samples_by_row_'));
    END LOOP;
END
$$;

CREATE TABLE container_samples (
    tenant_id          uuid        NOT NULL,
    vm_name            text        NOT NULL,
    sampled_at         timestamptz NOT NULL,
    container_ids      bytea[]     NOT NULL,
    cpu_percent        real[]      NOT NULL,
    memory_used_bytes  bigint[]    NOT NULL,
    memory_limit_bytes bigint[]    NOT NULL,
    pids               bigint[]    NOT NULL,
    CHECK (array_ndims(container_ids) = 1 AND array_position(container_ids, NULL) IS NULL
           AND array_position(cpu_percent, NULL) IS NULL
           AND array_position(memory_used_bytes, NULL) IS NULL),
    CHECK (cardinality(container_ids) = cardinality(cpu_percent)
           AND cardinality(container_ids) = cardinality(memory_used_bytes)
           AND cardinality(container_ids) = cardinality(memory_limit_bytes)
           AND cardinality(container_ids) = cardinality(pids))
) PARTITION BY RANGE (sampled_at);

CREATE INDEX container_samples_by_vm ON container_samples (tenant_id, vm_name, sampled_at);
CREATE INDEX container_samples_by_time ON container_samples USING brin (sampled_at);

-- Partitions for every day the old table holds, and the days ahead.
SELECT efms_fleet_daily_partitions(
    ARRAY['container_samples'],
    greatest(7, coalesce(current_date - (SELECT min(sampled_at) FROM container_samples_by_row)::date, 0) + 1),
    2);

INSERT INTO container_samples (tenant_id, vm_name, sampled_at, container_ids, cpu_percent,
                               memory_used_bytes, memory_limit_bytes, pids)
SELECT tenant_id, vm_name, sampled_at,
       array_agg(decode(container_id, 'hex') ORDER BY container_id),
       array_agg(cpu_percent ORDER BY container_id),
       array_agg(memory_used_bytes ORDER BY container_id),
       array_agg(memory_limit_bytes ORDER BY container_id),
       array_agg(pids ORDER BY container_id)
FROM container_samples_by_row
WHERE container_id ~ '^[0-9a-f]{64}$'
  AND sampled_at >= coalesce((SELECT rolled_up_to FROM sample_rollups WHERE name = 'container'),
                             '-infinity')
GROUP BY tenant_id, vm_name, sampled_at;

DROP TABLE container_samples_by_row;

GRANT SELECT ON container_samples TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON container_samples TO efms_system;
ALTER TABLE container_samples ENABLE ROW LEVEL SECURITY;
ALTER TABLE container_samples FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON container_samples TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON container_samples TO efms_system USING (true) WITH CHECK (true);
