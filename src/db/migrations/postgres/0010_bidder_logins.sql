-- Bidders' scan logins (扫码登录): a browser asks for a login code and keeps a secret whose SM3
-- is kept here; the bidder's phone signs the code; the browser holding the secret then takes a
-- session (once). A session is kept by the SM3 of its token.
CREATE TABLE bidder_logins (
    nonce TEXT PRIMARY KEY,
    opening_id TEXT NOT NULL REFERENCES openings(id),
    secret_sm3 TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    bidder_id TEXT REFERENCES bidders(id),
    signed_ms BIGINT,
    taken BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE bidder_sessions (
    token_sm3 TEXT PRIMARY KEY,
    opening_id TEXT NOT NULL REFERENCES openings(id),
    bidder_id TEXT NOT NULL REFERENCES bidders(id),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
