-- When each bidder signed in to its opening (签到) by scan-signing, and the signature it gave.
ALTER TABLE bidders ADD COLUMN signed_in_ms BIGINT;
ALTER TABLE bidders ADD COLUMN sign_in_signature TEXT;
