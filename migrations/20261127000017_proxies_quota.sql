-- A quota on connected proxies per tenant (FR-MT-004). NULL means no limit.
ALTER TABLE tenant_quotas ADD COLUMN proxies integer CHECK (proxies >= 0);
