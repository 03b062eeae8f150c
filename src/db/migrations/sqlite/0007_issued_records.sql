-- The opening record as issued for the bidders to confirm by scan-signing (扫码签章): every
-- version kept, exactly as served (its SM3 is the digest the bidders sign).
CREATE TABLE issued_records (
    opening_id TEXT NOT NULL REFERENCES openings(id),
    version BIGINT NOT NULL,
    digest TEXT NOT NULL,
    record TEXT NOT NULL,
    issued_ms BIGINT NOT NULL,
    PRIMARY KEY (opening_id, version)
);
-- A bidder's signature confirming one version of the record, once.
CREATE TABLE record_confirmations (
    opening_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    bidder_id TEXT NOT NULL REFERENCES bidders(id),
    signature TEXT NOT NULL,
    confirmed_ms BIGINT NOT NULL,
    PRIMARY KEY (opening_id, version, bidder_id),
    FOREIGN KEY (opening_id, version) REFERENCES issued_records(opening_id, version)
);
