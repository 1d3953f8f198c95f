-- A tenant's suspension (issue: tenants' lifecycle): while suspended_at is set, the tenant's own
-- callers may read but not write and its new proxy streams are refused. Both columns are the
-- tenant stream's last TenantSuspended, cleared by TenantResumed.
ALTER TABLE tenants
    ADD COLUMN suspended_at timestamptz,
    ADD COLUMN suspended_by text,
    ADD COLUMN suspension_reason text,
    ADD CONSTRAINT tenants_suspension_whole CHECK (
        (suspended_at IS NULL) = (suspended_by IS NULL)
        AND (suspended_at IS NULL) = (suspension_reason IS NULL));
