-- How an opening's events are chained: 1, each event hashed whole (openings made before this
-- migration); 2, each event's time, kind and payload hashed apart first, so that anyone can
-- check the chain through the events it may not read, given their digests.
ALTER TABLE openings ADD COLUMN chain_version BIGINT NOT NULL DEFAULT 1;
-- Version 2 hashes a random salt with each event's body, given with the event to those who may
-- read it, so that the digest of an event one may not read cannot be matched against guesses.
ALTER TABLE events ADD COLUMN salt TEXT NOT NULL DEFAULT '';
