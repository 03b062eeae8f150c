-- Objections (异议) raised during an opening, numbered from 1 within it, each with the agent's
-- answer. An answer is given once and never changed (records may not be altered, art. 49); the
-- event log holds both as well.
CREATE TABLE objections (
    opening_id TEXT NOT NULL REFERENCES openings(id),
    n BIGINT NOT NULL,
    bidder_id TEXT REFERENCES bidders(id),
    text TEXT NOT NULL,
    raised_ms BIGINT NOT NULL,
    answer TEXT,
    answered_ms BIGINT,
    PRIMARY KEY (opening_id, n)
);
