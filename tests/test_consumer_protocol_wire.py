"""KIP-848's ConsumerGroupHeartbeat (v1) in raw bytes: requests a client library would never
send get Kafka's error codes, and a well-formed join is answered with a member epoch and an
assignment. Runs against Apache Kafka too (OXBOW_TEST_TARGET=kafka) to check the expectations.
"""
from __future__ import annotations

import struct
import time
import uuid

from harness.clients import create_topic
from harness.wire import Connection, i16, i32, string, uvarint

API_FIND_COORDINATOR = 10
API_CONSUMER_GROUP_HEARTBEAT = 68

NONE, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR = 0, 14, 15, 16
UNKNOWN_MEMBER_ID, INVALID_REQUEST, GROUP_ID_NOT_FOUND = 25, 42, 69
FENCED_MEMBER_EPOCH, UNSUPPORTED_ASSIGNOR = 110, 112


def cstring(s: str | None) -> bytes:
    """A compact (nullable) string of a flexible version."""
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


def heartbeat_v1(group: str, member: str, epoch: int, rebalance_timeout_ms: int = 30_000,
                 topics: list[str] | None = None, assignor: str | None = None,
                 owned_empty: bool = True) -> bytes:
    body = cstring(group) + cstring(member) + i32(epoch)
    body += cstring(None) + cstring(None)  # instance id, rack id
    body += i32(rebalance_timeout_ms)
    if topics is None:
        body += uvarint(0)
    else:
        body += uvarint(len(topics) + 1) + b"".join(cstring(t) for t in topics)
    body += cstring(None)  # regex
    body += cstring(assignor)
    body += uvarint(1) if owned_empty else uvarint(0)  # empty array / null
    return body + uvarint(0)  # tagged fields


def parse_heartbeat(body: bytes) -> tuple[int, int]:
    """(error code, member epoch) of a ConsumerGroupHeartbeat v1 response."""
    _throttle, error = struct.unpack(">ih", body[:6])
    pos = 6
    for _ in range(2):  # error message, member id
        n, pos = read_uvarint(body, pos)
        pos += max(n - 1, 0)
    (epoch,) = struct.unpack(">i", body[pos:pos + 4])
    return error, epoch


def read_uvarint(b: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = b[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def ask(conn: Connection, body: bytes) -> tuple[int, int]:
    cid = conn.send_request(API_CONSUMER_GROUP_HEARTBEAT, 1, body, header_version=2)
    return parse_heartbeat(conn.read_response(cid, flexible_header=True))


def ready(conn: Connection, group: str, topic: str) -> tuple[int, int]:
    """Joins once the coordinator is up (FindCoordinator creates __consumer_offsets)."""
    cid = conn.send_request(API_FIND_COORDINATOR, 0, string(group))
    conn.read_response(cid)
    deadline = time.monotonic() + 60
    while True:
        answer = ask(conn, heartbeat_v1(group, "member-1", 0, topics=[topic]))
        if answer[0] not in (COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR):
            return answer
        assert time.monotonic() < deadline, f"coordinator not ready: {answer}"
        time.sleep(0.5)


def test_consumer_group_heartbeat_errors_are_kafkas(server, topic_name):
    create_topic(server.bootstrap, topic_name, 2)
    group = f"wire-{uuid.uuid4().hex[:8]}"
    with Connection(server.host, server.port) as conn:
        assert ready(conn, group, topic_name) == (NONE, 1)
        # An epoch ahead of the member's is fenced.
        assert ask(conn, heartbeat_v1(group, "member-1", 7, -1, owned_empty=False))[0] == FENCED_MEMBER_EPOCH
        # Epochs below -2 do not exist.
        assert ask(conn, heartbeat_v1(group, "member-1", -5, -1))[0] == INVALID_REQUEST
        # Joining must name the rebalance timeout, the topics and own nothing.
        assert ask(conn, heartbeat_v1(group, "member-2", 0, -1, topics=[topic_name]))[0] == INVALID_REQUEST
        assert ask(conn, heartbeat_v1(group, "member-2", 0, topics=None))[0] == INVALID_REQUEST
        assert ask(conn, heartbeat_v1(group, "member-2", 0, topics=[topic_name],
                                      owned_empty=False))[0] == INVALID_REQUEST
        # v1 members choose their own id.
        assert ask(conn, heartbeat_v1(group, "", 0, topics=[topic_name]))[0] == INVALID_REQUEST
        assert ask(conn, heartbeat_v1(group, "member-2", 0, topics=[topic_name],
                                      assignor="no-such-assignor"))[0] == UNSUPPORTED_ASSIGNOR
        assert ask(conn, heartbeat_v1("", "member-2", 0, topics=[topic_name]))[0] == INVALID_REQUEST
        # A member nobody knows, in a group that exists and in one that does not.
        assert ask(conn, heartbeat_v1(group, "stranger", 3, -1, owned_empty=False))[0] == UNKNOWN_MEMBER_ID
        assert ask(conn, heartbeat_v1(group + "-none", "stranger", 3, -1,
                                      owned_empty=False))[0] == GROUP_ID_NOT_FOUND
        # The member leaves: epoch -1 comes back.
        assert ask(conn, heartbeat_v1(group, "member-1", -1, -1, owned_empty=False)) == (NONE, -1)
