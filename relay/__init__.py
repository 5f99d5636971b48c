"""Outbox relay: committed journal rows (table `events`) -> Kafka topic, in seq order.

Modules: settings (RelaySettings), leader (the advisory-lock leadership session), publisher
(Relay: read rounds, record batches, cursors), lag (relay_lag from PostgreSQL alone), topic
(ensure_topic), metrics (RelayMetrics), http (/metrics and /healthz), __main__ (the process).

`python -m relay` runs forever. Settings come from the environment once
(RelaySettings.from_env). Prometheus metrics and /healthz on EXCHANGE_RELAY_METRICS_PORT.

How it keeps the stream gap-free and in order (at-least-once, duplicates allowed):
- One leader. Each relay opens a dedicated connection and blocks in
  pg_advisory_lock(RELAY_LOCK_KEY); the one that gets it leads, the others wait inside that
  call (standby). The lock lives exactly as long as the leader's session, so a killed leader
  (kill -9, crash, lost network) releases it and a standby takes over at once. If the
  leader's lock connection dies, it stops publishing and campaigns again.
- Per instrument a cursor in relay_cursors = the last seq the broker acknowledged. A round
  reads up to N rows per instrument after the cursor (one query for all instruments),
  checks they are exactly cursor+1, cursor+2, ... (a hole means a row not visible yet: stop
  before it, never skip), puts each instrument's rows in ONE record batch for the partition
  of its key (murmur2, as the Java client), awaits every acknowledgement (acks=all), and
  only then advances the cursors. On any send error the producer is thrown away and the
  next attempt starts again from the cursors.
  Why this cannot reorder without an idempotent producer (Tansu has none): every round sends
  at most one batch per instrument and waits for all of them before the next round is SENT
  (it may already be read and built meanwhile), so a batch that fails can never be
  overtaken by a later batch of the same instrument; a batch whose outcome is unknown
  (timeout, crash) always starts at cursor+1 with everything up to the cursor already in
  the log, so whenever it lands it only adds duplicates.
- Commit order == seq order per instrument (one writer per instrument), so a row with a
  lower seq never becomes visible after a higher one; the hole check is a second guard.
- Woken by NOTIFY exchange_events (sent in the writer's transaction, so it arrives after
  the commit) while idle; polls every poll_ms as a fallback. While every round finds rows it
  does not LISTEN (it reads again after each linger anyway); a round that finds none LISTENs
  and reads once more before it waits, so no commit falls between the two.
- After each acknowledged round it announces on NATS where the partitions end, with the
  round's records (notices.py): the projectors apply them without fetching.
- The topic is created explicitly (relay.topic.ensure_topic) before a producer is made,
  at start and after every Kafka error: the memory-only broker comes back empty after a
  restart and would otherwise auto-create the topic with the wrong partition count. The
  producer never names the topic in a metadata request (that auto-creates it). A restarted
  broker still acknowledges sends to the vanished topic, so the leader also checks the
  topic every topic_check_ms and treats a partition offset that went back as a failed send.
"""

