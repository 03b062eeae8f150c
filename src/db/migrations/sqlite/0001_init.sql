CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE agent_tokens (
    token_hash TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    kind TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE openings (
    id TEXT PRIMARY KEY,
    tender_id TEXT NOT NULL,
    name TEXT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    opening_ms BIGINT NOT NULL,
    decrypt_limit_secs BIGINT NOT NULL,
    state TEXT NOT NULL,
    decrypt_started_ms BIGINT,
    decrypt_deadline_ms BIGINT,
    hall_public BLOB,
    hall_secret_sealed BLOB,
    failure TEXT,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE bidders (
    id TEXT PRIMARY KEY,
    opening_id TEXT NOT NULL REFERENCES openings(id),
    uscc TEXT NOT NULL,
    name TEXT NOT NULL,
    UNIQUE (opening_id, uscc)
);
CREATE TABLE bidder_keys (
    bidder_id TEXT NOT NULL REFERENCES bidders(id),
    usage TEXT NOT NULL,
    key_id TEXT NOT NULL,
    der BLOB NOT NULL,
    is_cert BIGINT NOT NULL,
    PRIMARY KEY (bidder_id, usage, key_id)
);
CREATE TABLE bids (
    id TEXT PRIMARY KEY,
    opening_id TEXT NOT NULL REFERENCES openings(id),
    bidder_id TEXT NOT NULL REFERENCES bidders(id),
    state TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    sm3 TEXT NOT NULL,
    plaintext_len BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    summary TEXT,
    answer BLOB,
    plain_path TEXT,
    plain_sm3 TEXT,
    failure TEXT,
    fault TEXT,
    UNIQUE (opening_id, bidder_id)
);
CREATE TABLE challenges (
    nonce TEXT PRIMARY KEY,
    opening_id TEXT NOT NULL REFERENCES openings(id),
    bid_id TEXT NOT NULL REFERENCES bids(id),
    expires_ms BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);
CREATE INDEX challenges_bid ON challenges (bid_id);
CREATE TABLE events (
    opening_id TEXT NOT NULL REFERENCES openings(id),
    seq BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    audience TEXT NOT NULL,
    payload TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (opening_id, seq)
);
CREATE TABLE evaluator_tokens (
    token_hash TEXT PRIMARY KEY,
    opening_id TEXT NOT NULL REFERENCES openings(id),
    created_ms BIGINT NOT NULL
);
