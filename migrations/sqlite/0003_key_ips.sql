-- IP allow-lists on keys (SPEC §11.3): a JSON list of CIDR ranges, or NULL for any address.
ALTER TABLE api_keys ADD COLUMN allowed_ips TEXT NULL;
