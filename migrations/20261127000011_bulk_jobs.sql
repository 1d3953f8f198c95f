-- Large bulk requests run as jobs (API-BK-003): the request answers 202 at once, and any replica
-- answers how far the job is from this table.
CREATE TABLE bulk_jobs (
    tenant_id   uuid        NOT NULL,
    job_id      uuid        NOT NULL,
    branch      text        NOT NULL,
    actor       text        NOT NULL,
    state       text        NOT NULL CHECK (state IN ('queued', 'validating', 'committing', 'succeeded', 'failed')),
    total       integer     NOT NULL CHECK (total >= 0),
    validated   integer     NOT NULL DEFAULT 0 CHECK (validated >= 0 AND validated <= total),
    applied     integer     NOT NULL DEFAULT 0 CHECK (applied >= 0),
    revision    bigint      CHECK (revision >= 1),
    -- On failure: the problem (status, detail, errors with pointers), as the synchronous answer
    -- would have given it.
    problem     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (tenant_id, job_id),
    CHECK ((state = 'failed') = (problem IS NOT NULL))
);

GRANT SELECT, INSERT, UPDATE ON bulk_jobs TO efms_app;
GRANT SELECT, UPDATE ON bulk_jobs TO efms_system;
ALTER TABLE bulk_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulk_jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON bulk_jobs TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON bulk_jobs TO efms_system USING (true) WITH CHECK (true);
