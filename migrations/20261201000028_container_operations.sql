-- Operations on a VM's containers (launch, restart, stop, start, remove, and probing an image's Envoy
-- version), asked through the API or by a rollout and
-- carried out by the VM's agent: a read model of the VM streams' `ContainerOperationRequested` and
-- `ContainerOperationFinished` events (projection `fleet`, written as efms_system). Each is a job
-- (`GET /jobs/{id}`): `running` until the agent reports, then `succeeded` or `failed`.

CREATE TABLE container_operations (
    tenant_id     uuid        NOT NULL,
    operation_id  uuid        NOT NULL,
    vm_name       text        NOT NULL,
    action        text        NOT NULL CHECK (action IN ('launch', 'restart', 'stop', 'start', 'remove', 'probe')),
    -- The container acted on; for a launch, the one made, once it is.
    container_id  text,
    node_id       text,
    -- What was asked, whole.
    operation     jsonb       NOT NULL CHECK (jsonb_typeof(operation) = 'object'),
    requested_by  text        NOT NULL,
    requested_at  timestamptz NOT NULL,
    state         text        NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    error         text,
    -- A probe's answer: the image's id and its Envoy's version.
    image_id      text,
    envoy_version text,
    finished_at   timestamptz,
    CHECK ((state = 'failed') = (error IS NOT NULL)),
    CHECK ((state = 'running') = (finished_at IS NULL)),
    PRIMARY KEY (tenant_id, operation_id)
);

CREATE INDEX container_operations_by_vm ON container_operations (tenant_id, vm_name, requested_at);
-- The launch that made a container (a rollout launches its replacement the same way).
CREATE INDEX container_operations_by_container ON container_operations (tenant_id, container_id)
    WHERE action = 'launch';
-- Launches under way, by the node id they will be.
CREATE INDEX container_operations_launching ON container_operations (tenant_id, node_id)
    WHERE state = 'running' AND action = 'launch';

GRANT SELECT ON container_operations TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON container_operations TO efms_system;
ALTER TABLE container_operations ENABLE ROW LEVEL SECURITY;
ALTER TABLE container_operations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON container_operations TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON container_operations TO efms_system USING (true) WITH CHECK (true);
