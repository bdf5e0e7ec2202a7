"""Old request versions that older clients still send, in raw bytes: every version we
advertise must be answered, in that version's shape. (aiokafka's ListOffsets v1 once got
its connection closed: the answer carried a leader epoch, a v4+ field.)
"""
from __future__ import annotations

import struct

from harness.clients import Msg, create_topic, produce_confluent
from harness.wire import Connection, i8, i32, i64, string

API_LIST_OFFSETS = 2
LATEST, EARLIEST = -1, -2


def list_offsets_request(version: int, topic: str, partition: int, timestamp: int) -> bytes:
    body = i32(-1)  # replica id: a consumer
    if version >= 2:
        body += i8(0)  # isolation level
    return body + i32(1) + string(topic) + i32(1) + i32(partition) + i64(timestamp)


def parse_list_offsets(version: int, body: bytes) -> tuple[int, int, int]:
    """(error code, timestamp, offset) of the only partition in a v1-v3 answer."""
    pos = 4 if version >= 2 else 0  # throttle time
    (topics,) = struct.unpack_from(">i", body, pos)
    assert topics == 1, body
    (name_len,) = struct.unpack_from(">h", body, pos + 4)
    pos += 6 + name_len
    (partitions,) = struct.unpack_from(">i", body, pos)
    assert partitions == 1, body
    _partition, error, timestamp, offset = struct.unpack_from(">ihqq", body, pos + 4)
    return error, timestamp, offset


def test_list_offsets_v1_to_v3(server, topic_name):
    create_topic(server.bootstrap, topic_name, 1)
    produce_confluent(server.bootstrap, topic_name, [Msg(0, b"k", b"v") for _ in range(7)])
    with Connection(server.host, server.port) as conn:
        for version in (1, 2, 3):
            for spec, expected in ((LATEST, 7), (EARLIEST, 0)):
                cid = conn.send_request(API_LIST_OFFSETS, version,
                                        list_offsets_request(version, topic_name, 0, spec))
                error, _timestamp, offset = parse_list_offsets(version, conn.read_response(cid))
                assert (error, offset) == (0, expected), f"v{version} {spec}: {error=} {offset=}"
