-- Client order ids (issue 20): the order_id is always the server's (random, unguessable); a
-- client's own id for its order is client_order_id, unique per client (two clients may use the
-- same one). Unique for the client's whole history, not only among open orders: a venue's
-- ClOrdID must never name two orders, or a late cancel/GET by it could hit the wrong one.
-- The command service refuses a reuse before the order reaches a book (reservation in memory,
-- then this index's lookup); the index is the last line of defence and serves the lookups of
-- GET/cancel/amend by client_order_id (client_order_id first: an admin's lookup without a
-- client uses it too). Partial: orders without one (most) do not enter the index.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS client_order_id text;
CREATE UNIQUE INDEX IF NOT EXISTS orders_client_order_id
    ON orders (client_order_id, client_id) WHERE client_order_id IS NOT NULL;
