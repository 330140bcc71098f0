-- Model aliases of an account (SPEC §11.2): a JSON object {"client-name": "upstream-name"}.
ALTER TABLE accounts ADD COLUMN model_map TEXT;
