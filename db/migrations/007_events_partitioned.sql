-- The journal partitioned by seq range (issue 18). Old partitions can be detached
-- (DETACH PARTITION ... CONCURRENTLY, `python -m db.partitions`) and archived without touching
-- the hot path: inserts only ever go to the partition holding the newest seqs.
--
-- Why seq and not time: the primary key (instrument, seq) must contain the partition key, and it
-- is the journal's last line of defence against a second writer (a duplicate seq fails the whole
-- batch). Partitioning by time would need the time in the key and lose that guarantee. seq is
-- per instrument, so a partition holds every instrument's events of that seq range; it may be
-- archived once every instrument is past it (db/partitions.py: snapshot, relay cursor and
-- settlement all beyond its range).
--
-- Conversion of an existing database: the old table becomes the first partition as it is (no
-- copy; a CHECK constraint added first lets ATTACH skip its validation scan), covering every seq
-- up to the next multiple of the partition size above its current maximum. New partitions are
-- created ahead of the newest seq by ensure_event_partitions(), which the command service calls at
-- start and in its housekeeping.

CREATE TABLE IF NOT EXISTS events_partitioning (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    size  bigint  NOT NULL CHECK (size > 0),     -- seqs per partition
    ahead integer NOT NULL CHECK (ahead > 0)     -- partitions kept ready above the newest seq
);
INSERT INTO events_partitioning (size, ahead) VALUES (10000000, 2) ON CONFLICT DO NOTHING;

DO $$
DECLARE
    size bigint := (SELECT p.size FROM events_partitioning p);
    top bigint;
    bound bigint;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'events'::regclass) = 'p' THEN
        RETURN;  -- already partitioned
    END IF;
    SELECT coalesce(max(seq), 0) INTO top FROM events;
    bound := (top / size + 1) * size + 1;  -- first seq of the next range
    ALTER TABLE events RENAME TO events_p0;
    ALTER INDEX events_pkey RENAME TO events_p0_pkey;
    EXECUTE format('ALTER TABLE events_p0 ADD CONSTRAINT events_p0_range CHECK (seq IS NOT NULL AND seq < %s)', bound);
    CREATE TABLE events (
        instrument   text        NOT NULL,
        seq          bigint      NOT NULL,
        type         text        NOT NULL,
        ts           bigint      NOT NULL,
        payload      bytea       NOT NULL,
        committed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (instrument, seq)
    ) PARTITION BY RANGE (seq);
    EXECUTE format('ALTER TABLE events ATTACH PARTITION events_p0 FOR VALUES FROM (MINVALUE) TO (%s)', bound);
    ALTER TABLE events_p0 DROP CONSTRAINT events_p0_range;
END $$;

-- Partitions named events_s<first seq>; idempotent, safe to call concurrently (the advisory
-- lock serialises callers). Returns the number of partitions created.
CREATE OR REPLACE FUNCTION ensure_event_partitions() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    size bigint;
    ahead integer;
    top bigint;
    hi bigint;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(742005);
    SELECT p.size, p.ahead INTO size, ahead FROM events_partitioning p;
    -- The newest seq of any instrument: a loose index scan over the instruments, then one
    -- backward primary-key probe each (max(seq) over the whole table would read all of it).
    WITH RECURSIVE i(instrument) AS (
        SELECT min(instrument) FROM events
        UNION ALL
        SELECT (SELECT min(e.instrument) FROM events e WHERE e.instrument > i.instrument)
        FROM i WHERE i.instrument IS NOT NULL
    )
    SELECT coalesce(max((SELECT max(e.seq) FROM events e WHERE e.instrument = i.instrument)), 0) INTO top
      FROM i WHERE i.instrument IS NOT NULL;
    SELECT coalesce(max((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''?(\d+)''?\)'))[1]::bigint), 1)
      INTO hi
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'events'::regclass;
    WHILE hi <= top + ahead * size LOOP
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF events FOR VALUES FROM (%s) TO (%s)',
                       'events_s' || hi, hi, hi + size);
        hi := hi + size;
        created := created + 1;
    END LOOP;
    RETURN created;
END $$;

SELECT ensure_event_partitions();
