-- Bulk changes (API-BK-001): a commit of many operations across kinds is recorded as `bulk`.
ALTER TABLE config_revisions DROP CONSTRAINT config_revisions_operation_check;
ALTER TABLE config_revisions ADD CONSTRAINT config_revisions_operation_check
    CHECK (operation IN ('create', 'replace', 'patch', 'delete', 'rollback', 'bulk'));
