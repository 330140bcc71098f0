-- Audit log of admin writes and sign-ins (SPEC §11.6): who, when, what, the fields sent
-- (secrets replaced by "***"), and how it ended.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    actor_user_id INTEGER,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    path TEXT NOT NULL,
    target TEXT,
    fields TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
