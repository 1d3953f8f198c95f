-- The images a VM's agent is told to watch (besides containers labelled `efms.node_id`), set by
-- the API with the VM's placement; part of the `fleet` read model.
ALTER TABLE vms
    ADD COLUMN watch_images jsonb NOT NULL DEFAULT '[]'::jsonb
        CHECK (jsonb_typeof(watch_images) = 'array');
