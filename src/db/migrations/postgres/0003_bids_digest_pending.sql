-- The hall looks twice a second for decrypted bids whose plaintext digest is missing.
CREATE INDEX bids_digest_pending ON bids (id) WHERE state = 'decrypted' AND plain_sm3 IS NULL;
