-- A tenant's deletion and purge (issue: tenants' lifecycle).
--
-- Deleting a tenant is an event of its stream (TenantDeleted): the tenant is refused everything
-- from then on and kept whole for a grace period, within which TenantRestored undoes it. Once the
-- grace period is over, efms_purge_tenant() removes every row of the tenant from every table,
-- events and audit rows included: the one path through the append-only triggers, taken only for a
-- tenant whose deletion is recorded. What remains is one row of tenant_deletions.

ALTER TABLE tenants
    ADD COLUMN deleted_at timestamptz,
    ADD COLUMN deleted_by text,
    ADD COLUMN purge_after timestamptz,
    ADD CONSTRAINT tenants_deletion_whole CHECK (
        (deleted_at IS NULL) = (deleted_by IS NULL)
        AND (deleted_at IS NULL) = (purge_after IS NULL));

-- What remains of a purged tenant: its slug (never given to another tenant), who deleted it and
-- when, when it was purged and how many rows of each table went. No name, no data.
CREATE TABLE tenant_deletions (
    tenant_id   uuid        PRIMARY KEY,
    slug        text        NOT NULL UNIQUE,
    deleted_at  timestamptz NOT NULL,
    deleted_by  text        NOT NULL,
    purged_at   timestamptz NOT NULL DEFAULT now(),
    purged_rows jsonb       NOT NULL DEFAULT '{}'::jsonb
);
GRANT SELECT ON tenant_deletions TO efms_system;

-- The append-only tables allow a DELETE only of the tenant being purged, inside the purge.
CREATE FUNCTION efms_purging(tenant uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT current_setting('efms.purging_tenant', true) = tenant::text
       AND EXISTS (SELECT 1 FROM tenant_deletions d WHERE d.tenant_id = tenant)
$$;

CREATE FUNCTION events_are_immutable_but_purged() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND efms_purging(OLD.tenant_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events are immutable: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE FUNCTION request_audit_is_append_only_but_purged() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND efms_purging(OLD.tenant_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % refused', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

DROP TRIGGER events_no_update_or_delete ON events;
CREATE TRIGGER events_no_update_or_delete BEFORE DELETE OR UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable_but_purged();
DROP TRIGGER request_audit_no_update_or_delete ON request_audit;
CREATE TRIGGER request_audit_no_update_or_delete BEFORE DELETE OR UPDATE ON request_audit
    FOR EACH ROW EXECUTE FUNCTION request_audit_is_append_only_but_purged();

-- Purges the deleted tenant `tenant` whose grace period is over: every row of it in every table
-- with a `tenant_id` (the tables that refer to others first, so that no cascade hides a count),
-- the grants others gave it, then its registry row; records what went in tenant_deletions and
-- answers it. Refused for a tenant that is not deleted, or whose grace period is not over.
CREATE FUNCTION efms_purge_tenant(tenant uuid) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    registry record;
    purged   jsonb := '{}'::jsonb;
    tbl      text;
    n        bigint;
BEGIN
    -- Row-level security is forced on the tenant tables: only an owner that bypasses it reaches
    -- every row, and a purge must not pass for done having deleted nothing.
    IF NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'the purge runs as %, which does not bypass row-level security', current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT slug, deleted_at, deleted_by, purge_after INTO registry
    FROM tenants WHERE tenant_id = tenant FOR UPDATE;
    IF NOT FOUND OR registry.deleted_at IS NULL THEN
        RAISE EXCEPTION 'tenant % is not deleted: it cannot be purged', tenant
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF registry.purge_after > now() THEN
        RAISE EXCEPTION 'tenant % is in its grace period until %', registry.slug, registry.purge_after
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO tenant_deletions (tenant_id, slug, deleted_at, deleted_by)
    VALUES (tenant, registry.slug, registry.deleted_at, registry.deleted_by);
    PERFORM set_config('efms.purging_tenant', tenant::text, true);
    FOR tbl IN
        SELECT c.relname
        FROM pg_class c
        JOIN pg_namespace ns ON ns.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
        WHERE ns.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname NOT IN ('tenants', 'tenant_deletions')
        ORDER BY EXISTS (SELECT 1 FROM pg_constraint f WHERE f.conrelid = c.oid AND f.contype = 'f') DESC,
                 c.relname
    LOOP
        EXECUTE format('DELETE FROM %I WHERE tenant_id = $1', tbl) USING tenant;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            purged := purged || jsonb_build_object(tbl, n);
        END IF;
    END LOOP;
    -- What other tenants shared with it: grants are rows, not events, on either side.
    DELETE FROM resource_grants WHERE grantee_id = tenant;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        purged := jsonb_set(purged, '{resource_grants}',
                            to_jsonb(coalesce((purged ->> 'resource_grants')::bigint, 0) + n));
    END IF;
    DELETE FROM tenants WHERE tenant_id = tenant;
    purged := purged || jsonb_build_object('tenants', 1);
    UPDATE tenant_deletions SET purged_rows = purged WHERE tenant_id = tenant;
    RETURN purged;
END
$$;
REVOKE ALL ON FUNCTION efms_purge_tenant(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION efms_purge_tenant(uuid) TO efms_system;

-- Whether the tenant `tenant` is live (exists and is not deleted), for a tenant's transaction to
-- leave out what a deleted tenant shares with it; says nothing more of any tenant.
CREATE FUNCTION efms_tenant_is_live(tenant uuid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = tenant AND deleted_at IS NULL)
$$;
GRANT EXECUTE ON FUNCTION efms_tenant_is_live(uuid) TO efms_app, efms_system;
