-- Branches of a tenant's configuration (FR-VC-005): each branch is its own `config` stream; its first
-- commit copies the base's resources at the fork revision. Deleting a branch keeps its events and its
-- history rows; only its current state leaves `config_resources`.
ALTER TABLE config_revisions DROP CONSTRAINT config_revisions_operation_check;
ALTER TABLE config_revisions ADD CONSTRAINT config_revisions_operation_check
    CHECK (operation IN ('create', 'replace', 'patch', 'delete', 'rollback', 'bulk', 'branch', 'merge'));

-- A merge commit records the branch and revision it brought in: the next merge of that branch starts
-- its three-way comparison from there.
ALTER TABLE config_revisions
    ADD COLUMN merged_branch   text,
    ADD COLUMN merged_revision bigint CHECK (merged_revision >= 1),
    ADD CONSTRAINT config_revisions_merged_check
        CHECK ((merged_branch IS NULL) = (merged_revision IS NULL));

CREATE INDEX config_revisions_merges ON config_revisions (tenant_id, branch, merged_branch)
    WHERE merged_branch IS NOT NULL;

CREATE TABLE config_branches (
    tenant_id     uuid        NOT NULL,
    name          text        NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$' AND name <> 'main'),
    base_branch   text        NOT NULL,
    base_revision bigint      NOT NULL CHECK (base_revision >= 0),
    -- The branch's first revision (base_revision + 1): its state equals the base's at base_revision.
    fork_revision bigint      NOT NULL CHECK (fork_revision = base_revision + 1),
    created_at    timestamptz NOT NULL,
    created_by    text        NOT NULL,
    deleted_at    timestamptz,
    PRIMARY KEY (tenant_id, name)
);

GRANT SELECT ON config_branches TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON config_branches TO efms_system;
ALTER TABLE config_branches ENABLE ROW LEVEL SECURITY;
ALTER TABLE config_branches FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON config_branches TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON config_branches TO efms_system USING (true) WITH CHECK (true);
