"""Kafka wire bytes built by hand, for tests that must send what no client would.

Layouts follow the Kafka protocol guide: every request is an int32 size and then
a header (v1: api_key int16, api_version int16, correlation_id int32,
client_id nullable string; v2 adds a tagged-field section), then the body.
Record batches are magic v2 with a CRC-32C over everything from `attributes` on.
"""
from __future__ import annotations

import socket
import struct
import time

API_PRODUCE = 0
API_METADATA = 3
API_API_VERSIONS = 18
API_INIT_PRODUCER_ID = 22

ERR_NONE = 0
ERR_CORRUPT_MESSAGE = 2

# --- CRC-32C (Castagnoli), table driven; small inputs only.
_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- primitive encoders
def i8(v): return struct.pack(">b", v)
def i16(v): return struct.pack(">h", v)
def i32(v): return struct.pack(">i", v)
def i64(v): return struct.pack(">q", v)
def u32(v): return struct.pack(">I", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def varint(v: int) -> bytes:
    """Zig-zag varint (record fields)."""
    z = (v << 1) ^ (v >> 63)
    return uvarint(z & 0xFFFFFFFFFFFFFFFF)


def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def request_header(api_key: int, api_version: int, correlation_id: int, client_id: str | None = "oxbow-e2e",
                   version: int = 1) -> bytes:
    h = i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id)
    if version >= 2:
        h += uvarint(0)  # no tagged fields
    return h


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes from `sock`; ConnectionError if it closes first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def frame(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


# --- record batches
def record(offset_delta: int, key: bytes | None, value: bytes | None, timestamp_delta: int = 0) -> bytes:
    body = i8(0) + varint(timestamp_delta) + varint(offset_delta)
    body += varint(-1) if key is None else varint(len(key)) + key
    body += varint(-1) if value is None else varint(len(value)) + value
    body += varint(0)  # no headers
    return varint(len(body)) + body


def record_batch(records: list[tuple[bytes | None, bytes | None]], base_timestamp: int | None = None,
                 magic: int = 2, count: int | None = None, length_delta: int = 0,
                 producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1) -> bytes:
    """An uncompressed batch with a correct CRC and no producer id; `magic`, `count` (the
    records count field, covered by the CRC) and `length_delta` (added to batchLength, which
    the CRC does not cover) let a test build a batch that lies about itself."""
    ts = int(time.time() * 1000) if base_timestamp is None else base_timestamp
    recs = b"".join(record(i, k, v) for i, (k, v) in enumerate(records))
    after_crc = (i16(0)                       # attributes: no compression, create time
                 + i32(len(records) - 1)      # lastOffsetDelta
                 + i64(ts) + i64(ts)          # baseTimestamp, maxTimestamp
                 + i64(producer_id) + i16(producer_epoch) + i32(base_sequence)
                 + i32(len(records) if count is None else count) + recs)
    crc = crc32c(after_crc)
    after_length = i32(0) + i8(magic) + u32(crc) + after_crc  # partitionLeaderEpoch, magic, crc
    return i64(0) + i32(len(after_length) + length_delta) + after_length


def produce_request_v7(topic: str, partition: int, batch: bytes, acks: int = -1, timeout_ms: int = 10000) -> bytes:
    return (string(None) + i16(acks) + i32(timeout_ms)
            + i32(1) + string(topic)
            + i32(1) + i32(partition) + i32(len(batch)) + batch)


def parse_produce_response_v7(body: bytes) -> list[tuple[str, int, int, int]]:
    """[(topic, partition, error_code, base_offset)] from a Produce v7 response body."""
    r = _Reader(body)
    out = []
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            index, err, base = r.i32(), r.i16(), r.i64()
            r.i64()  # log_append_time_ms
            r.i64()  # log_start_offset
            out.append((name, index, err, base))
    r.i32()  # throttle_time_ms
    return out


def init_producer_id_v1(conn: "Connection") -> tuple[int, int]:
    """InitProducerId v1 for an idempotent (non-transactional) producer: (producer_id, epoch).
    Retries for up to 30 s on the retriable COORDINATOR_LOAD_IN_PROGRESS / _NOT_AVAILABLE."""
    deadline = time.monotonic() + 30
    while True:
        cid = conn.send_request(API_INIT_PRODUCER_ID, 1, string(None) + i32(60000))
        r = _Reader(conn.read_response(cid))
        r.i32()  # throttle_time_ms
        err, pid, epoch = r.i16(), r.i64(), r.i16()
        if err == ERR_NONE:
            return pid, epoch
        if err not in (14, 15) or time.monotonic() > deadline:
            raise AssertionError(f"InitProducerId answered error {err}")
        time.sleep(0.2)


def parse_api_versions_v0(body: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    r = _Reader(body)
    err = r.i16()
    keys = {}
    n = r.i32()
    for _ in range(max(n, 0)):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        keys[k] = (lo, hi)
    return err, keys


class _Reader:
    def __init__(self, b: bytes):
        self.b, self.pos = b, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.b):
            raise ValueError(f"short response: need {n} bytes at {self.pos}, have {len(self.b)}")
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v

    def i16(self): return struct.unpack(">h", self.take(2))[0]
    def i32(self): return struct.unpack(">i", self.take(4))[0]
    def i64(self): return struct.unpack(">q", self.take(8))[0]

    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode()


# --- a connection
class Connection:
    """One TCP connection speaking raw Kafka frames, with a bounded timeout on every call."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.next_correlation = 1

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send_request(self, api_key: int, api_version: int, body: bytes, header_version: int = 1) -> int:
        cid = self.next_correlation
        self.next_correlation += 1
        self.send_raw(frame(request_header(api_key, api_version, cid, version=header_version) + body))
        return cid

    def _read_exact(self, n: int) -> bytes:
        return recv_exact(self.sock, n)

    def read_response(self, expect_correlation: int, flexible_header: bool = False) -> bytes:
        (size,) = struct.unpack(">i", self._read_exact(4))
        if size < 4 or size > 64 * 1024 * 1024:
            raise ValueError(f"implausible response size {size}")
        payload = self._read_exact(size)
        (cid,) = struct.unpack(">i", payload[:4])
        if cid != expect_correlation:
            raise ValueError(f"correlation id {cid}, expected {expect_correlation}")
        body = payload[4:]
        if flexible_header:
            # Skip the response header's tagged fields (we never expect any).
            assert body[0] == 0, "unexpected tagged fields in response header"
            body = body[1:]
        return body

    def closed_by_peer(self, wait: float = 5.0) -> bool:
        """True if the server closes this connection (EOF or reset) within `wait` seconds."""
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def api_versions(self) -> dict[int, tuple[int, int]]:
        cid = self.send_request(API_API_VERSIONS, 0, b"")
        err, keys = parse_api_versions_v0(self.read_response(cid))
        if err != ERR_NONE:
            raise AssertionError(f"ApiVersions v0 answered error {err}")
        return keys


def api_versions_ok(host: str, port: int, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """ApiVersions v0 on a fresh connection; returns the supported ranges."""
    with Connection(host, port, timeout) as c:
        return c.api_versions()
