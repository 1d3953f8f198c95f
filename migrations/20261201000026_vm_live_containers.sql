-- How many of a VM's containers are not gone, kept by the fleet projection as container events
-- come (a container appearing, going or moving changes it), so that a list of VMs does not count
-- every VM's containers on every read.
ALTER TABLE vms ADD COLUMN live_containers integer NOT NULL DEFAULT 0;

-- Counted as the projector's role: the tables force row-level security, which lets the
-- migrating owner see no rows of its own.
SET ROLE efms_system;
UPDATE vms v SET live_containers = (
    SELECT count(*) FROM containers c
    WHERE c.tenant_id = v.tenant_id AND c.vm_name = v.name AND c.gone_at IS NULL);
RESET ROLE;
