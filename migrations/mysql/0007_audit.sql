-- Audit log of admin writes and sign-ins (SPEC §11.6): who, when, what, the fields sent
-- (secrets replaced by "***"), and how it ended.
CREATE TABLE audit_log (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    actor_user_id BIGINT NULL,
    actor VARCHAR(191) NOT NULL,
    source VARCHAR(16) NOT NULL,
    method VARCHAR(16) NOT NULL,
    route VARCHAR(191) NOT NULL,
    path VARCHAR(1024) NOT NULL,
    target VARCHAR(191) NULL,
    fields MEDIUMTEXT NOT NULL,
    status BIGINT NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    INDEX audit_log_actor (actor, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
