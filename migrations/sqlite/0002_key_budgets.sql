-- Key budgets (SPEC §11.3): limits in nano-dollars (NULL = none); per window the effective-used
-- counter and the start (Unix ms) of the window it belongs to, rolled lazily like packages.
-- The total budget is checked against the existing lifetime counter `used_cost`.
ALTER TABLE api_keys ADD COLUMN daily_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN weekly_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN monthly_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN total_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN daily_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN weekly_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN monthly_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN daily_window_start INTEGER;
ALTER TABLE api_keys ADD COLUMN weekly_window_start INTEGER;
ALTER TABLE api_keys ADD COLUMN monthly_window_start INTEGER;
