-- The hall looks for bids by state twice a second (decryptions without a task).
CREATE INDEX bids_state ON bids (state);
