-- The schema gitops wrote before numbered migrations (gitops/store.py _SCHEMA, 2026-12-01).
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    environment TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    sha TEXT, branch TEXT, author TEXT, committed_at TEXT, message TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    duration_s REAL,
    result TEXT,
    error TEXT,
    changed INTEGER NOT NULL DEFAULT 0,
    failed_hosts TEXT NOT NULL DEFAULT '[]',
    stage_s TEXT NOT NULL DEFAULT '{}',
    plan TEXT
);
CREATE INDEX IF NOT EXISTS runs_env ON runs (environment, id);
CREATE TABLE IF NOT EXISTS host_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    host TEXT NOT NULL,
    apply_status TEXT,
    changed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    verify_status TEXT,
    duration_s REAL,
    PRIMARY KEY (run_id, host)
);
CREATE TABLE IF NOT EXISTS op_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    host TEXT NOT NULL,
    seq INTEGER NOT NULL,
    service TEXT,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    stderr TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS op_results_run ON op_results (run_id, host);
CREATE TABLE IF NOT EXISTS check_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    check_name TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    duration_s REAL
);
CREATE INDEX IF NOT EXISTS check_results_run ON check_results (run_id, host);
CREATE INDEX IF NOT EXISTS host_results_host ON host_results (host, run_id);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (id) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS controls (
    environment TEXT PRIMARY KEY,
    suspended INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT '',
    since TEXT,
    held_sha TEXT,
    held_head TEXT
);
CREATE TABLE IF NOT EXISTS quarantine (
    environment TEXT NOT NULL,
    sha TEXT NOT NULL,
    reason TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (environment, sha)
);
CREATE TABLE IF NOT EXISTS undelivered (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    environment TEXT NOT NULL,
    receiver INTEGER NOT NULL,
    sha TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS converged (
    environment TEXT NOT NULL,
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    revision TEXT NOT NULL,
    PRIMARY KEY (environment, host, service)
);
CREATE TABLE IF NOT EXISTS status (
    environment TEXT NOT NULL,
    host TEXT NOT NULL,
    conditions TEXT NOT NULL,
    last_applied_revision TEXT,
    last_attempted_revision TEXT,
    last_verified_revision TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (environment, host)
);
