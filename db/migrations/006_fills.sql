-- Fills (issue 18): one row per side of every trade, written in the same statement as the batch's
-- events (command_service/journal.py), so /market/fills can serve a client's fills from PostgreSQL
-- once they have left Redis (retention window, per-client cap). The key is the Redis fill index's
-- order - (ts, trade_id bytewise, role) - so a paging cursor means the same in both stores.
CREATE TABLE IF NOT EXISTS fills (
    client_id   text             NOT NULL,
    ts          bigint           NOT NULL,
    trade_id    text COLLATE "C" NOT NULL,
    role        text COLLATE "C" NOT NULL CHECK (role IN ('maker', 'taker')),
    order_id    text             NOT NULL,
    side        text             NOT NULL,
    instrument  text             NOT NULL,
    seq         bigint           NOT NULL,
    price       bigint           NOT NULL,  -- ticks
    quantity    bigint           NOT NULL,  -- lots
    PRIMARY KEY (client_id, ts, trade_id, role)
);
