-- Client order ids (issue 20): the order_id is always the server's (random, unguessable); a
-- client's own id for its order is client_order_id, unique per client (two clients may use the
-- same one). Unique for the client's whole history, not only among open orders: a venue's
-- ClOrdID must never name two orders, or a late cancel/GET by it could hit the wrong one.
-- The command service that owns the instrument refuses a reuse before the order reaches a book
-- (reservation in memory, then a lookup in this index). The index is deliberately NOT unique:
-- with several command nodes, two simultaneous uses of one id on instruments owned by different
-- nodes can both pass their owners' checks, and a unique index would then fail the second node's
-- whole batch - 503 for other clients' orders in it and a recovery of the instrument, i.e. one
-- client could hurt others at will. Without it the damage stays with that client (its id names
-- two orders; lookups take the newest). client_order_id first: an admin's lookup without a client
-- uses it too. Partial: orders without one (most) do not enter the index.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS client_order_id text;
CREATE INDEX IF NOT EXISTS orders_client_order_id
    ON orders (client_order_id, client_id) WHERE client_order_id IS NOT NULL;
