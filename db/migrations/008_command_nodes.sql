-- Command nodes (issue 14): any number of identical command services, each with EXCHANGE_NODE_ID.
-- An instrument is owned by the node whose session holds its advisory lock (sequencer.py); this
-- table only says which nodes are alive (heartbeat_at, PostgreSQL's clock) and which instruments
-- each one serves, so every node computes the same rendezvous-hash spread of the instruments
-- over the live nodes (command_service/nodes.py) and can tell a live owner from a frozen one.
CREATE TABLE IF NOT EXISTS command_nodes (
    node_id       text        PRIMARY KEY,
    instruments   text[]      NOT NULL DEFAULT '{}',   -- the instruments file of that node
    url           text,                                -- its HTTP address (gateway health, operators)
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    draining      boolean     NOT NULL DEFAULT false,  -- SIGTERM: handing its instruments over
    declined      text[]      NOT NULL DEFAULT '{}'    -- handed over by an admin: not this node's share
);
