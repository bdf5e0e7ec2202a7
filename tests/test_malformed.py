"""Hostile and broken bytes on the Kafka port, sent over raw sockets.

For each: the server answers with an error code or closes that one connection,
never crashes, never allocates what a frame merely claims, and still answers
ApiVersions on a new connection afterwards. Layouts: Kafka protocol guide
(request header v1 = api_key, api_version, correlation_id, client_id; v2 adds
tagged fields; responses to ApiVersions always use response header v0).
"""
from __future__ import annotations

import socket
import struct
import time

import pytest

from harness import clients, env, wire
from harness.procs import rss_bytes

RSS_LIMIT = env.env_int("OXBOW_TEST_RSS_LIMIT_MB", 1024) * 1024 * 1024
OVERSIZED_CONNECTIONS = 16


def max_rss(server) -> int:
    """The largest resident set of the processes serving clients (every broker of a cluster)."""
    return max(rss_bytes(pid) for pid in server.pids)


def still_serving(server):
    assert server.running(), f"server exited with code {server.process.returncode()}"
    keys = wire.api_versions_ok(server.host, server.port)
    assert wire.API_API_VERSIONS in keys and wire.API_PRODUCE in keys, keys


def error_or_close(conn: wire.Connection, cid: int, what: str, wait: float = 10.0) -> str:
    """The server must either answer `cid` (with an error code, checked by the caller) or
    close the connection within `wait` seconds; returns 'closed' or the response body."""
    conn.sock.settimeout(wait)
    try:
        head = conn.sock.recv(4)
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    except socket.timeout:
        raise AssertionError(f"{what}: server neither answered nor closed within {wait}s") from None
    if head == b"":
        return "closed"
    conn.sock.settimeout(wait)
    rest = head
    while len(rest) < 4:
        chunk = conn.sock.recv(4 - len(rest))
        if not chunk:
            return "closed"
        rest += chunk
    (size,) = struct.unpack(">i", rest)
    assert 4 <= size <= 1 << 20, f"{what}: implausible response size {size}"
    payload = conn._read_exact(size)
    (got_cid,) = struct.unpack(">i", payload[:4])
    assert got_cid == cid, f"{what}: response for correlation id {got_cid}, expected {cid}"
    return payload[4:]


def supported(server, api_key: int) -> tuple[int, int]:
    keys = wire.api_versions_ok(server.host, server.port)
    assert api_key in keys, f"API {api_key} not advertised: {sorted(keys)}"
    return keys[api_key]


def test_truncated_frame_then_close(server):
    for cut in (1, 3, 4, 10, 20):
        with wire.Connection(server.host, server.port) as c:
            full = wire.frame(wire.request_header(wire.API_API_VERSIONS, 0, 7) + b"")
            c.send_raw(full[:cut] if cut < len(full) else full[:-1])
        # A header that claims more than it carries: declared 100 bytes, 10 sent.
        with wire.Connection(server.host, server.port) as c:
            c.send_raw(wire.i32(100) + b"\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff")
    still_serving(server)


def test_frame_declaring_2_gib_is_refused_without_allocating(server):
    conns = []
    try:
        for _ in range(OVERSIZED_CONNECTIONS):
            c = wire.Connection(server.host, server.port)
            c.send_raw(wire.i32(0x7FFFFFFF) + b"\x00\x12\x00\x00\x00\x00\x00\x01")
            conns.append(c)
        # Keep feeding some bytes: a server that trusts the size would keep buffering.
        for c in conns:
            try:
                c.send_raw(b"\x00" * (256 * 1024))
            except (BrokenPipeError, ConnectionResetError):
                pass
        time.sleep(0.5)
        rss = max_rss(server)
        assert rss < RSS_LIMIT, f"RSS {rss >> 20} MiB after {OVERSIZED_CONNECTIONS} 2-GiB frame claims"
        for c in conns:
            assert c.closed_by_peer(10.0), "connection with a 2 GiB frame size was not closed within 10s"
    finally:
        for c in conns:
            c.close()
    with wire.Connection(server.host, server.port) as c:  # negative size
        c.send_raw(wire.i32(-5) + b"\x00" * 16)
        assert c.closed_by_peer(10.0), "connection with a negative frame size was not closed"
    assert max_rss(server) < RSS_LIMIT
    still_serving(server)


@pytest.mark.parametrize("version", [1, 12])
def test_absurd_array_count(server, version):
    """Metadata whose topics array claims 2^31-1 entries but carries none."""
    lo, hi = supported(server, wire.API_METADATA)
    if not lo <= version <= hi:
        pytest.skip(f"Metadata v{version} not supported ({lo}..{hi})")
    with wire.Connection(server.host, server.port) as c:
        if version >= 9:  # flexible: compact array, count + 1 as unsigned varint; header v2
            body = wire.uvarint(0x7FFFFFFF) + b"\x00" * 8
            cid = c.send_request(wire.API_METADATA, version, body, header_version=2)
        else:
            cid = c.send_request(wire.API_METADATA, version, wire.i32(0x7FFFFFFF))
        out = error_or_close(c, cid, f"Metadata v{version} with 2^31-1 topics")
        # An answer is acceptable only if the server did not pretend to have read 2^31-1 topics.
        if out != "closed":
            assert len(out) < 1 << 20
    assert max_rss(server) < RSS_LIMIT
    still_serving(server)


def test_unknown_api_key(server):
    with wire.Connection(server.host, server.port) as c:
        cid = c.send_request(999, 0, b"\x00" * 8)
        error_or_close(c, cid, "API key 999")
    still_serving(server)


def test_unsupported_api_versions_version_answered_in_v0_format(server):
    """Kafka's rule: an ApiVersions version it does not know gets a v0 body with
    UNSUPPORTED_VERSION (35) and the supported ranges, so the client can retry."""
    with wire.Connection(server.host, server.port) as c:
        cid = c.send_request(wire.API_API_VERSIONS, 127, b"", header_version=2)
        err, keys = wire.parse_api_versions_v0(c.read_response(cid))
        assert err == 35, f"error code {err}, expected 35 (UNSUPPORTED_VERSION)"
        assert wire.API_API_VERSIONS in keys and keys[wire.API_API_VERSIONS][0] == 0, keys
    still_serving(server)


def test_api_versions_v3_exact_flexible_encoding(server):
    lo, hi = supported(server, wire.API_API_VERSIONS)
    assert lo == 0 and hi >= 3, (lo, hi)
    body = wire.uvarint(len(b"oxbow-e2e") + 1) + b"oxbow-e2e" + wire.uvarint(len(b"1.0") + 1) + b"1.0" + wire.uvarint(0)
    with wire.Connection(server.host, server.port) as c:
        cid = c.send_request(wire.API_API_VERSIONS, 3, body, header_version=2)
        resp = c.read_response(cid)  # response header v0 even for v3
    r = wire._Reader(resp)
    assert r.i16() == 0
    n = _read_uvarint(r) - 1
    assert n > 5, f"{n} API keys"
    keys = {}
    for _ in range(n):
        k, kmin, kmax = r.i16(), r.i16(), r.i16()
        _skip_tagged_fields(r)
        keys[k] = (kmin, kmax)
    r.i32()  # throttle_time_ms
    _skip_tagged_fields(r)  # top-level tagged fields (e.g. features) are allowed
    assert r.pos == len(resp), f"{len(resp) - r.pos} trailing bytes after the ApiVersions v3 body"
    assert keys.get(wire.API_API_VERSIONS, (0, 0))[1] >= 3


def _skip_tagged_fields(r) -> None:
    for _ in range(_read_uvarint(r)):
        _read_uvarint(r)  # tag
        r.take(_read_uvarint(r))


def _read_uvarint(r) -> int:
    shift = value = 0
    while True:
        b = r.take(1)[0]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7


def test_produce_with_wrong_crc_is_rejected(server, topic_name):
    clients.create_topic(server.bootstrap, topic_name, 1)
    lo, hi = supported(server, wire.API_PRODUCE)
    assert lo <= 7 <= hi, f"Produce v7 not supported ({lo}..{hi})"
    good = wire.record_batch([(b"k0", b"a valid record"), (None, b"another")])
    bad = bytearray(wire.record_batch([(b"k1", b"this record's CRC will not match")]))
    bad[-5] ^= 0x01  # inside the record value, covered by the CRC

    leader = clients.leader_address(server.bootstrap, topic_name, 0)
    with wire.Connection(*leader) as c:
        cid = c.send_request(wire.API_PRODUCE, 7, wire.produce_request_v7(topic_name, 0, good))
        assert wire.parse_produce_response_v7(c.read_response(cid)) == [(topic_name, 0, wire.ERR_NONE, 0)]

        cid = c.send_request(wire.API_PRODUCE, 7, wire.produce_request_v7(topic_name, 0, bytes(bad)))
        out = error_or_close(c, cid, "Produce with a wrong CRC")
        assert out != "closed", "a batch with a wrong CRC must get CORRUPT_MESSAGE, not a closed connection"
        [(name, part, err, _)] = wire.parse_produce_response_v7(out)
        assert (name, part, err) == (topic_name, 0, wire.ERR_CORRUPT_MESSAGE), (name, part, err)

    # Only the good batch is stored.
    got = clients.consume_confluent(server.bootstrap, topic_name, [0])[0]
    assert [(r.offset, r.key, r.value) for r in got] == [(0, b"k0", b"a valid record"), (1, None, b"another")]
    still_serving(server)


LYING_BATCHES = {
    "length-beyond-data": lambda: wire.record_batch([(b"k", b"v" * 100)], length_delta=1000),
    "length-too-small": lambda: wire.record_batch([(b"k", b"v" * 100)], length_delta=-60),
    "negative-length": lambda: wire.record_batch([(b"k", b"v")], length_delta=-10_000),
    "count-2^31-1": lambda: wire.record_batch([(b"k", b"v")], count=0x7FFFFFFF),
    "count-too-small": lambda: wire.record_batch([(b"k", b"a"), (b"k", b"b"), (b"k", b"c")], count=1),
    "magic-1": lambda: wire.record_batch([(b"k", b"v")], magic=1),
    "magic-3": lambda: wire.record_batch([(b"k", b"v")], magic=3),
    "truncated": lambda: wire.record_batch([(b"k", b"v" * 100)])[:-40],
}


@pytest.mark.parametrize("kind", sorted(LYING_BATCHES))
def test_produce_batch_that_lies_about_itself(server, topic_name, kind):
    """Error code (or close) for the partition, nothing stored, partition still writable."""
    clients.create_topic(server.bootstrap, topic_name, 1)
    leader = clients.leader_address(server.bootstrap, topic_name, 0)
    with wire.Connection(*leader) as c:
        cid = c.send_request(wire.API_PRODUCE, 7, wire.produce_request_v7(topic_name, 0, LYING_BATCHES[kind]()))
        out = error_or_close(c, cid, f"Produce with a {kind} batch")
        if out != "closed":
            [(name, part, err, _)] = wire.parse_produce_response_v7(out)
            assert (name, part) == (topic_name, 0)
            assert err != wire.ERR_NONE, f"a {kind} batch was accepted"
    assert max_rss(server) < RSS_LIMIT
    still_serving(server)
    assert clients.watermarks_confluent(server.bootstrap, topic_name, 0) == (0, 0), "something was stored"
    with wire.Connection(*leader) as c:
        cid = c.send_request(wire.API_PRODUCE, 7, wire.produce_request_v7(
            topic_name, 0, wire.record_batch([(b"k", b"good")])))
        assert wire.parse_produce_response_v7(c.read_response(cid)) == [(topic_name, 0, wire.ERR_NONE, 0)]
