-- The time-travel index no longer leads with the kind: with `(tenant_id, branch, kind, …)` it
-- looked as good as `config_resource_versions_open` for finding a resource's open version to a
-- planner without statistics (a table that grew faster than autovacuum analyzed it), which then
-- scanned every open version of the kind for each name. Reads as of a revision of one resource or
-- a page go by the primary key; reads of a whole state as of a revision by this index.
DROP INDEX config_resource_versions_as_of;
CREATE INDEX config_resource_versions_as_of
    ON config_resource_versions (tenant_id, branch, valid_from) INCLUDE (kind, valid_to);
