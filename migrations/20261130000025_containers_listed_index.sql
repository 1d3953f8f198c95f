-- Container lists are read in (VM, name, id) order a page at a time: with an index in that order a
-- page of 1,000 reads about 1,000 rows instead of sorting all of the tenant's containers. It also
-- serves what `containers_by_vm` served (a VM's containers), which it replaces.
CREATE INDEX containers_listed ON containers (tenant_id, vm_name, name, container_id);
DROP INDEX containers_by_vm;
