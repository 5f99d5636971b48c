-- The journal: every engine event, per instrument, gap-free seq. It is also the outbox:
-- the relay reads it from a cursor and never deletes from it.
CREATE TABLE IF NOT EXISTS events (
    instrument  text        NOT NULL,
    seq         bigint      NOT NULL,
    type        text        NOT NULL,
    ts          bigint      NOT NULL,              -- ns since epoch, assigned by the sequencer
    payload     bytea       NOT NULL,              -- the event as JSON (contracts.messages codec)
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instrument, seq)
);

-- Current state of every order ever accepted or rejected (the authoritative GET /orders/{id}).
-- Prices in ticks, quantities in lots; `cost` = sum of price*qty of its fills (ticks*lots).
CREATE TABLE IF NOT EXISTS orders (
    order_id        text        PRIMARY KEY,
    client_id       text        NOT NULL,
    instrument      text        NOT NULL,
    side            text        NOT NULL,
    order_type      text        NOT NULL,
    price           bigint,
    stop_price      bigint,
    quantity        bigint      NOT NULL,
    filled_quantity bigint      NOT NULL,
    cost            numeric     NOT NULL DEFAULT 0,
    status          text        NOT NULL,
    tif             text        NOT NULL,
    post_only       boolean     NOT NULL DEFAULT false,
    reject_reason   text,
    created_ts      bigint      NOT NULL,
    updated_ts      bigint      NOT NULL,
    last_seq        bigint      NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_client_created ON orders (client_id, created_ts DESC);

-- Idempotency: written in the same transaction as the order it answers for.
CREATE TABLE IF NOT EXISTS idempotency (
    client_id    text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status_code  integer     NOT NULL,
    response     bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, key)
);

-- Engine snapshots: recovery = latest snapshot + replay of the journal after its seq.
CREATE TABLE IF NOT EXISTS snapshots (
    instrument  text        NOT NULL,
    seq         bigint      NOT NULL,
    data        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instrument, seq)
);

-- API keys, stored as sha256 of the key; the key itself is shown once at creation.
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash    bytea       PRIMARY KEY,
    client_id   text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('trader', 'admin')),
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Relay progress: the last seq per instrument acknowledged by the broker.
CREATE TABLE IF NOT EXISTS relay_cursors (
    instrument  text        PRIMARY KEY,
    seq         bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
