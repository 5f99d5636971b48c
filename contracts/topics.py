"""Names of the Kafka topic and the NATS subjects, defined once for both services."""

from collections.abc import Sequence

import msgspec

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
# at, and carries the round's records with it; the projectors apply those at once and fetch from the
# broker only what a notice did not bring (issue 19: Tansu answers an empty fetch only when its wait
# expires, so fetching without news was the idle cost of the read side, and each fetch of news cost
# the broker and the replica ~1 ms of CPU). Not a PostgreSQL NOTIFY: PostgreSQL wakes every listening
# session of the database at every commit's notify (~20 us of its CPU per listener and commit,
# measured), whichever channel it listens to.
RELAYED_SUBJECT = "exchange.relayed"


class RelayedRecords(msgspec.Struct, array_like=True, frozen=True):
    """One acknowledged record batch as the broker holds it: its partition, the offset of its
    first record, and the records' values (journal payloads) in offset order."""

    partition: int
    base: int
    values: list[bytes]


class RelayedNotice(msgspec.Struct, array_like=True, frozen=True):
    """`ends`: per partition written, the next offset to be written. `records`: the round's batches
    (empty when the round was too large to carry: the projectors then fetch it)."""

    topic: str
    ends: dict[int, int]
    records: list[RelayedRecords] = []


_notice_encoder = msgspec.msgpack.Encoder()
_notice_decoder = msgspec.msgpack.Decoder(RelayedNotice)


def relayed_notice(topic: str, ends: dict[int, int], records: Sequence[RelayedRecords] = ()) -> bytes:
    return _notice_encoder.encode(RelayedNotice(topic, dict(sorted(ends.items())), list(records)))


def parse_relayed_notice(payload: str | bytes) -> RelayedNotice:
    """The inverse of relayed_notice; also reads the text notice of relays before records were
    carried (`<topic> <partition>:<end> ...`: ends only). ValueError on anything else."""
    if isinstance(payload, (bytes, bytearray, memoryview)) and payload[:1] and 0x90 <= payload[0] <= 0x9F:
        try:
            notice = _notice_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise ValueError(f"unreadable relayed notice: {exc}") from None
        if not notice.topic:
            raise ValueError("no topic in relayed notice")
        return notice
    if not isinstance(payload, str):
        try:
            payload = bytes(payload).decode()
        except UnicodeDecodeError:
            raise ValueError("unreadable relayed notice") from None
    topic, *parts = payload.split(" ")
    if not topic:
        raise ValueError(f"no topic in relayed notice {payload!r}")
    ends = {}
    for part in parts:
        p, _, end = part.partition(":")
        ends[int(p)] = int(end)
    return RelayedNotice(topic, ends)
