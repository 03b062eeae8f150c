-- When the hall was last known to be running (written every few seconds by its tick): at the next
-- start, the time since is given back to any decryption window that was open, since no bidder
-- could scan while no server ran.
CREATE TABLE hall_clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    beat_ms BIGINT NOT NULL
);
-- Up to when a stop has been given back to the opening's decryption window, so that a start that
-- dies before it records its own run does not give the same time back twice.
ALTER TABLE openings ADD COLUMN given_back_until_ms BIGINT;
-- Every key the platform has signed receipts and log heads with, so that what an earlier key
-- signed can still be checked after the master key (and with it the platform key) changed.
CREATE TABLE platform_keys (
    key_id TEXT PRIMARY KEY,
    public_key_pem TEXT NOT NULL,
    first_used_ms BIGINT NOT NULL
);
