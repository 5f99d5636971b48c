-- Rolling topic generations (issue 18): the embedded broker (Tansu, memory storage) keeps every
-- message it ever received and cannot delete records, only whole topics. The relay therefore
-- publishes to <base>.g<gen>, moves to the next generation every EXCHANGE_TOPIC_ROLL_S seconds and
-- deletes an old one once every live consumer group is past it. This table is where every
-- process learns the current generation (the newest row of its base topic), so all agree.
CREATE TABLE IF NOT EXISTS topic_generations (
    base        text        NOT NULL,              -- e.g. exchange.events
    gen         integer     NOT NULL,
    topic       text        NOT NULL,              -- <base>.g<gen>
    created_at  timestamptz NOT NULL DEFAULT now(),
    sealed_at   timestamptz,                       -- the relay moved on: nothing more is written to it
    deleted_at  timestamptz,                       -- DeleteTopics done
    PRIMARY KEY (base, gen)
);
