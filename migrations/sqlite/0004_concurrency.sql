-- Concurrency caps (SPEC §11.3): at most this many requests in flight; NULL = no cap.
ALTER TABLE api_keys ADD COLUMN max_concurrency INTEGER;
ALTER TABLE users ADD COLUMN max_concurrency INTEGER;
