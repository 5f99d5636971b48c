"""Names of the Kafka topic and the NATS subjects, defined once for both services."""

EVENTS_TOPIC = "exchange.events"  # key = instrument, so one partition keeps its order
EVENTS_TOPIC_PARTITIONS = 6

# Rolling topic generations (relay/generations.py): with rolling on, the relay writes to
# <base>.g<gen> and the newest row of topic_generations names the topic to read.
CURRENT_TOPIC_SQL = "SELECT topic FROM topic_generations WHERE base = $1 ORDER BY gen DESC LIMIT 1"


def generation_topic(base: str, gen: int) -> str:
    return f"{base}.g{gen}"


def generation_group(group: str, topic: str) -> str:
    """A consumer group reads one generation: moving on is joining the next one's group."""
    return f"{group}@{topic}"

# NATS: the projector publishes each applied update here; every query replica relays it.
FEED_SUBJECT_PREFIX = "exchange.feed"  # exchange.feed.<instrument>


def feed_subject(instrument: str) -> str:
    return f"{FEED_SUBJECT_PREFIX}.{instrument}"


# NATS request/reply: orders sent on the query service's /stream go to the command service.
ORDER_REQUEST_SUBJECT = "exchange.orders.submit"

# NATS request/reply between command nodes (issue 14): a node forwards a command for an instrument
# it does not own to the owner, which alone subscribes to the instrument's subject. Internal: the
# principal in these requests was authenticated by the sending node and is trusted only here.
NODE_COMMAND_SUBJECT_PREFIX = "exchange.internal.command"  # exchange.internal.command.<instrument>


def node_command_subject(instrument: str) -> str:
    return f"{NODE_COMMAND_SUBJECT_PREFIX}.{instrument}"


# Replies to NATS requests go to an inbox under the requester's own prefix (issue 20): each NATS
# user may subscribe only to its own replies (ops/stack/servers.py nats_permissions).
def inbox_prefix(user: str) -> str:
    return f"_INBOX.{user}"


# PostgreSQL NOTIFY channel: the journal writer notifies it in each batch's transaction (delivered at
# commit) with the instrument as payload; the relay leader LISTENs on it.
JOURNAL_NOTIFY_CHANNEL = "exchange_events"

# NATS: after the broker acknowledged a round, the relay announces what the topic's partitions now end
# at; the projectors fetch only then (issue 19: Tansu answers an empty fetch only when its wait
# expires, so fetching without news was the idle cost of the read side). Not a PostgreSQL NOTIFY:
# PostgreSQL wakes every listening session of the database at every commit's notify (~20 us of its
# CPU per listener and commit, measured), whichever channel it listens to.
RELAYED_SUBJECT = "exchange.relayed"


def relayed_notice(topic: str, ends: dict[int, int]) -> str:
    """`<topic> <partition>:<end offset> ...`: the end offset is the next offset to be written."""
    return " ".join([topic, *(f"{p}:{end}" for p, end in sorted(ends.items()))])


def parse_relayed_notice(payload: str | bytes) -> tuple[str, dict[int, int]]:
    """The inverse of relayed_notice; ValueError on anything else."""
    if isinstance(payload, bytes):
        payload = payload.decode()
    topic, *parts = payload.split(" ")
    if not topic:
        raise ValueError(f"no topic in relayed notice {payload!r}")
    ends = {}
    for part in parts:
        p, _, end = part.partition(":")
        ends[int(p)] = int(end)
    return topic, ends
