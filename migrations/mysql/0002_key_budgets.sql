-- Key budgets (SPEC §11.3): limits in nano-dollars (NULL = none); per window the effective-used
-- counter and the start (Unix ms) of the window it belongs to, rolled lazily like packages.
-- The total budget is checked against the existing lifetime counter `used_cost`.
ALTER TABLE api_keys
    ADD COLUMN daily_limit BIGINT,
    ADD COLUMN weekly_limit BIGINT,
    ADD COLUMN monthly_limit BIGINT,
    ADD COLUMN total_limit BIGINT,
    ADD COLUMN daily_used BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN weekly_used BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN monthly_used BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN daily_window_start BIGINT,
    ADD COLUMN weekly_window_start BIGINT,
    ADD COLUMN monthly_window_start BIGINT;
