-- Rollouts (ADR 0012): a read model of the rollout streams (projection `rollouts`, written as
-- efms_system), one row per rollout with its state as the log says it is now. The replica holding
-- the `rollouts` lease drives those that are running or paused.

CREATE TABLE rollouts (
    tenant_id    uuid        NOT NULL,
    rollout_id   uuid        NOT NULL,
    group_name   text        NOT NULL,
    image        text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('running', 'paused', 'succeeded', 'failed', 'aborted')),
    requested_by text        NOT NULL,
    started_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    -- The rollout as its stream folds to (spec, containers and their steps, failure).
    document     jsonb       NOT NULL CHECK (jsonb_typeof(document) = 'object'),
    -- Ended with a container being removed or its replacement launched: still driven until that
    -- is through.
    settling     boolean     NOT NULL DEFAULT false,
    version      bigint      NOT NULL CHECK (version >= 1),
    PRIMARY KEY (tenant_id, rollout_id)
);

CREATE INDEX rollouts_active ON rollouts (tenant_id, group_name) WHERE state IN ('running', 'paused');
CREATE INDEX rollouts_driven ON rollouts (started_at) WHERE state IN ('running', 'paused') OR settling;

GRANT SELECT ON rollouts TO efms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON rollouts TO efms_system;
ALTER TABLE rollouts ENABLE ROW LEVEL SECURITY;
ALTER TABLE rollouts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rollouts TO efms_app
    USING (tenant_id = efms_current_tenant()) WITH CHECK (tenant_id = efms_current_tenant());
CREATE POLICY system_all ON rollouts TO efms_system USING (true) WITH CHECK (true);
