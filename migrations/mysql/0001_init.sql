-- tollgate schema (MySQL/MariaDB). Money: integer nano-dollars. Times: Unix milliseconds, UTC.
CREATE TABLE users (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username VARCHAR(191) NOT NULL UNIQUE,
    role VARCHAR(32) NOT NULL DEFAULT 'user',
    password_hash TEXT,
    status VARCHAR(32) NOT NULL DEFAULT 'active',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE api_keys (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT NOT NULL ,
    name VARCHAR(255) NOT NULL,
    key_prefix VARCHAR(255) NOT NULL,
    key_hash VARCHAR(191) NOT NULL UNIQUE,
    status VARCHAR(32) NOT NULL DEFAULT 'active',
    expires_at BIGINT,
    allowed_models TEXT,
    rpm_limit BIGINT,
    tpm_limit BIGINT,
    used_cost BIGINT NOT NULL DEFAULT 0,
    request_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    last_used_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE INDEX idx_api_keys_user ON api_keys(user_id);

CREATE TABLE packages (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    type VARCHAR(32) NOT NULL,
    daily_quota BIGINT,
    weekly_quota BIGINT,
    monthly_quota BIGINT,
    quota_total BIGINT,
    duration_days BIGINT NOT NULL,
    status VARCHAR(32) NOT NULL DEFAULT 'active',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE user_packages (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT NOT NULL ,
    package_id BIGINT NOT NULL ,
    name VARCHAR(255) NOT NULL,
    type VARCHAR(32) NOT NULL,
    daily_quota BIGINT,
    weekly_quota BIGINT,
    monthly_quota BIGINT,
    quota_total BIGINT,
    daily_used BIGINT NOT NULL DEFAULT 0,
    weekly_used BIGINT NOT NULL DEFAULT 0,
    monthly_used BIGINT NOT NULL DEFAULT 0,
    quota_used BIGINT NOT NULL DEFAULT 0,
    daily_window_start BIGINT,
    weekly_window_start BIGINT,
    monthly_window_start BIGINT,
    starts_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    status VARCHAR(32) NOT NULL DEFAULT 'active',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE INDEX idx_user_packages_user ON user_packages(user_id);

CREATE TABLE accounts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    provider VARCHAR(32) NOT NULL,
    base_url TEXT NOT NULL,
    secret TEXT NOT NULL,
    models TEXT,
    priority BIGINT NOT NULL DEFAULT 0,
    weight BIGINT NOT NULL DEFAULT 1,
    status VARCHAR(32) NOT NULL DEFAULT 'active',
    total_cost BIGINT NOT NULL DEFAULT 0,
    request_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    last_error_at BIGINT,
    last_used_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE model_prices (
    model VARCHAR(191) NOT NULL PRIMARY KEY,
    input_price BIGINT NOT NULL,
    output_price BIGINT NOT NULL,
    cache_read_price BIGINT,
    cache_write_price BIGINT,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE usage_daily (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    day VARCHAR(10) NOT NULL,
    user_id BIGINT NOT NULL,
    api_key_id BIGINT NOT NULL,
    account_id BIGINT NOT NULL,
    model VARCHAR(191) NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    cost BIGINT NOT NULL DEFAULT 0,
    UNIQUE (day, user_id, api_key_id, account_id, model)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE request_logs (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id VARCHAR(191) NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    api_key_id BIGINT NOT NULL,
    account_id BIGINT,
    user_package_id BIGINT,
    model VARCHAR(191) NOT NULL,
    endpoint VARCHAR(255) NOT NULL,
    stream BIGINT NOT NULL DEFAULT 0,
    status BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    cost BIGINT NOT NULL DEFAULT 0,
    billing_status VARCHAR(32) NOT NULL,
    latency_ms BIGINT NOT NULL DEFAULT 0,
    ttfb_ms BIGINT,
    error TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE INDEX idx_request_logs_created ON request_logs(created_at, id);
CREATE INDEX idx_request_logs_user ON request_logs(user_id, created_at);
CREATE INDEX idx_request_logs_key ON request_logs(api_key_id, created_at);

CREATE TABLE admin_sessions (
    id_hash VARCHAR(191) NOT NULL PRIMARY KEY,
    user_id BIGINT NOT NULL ,
    csrf_token VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
