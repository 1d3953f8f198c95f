-- One commit to the log in one statement (docs/adr/0004).
--
-- A commit that is only an append needs no transaction of its own: called as a statement by itself,
-- this function is its own transaction, so the whole commit costs one round trip instead of three
-- (BEGIN with the scope, INSERT, COMMIT). It does exactly what a scoped transaction does: for its
-- duration it runs as `efms_app` with `app.tenant_id` set to the commit's tenant, so the forced
-- row-level security policies check every row, and the statement trigger writes the audit rows.
-- Both settings are restored when the function returns, whatever the caller's transaction.
--
-- Only the owner (the user the control plane logs in as) may call it: the application roles must not
-- be able to choose their tenant through it.
CREATE FUNCTION append_commit(
    p_tenant_id      uuid,
    p_aggregate_type text[],
    p_aggregate_id   text[],
    p_sequence       bigint[],
    p_event_type     text[],
    p_event_version  text[],
    p_payload        jsonb[],
    p_metadata       jsonb[],
    p_event_id       uuid[],
    p_actor          text[])
RETURNS TABLE (global_position bigint, tx_id text)
LANGUAGE plpgsql
SET role = efms_app
SET app.tenant_id = ''
AS $$
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant_id::text, true);
    RETURN QUERY
    INSERT INTO events AS e (tenant_id, aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, metadata, event_id, actor)
    SELECT p_tenant_id, u.aggregate_type, u.aggregate_id, u.sequence, u.event_type,
           u.event_version, u.payload, u.metadata, u.event_id, u.actor
    FROM UNNEST(p_aggregate_type, p_aggregate_id, p_sequence, p_event_type, p_event_version,
                p_payload, p_metadata, p_event_id, p_actor)
         WITH ORDINALITY AS u(aggregate_type, aggregate_id, sequence, event_type, event_version,
                              payload, metadata, event_id, actor, ord)
    ORDER BY u.ord
    RETURNING e.global_position, e.tx_id::text;
END
$$;

REVOKE ALL ON FUNCTION append_commit(uuid, text[], text[], bigint[], text[], text[], jsonb[], jsonb[],
                                     uuid[], text[]) FROM PUBLIC;
