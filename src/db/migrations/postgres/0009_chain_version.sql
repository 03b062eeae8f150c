-- How an opening's events are chained: 1, each event hashed whole (openings made before this
-- migration); 2, each event's time, kind and payload hashed apart first, so that anyone can
-- check the chain through the events it may not read, given their digests.
ALTER TABLE openings ADD COLUMN chain_version BIGINT NOT NULL DEFAULT 1;
