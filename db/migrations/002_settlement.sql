-- End-of-day settlement: one run per instrument per cutoff, covering the journal seq range
-- (from_seq, to_seq]. The primary keys make a run write-once: repeating the same cutoff
-- finds the run already there and changes nothing.
CREATE TABLE IF NOT EXISTS settlement_runs (
    instrument  text        NOT NULL,
    to_seq      bigint      NOT NULL,
    from_seq    bigint      NOT NULL,              -- exclusive: the previous run's to_seq
    cutoff_ts   bigint      NOT NULL,              -- ns since epoch
    trade_count bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instrument, to_seq)
);

-- Net position change of one client over one run, in exact decimals of base and quote.
CREATE TABLE IF NOT EXISTS settlements (
    instrument    text        NOT NULL,
    to_seq        bigint      NOT NULL,
    client_id     text        NOT NULL,
    from_seq      bigint      NOT NULL,
    cutoff_ts     bigint      NOT NULL,
    net_base      numeric     NOT NULL,   -- + bought, - sold
    net_quote     numeric     NOT NULL,   -- + received, - paid
    bought        numeric     NOT NULL,
    sold          numeric     NOT NULL,
    trade_count   bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instrument, to_seq, client_id),
    FOREIGN KEY (instrument, to_seq) REFERENCES settlement_runs (instrument, to_seq)
);
CREATE INDEX IF NOT EXISTS settlements_client ON settlements (client_id, cutoff_ts DESC);
