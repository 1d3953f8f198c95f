-- What the last check of a proxy's admin `config_dump` found (NFR-OB-004): the agent on its VM reads
-- the versions the proxy holds, the control plane compares them with what the proxy ACKed. A
-- difference (`config_diverged`, why) makes the proxy's drift state DIVERGED until a check agrees.
ALTER TABLE proxies
    ADD COLUMN config_checked_at     timestamptz,
    ADD COLUMN config_diverged       text CHECK (length(config_diverged) <= 8192),
    ADD COLUMN config_diverged_since timestamptz,
    ADD CONSTRAINT proxies_config_diverged_since
        CHECK ((config_diverged IS NULL) = (config_diverged_since IS NULL));
