-- Events written in the transaction of the state change they report, until the event log's
-- writer moves them into `events` (a server killed in between publishes them at its next start).
CREATE TABLE staged_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    opening_id TEXT NOT NULL REFERENCES openings(id),
    kind TEXT NOT NULL,
    audience TEXT NOT NULL,
    payload TEXT NOT NULL,
    ts_ms BIGINT NOT NULL
);
