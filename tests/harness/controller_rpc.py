"""Just enough of the controller RPC (proto/src/rpc.rs) to change the quorum's
membership from a test: frames of MessagePack (rmp-serde, named fields)
behind a 4-byte big-endian length; `Hello::Client` first, then `RequestFrame`s
answered by `ResponseFrame`s. Enums are maps of one entry, variant name ->
contents; `Result` is `{"Ok": ..}` or `{"Err": ..}`.

oxbow ships no command for this (see deploy/README.md); the MessagePack
codec below covers only the types these messages use.
"""
from __future__ import annotations

import socket
import struct

from harness.wire import recv_exact

RPC_PROTOCOL_VERSION = 1


# --- MessagePack: nil, bool, int, str, bin, array, map (and floats when decoding)
def pack(v) -> bytes:
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 0x80:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack(">b", v)
        if v >= 0:
            for marker, fmt, top in ((0xcc, ">B", 0xff), (0xcd, ">H", 0xffff), (0xce, ">I", 0xffffffff),
                                     (0xcf, ">Q", 0xffffffffffffffff)):
                if v <= top:
                    return bytes([marker]) + struct.pack(fmt, v)
        for marker, fmt, bits in ((0xd0, ">b", 7), (0xd1, ">h", 15), (0xd2, ">i", 31), (0xd3, ">q", 63)):
            if -(1 << bits) <= v:
                return bytes([marker]) + struct.pack(fmt, v)
        raise ValueError(f"int out of range: {v}")
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xa0 | len(b)]) + b
        return (b"\xd9" + struct.pack(">B", len(b)) if len(b) < 0x100 else b"\xdb" + struct.pack(">I", len(b))) + b
    if isinstance(v, (bytes, bytearray)):
        return b"\xc6" + struct.pack(">I", len(v)) + bytes(v)
    if isinstance(v, (list, tuple)):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdd" + struct.pack(">I", len(v))
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xdf" + struct.pack(">I", len(v))
        return head + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(f"cannot pack {type(v).__name__}")


def unpack(b: bytes):
    value, end = _unpack(b, 0)
    if end != len(b):
        raise ValueError(f"{len(b) - end} bytes left after a MessagePack value")
    return value


def _unpack(b: bytes, i: int):
    m = b[i]
    i += 1

    def take(n):
        if i + n > len(b):
            raise ValueError("truncated MessagePack")
        return b[i:i + n]
    if m < 0x80:
        return m, i
    if m >= 0xe0:
        return m - 0x100, i
    if 0x80 <= m <= 0x8f:
        return _unpack_map(b, i, m & 0x0f)
    if 0x90 <= m <= 0x9f:
        return _unpack_array(b, i, m & 0x0f)
    if 0xa0 <= m <= 0xbf:
        n = m & 0x1f
        return take(n).decode(), i + n
    simple = {0xc0: None, 0xc2: False, 0xc3: True}
    if m in simple:
        return simple[m], i
    fixed = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q",
             0xca: ">f", 0xcb: ">d"}
    if m in fixed:
        n = struct.calcsize(fixed[m])
        return struct.unpack(fixed[m], take(n))[0], i + n
    sized = {0xd9: (">B", "str"), 0xda: (">H", "str"), 0xdb: (">I", "str"),
             0xc4: (">B", "bin"), 0xc5: (">H", "bin"), 0xc6: (">I", "bin"),
             0xdc: (">H", "array"), 0xdd: (">I", "array"), 0xde: (">H", "map"), 0xdf: (">I", "map")}
    if m in sized:
        fmt, kind = sized[m]
        w = struct.calcsize(fmt)
        (n,) = struct.unpack(fmt, take(w))
        i += w
        if kind == "array":
            return _unpack_array(b, i, n)
        if kind == "map":
            return _unpack_map(b, i, n)
        data = b[i:i + n]
        if len(data) != n:
            raise ValueError("truncated MessagePack")
        return (data.decode() if kind == "str" else data), i + n
    raise ValueError(f"unsupported MessagePack marker 0x{m:02x}")


def _unpack_array(b: bytes, i: int, n: int):
    out = []
    for _ in range(n):
        v, i = _unpack(b, i)
        out.append(v)
    return out, i


def _unpack_map(b: bytes, i: int, n: int):
    out = {}
    for _ in range(n):
        k, i = _unpack(b, i)
        v, i = _unpack(b, i)
        out[k] = v
    return out, i


# --- one client connection
class ControllerClient:
    def __init__(self, addr: str, timeout: float = 30.0):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.settimeout(timeout)
        self.next_id = 1
        self._send({"Client": {"protocol": RPC_PROTOCOL_VERSION}})
        reply = self._recv()
        if "Accepted" not in reply:
            raise ConnectionError(f"controller {addr} refused the connection: {reply}")
        self.node_id = reply["Accepted"]["node_id"]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, msg) -> None:
        body = pack(msg)
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def _recv(self):
        (n,) = struct.unpack(">I", recv_exact(self.sock, 4))
        if n > 16 * 1024 * 1024:
            raise ValueError(f"implausible frame length {n}")
        return unpack(recv_exact(self.sock, n))

    def request(self, request: dict) -> dict:
        rid = self.next_id
        self.next_id += 1
        self._send({"id": rid, "request": request})
        frame = self._recv()
        if frame.get("id") != rid:
            raise ValueError(f"answer to request {frame.get('id')}, expected {rid}")
        return frame["response"]

    def change_membership(self, change: dict) -> dict:
        """`{"AddVoter": {"id": 4, "addr": "h:p"}}` or `{"RemoveVoter": {"id": 1}}`; returns
        `{"Ok": {id: addr, ...}}` (the voters after the change) or `{"Err": ...}`."""
        return self.request({"ChangeMembership": change})["MembershipChanged"]
