-- When the hall was last known to be running (written every few seconds by its tick): at the next
-- start, the time since is given back to any decryption window that was open, since no bidder
-- could scan while no server ran.
CREATE TABLE hall_clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    beat_ms BIGINT NOT NULL
);
