"""oxbow with an S3-compatible object store (s3s-fs): round trip and kill -9.

s3s-fs maps each bucket to a directory under its root; the fixture creates the
bucket directory before starting it. oxbow reaches it through AWS_ENDPOINT_URL
(plain http, path-style) with --object-store s3://bucket/prefix.
"""
from __future__ import annotations

import pytest

from harness import clients, crash, env
from harness import s3 as s3api

MESSAGES = env.env_int("OXBOW_TEST_S3_MESSAGES", 5_000)
PREFIX = "oxbow-e2e"
# The cluster target always runs on s3s-fs; these check one `oxbow server` on it.
ONE_SERVER_ON_S3 = pytest.mark.single_process("one oxbow server on s3s-fs, restarted and killed")


def test_s3s_fs_fixture_serves_the_bucket(s3):
    """The fixture itself: signed PUT, GET and list work against the bucket directory."""
    status, body = s3api.request(s3.endpoint, s3.access_key, s3.secret_key, s3.region, "PUT",
                              f"/{s3.bucket}/probe/hello.txt", body=b"hello")
    assert status == 200, (status, body[:300])
    status, body = s3api.request(s3.endpoint, s3.access_key, s3.secret_key, s3.region, "GET",
                              f"/{s3.bucket}/probe/hello.txt")
    assert (status, body) == (200, b"hello")
    assert s3api.list_keys(s3, "probe/") == ["probe/hello.txt"]
    status, _ = s3api.request(s3.endpoint, s3.access_key, "wrong-secret", s3.region, "GET",
                           f"/{s3.bucket}/probe/hello.txt")
    assert status == 403, f"s3s-fs accepted a bad signature ({status}); credentials are not being checked"


@pytest.fixture
def oxbow_on_s3(server_factory, s3):
    return server_factory("oxbow", object_store=f"s3://{s3.bucket}/{PREFIX}", extra_env=s3.client_env())


@pytest.mark.oxbow_only
@ONE_SERVER_ON_S3
def test_round_trip_on_s3(oxbow_on_s3, s3, topic_name):
    server = oxbow_on_s3
    clients.create_topic(server.bootstrap, topic_name, 4)
    messages = clients.make_messages(MESSAGES, 4, "s3-zstd")
    acked = clients.produce_confluent(server.bootstrap, topic_name, messages, compression_type="zstd")
    got = clients.consume_confluent(server.bootstrap, topic_name, [0, 1, 2, 3])
    clients.check_exactly_once_in_order(messages, got)
    assert sorted(acked) == sorted((r.partition, r.offset) for rs in got.values() for r in rs)
    keys = s3api.list_keys(s3, PREFIX + "/")
    assert keys, f"nothing stored in s3://{s3.bucket}/{PREFIX}/ although {MESSAGES} messages were acknowledged"

    # And it all comes back after a restart, read from S3.
    server.stop()
    server.restart()
    clients.check_exactly_once_in_order(
        messages, clients.consume_confluent(server.bootstrap, topic_name, [0, 1, 2, 3]))


@pytest.mark.oxbow_only
@ONE_SERVER_ON_S3
def test_kill9_on_s3_loses_nothing_acknowledged(oxbow_on_s3, topic_name):
    stats = crash.run_crash_check(oxbow_on_s3, topic_name, partitions=2)
    print(f"crash check on s3: {stats}")
