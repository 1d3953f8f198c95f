-- The open version of each resource (the one without `valid_to`), found by its key. A commit closes
-- the open versions of what it changes; looked up through this index one key at a time, that costs
-- what the commit changes, whatever the tenant holds. Unique: a resource has at most one open
-- version (a deletion is the open version of a deleted resource until it is created again).
CREATE UNIQUE INDEX config_resource_versions_open
    ON config_resource_versions (tenant_id, branch, kind, name)
    WHERE valid_to IS NULL;
