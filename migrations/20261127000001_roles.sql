-- Database roles the control plane works through (DB-003).
--
-- The tables belong to whoever runs the migrations. The application never touches tenant data as that
-- owner: every transaction switches to one of these roles, which own nothing, so row-level security
-- applies to them without exception (an owner or superuser would bypass it).
--
--   efms_app     one tenant at a time: each transaction sets `app.tenant_id`, and the policies show and
--                accept only that tenant's rows.
--   efms_system  cross-tenant work that no tenant request may do: the projector that tails the whole
--                log, the system role's tenant registry. It may read events but never write them.
--
-- Roles are cluster-wide, so several databases (tests run one per test, in parallel) may race to create
-- them: a duplicate is not an error here.
DO $$
BEGIN
    CREATE ROLE efms_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

DO $$
BEGIN
    CREATE ROLE efms_system NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The migrating user must be able to `SET ROLE` to both (a superuser already can).
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'efms_app', 'MEMBER') THEN
        EXECUTE format('GRANT efms_app TO %I', current_user);
    END IF;
    IF NOT pg_has_role(current_user, 'efms_system', 'MEMBER') THEN
        EXECUTE format('GRANT efms_system TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO efms_app, efms_system;

-- The tenant a transaction works for; NULL (no rows at all) when it was not set.
CREATE FUNCTION efms_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid $$;

GRANT EXECUTE ON FUNCTION efms_current_tenant() TO efms_app, efms_system;
