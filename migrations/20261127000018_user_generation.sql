-- Changing a user's role or password in place (NFR-SE-002): each change starts a new generation,
-- and tokens carry the generation they were issued in, so earlier tokens are refused.
ALTER TABLE users ADD COLUMN generation integer NOT NULL DEFAULT 0 CHECK (generation >= 0);
