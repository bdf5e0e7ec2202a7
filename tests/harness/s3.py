"""A minimal S3 client (AWS Signature V4, path-style, plain http) for checking what
a test S3 server holds. Enough for PUT, GET and ListObjectsV2; nothing more."""
from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def request(endpoint: str, access_key: str, secret_key: str, region: str, method: str, path: str,
            query: dict | None = None, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    url = urllib.parse.urlsplit(endpoint)
    host = url.netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    canonical_path = urllib.parse.quote(path, safe="/-_.~")
    q = sorted((query or {}).items())
    canonical_query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(str(v), safe='-_.~')}"
                               for k, v in q)
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, canonical_path, canonical_query,
                           "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = _sign(_sign(_sign(_sign(("AWS4" + secret_key).encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    req = urllib.request.Request(f"{endpoint}{canonical_path}" + (f"?{canonical_query}" if q else ""),
                                 data=body if method in ("PUT", "POST") else None, method=method)
    for name, value in headers.items():
        if name != "host":
            req.add_header(name, value)
    req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def list_keys(srv, prefix: str = "") -> list[str]:
    """Every key in the server's bucket under `prefix` (ListObjectsV2, following continuation)."""
    keys, token = [], None
    while True:
        query = {"list-type": "2", "prefix": prefix}
        if token:
            query["continuation-token"] = token
        status, body = request(srv.endpoint, srv.access_key, srv.secret_key, srv.region, "GET",
                               f"/{srv.bucket}", query)
        assert status == 200, f"ListObjectsV2 -> {status}: {body[:300]!r}"
        root = ET.fromstring(body)
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        keys += [e.text for e in root.iter(f"{ns}Key")]
        truncated = root.find(f"{ns}IsTruncated")
        if truncated is None or truncated.text != "true":
            return keys
        token = root.find(f"{ns}NextContinuationToken").text
