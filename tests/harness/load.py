"""Steady acks=all idempotent production while cluster nodes fail, and the
audit of what the log holds afterwards.

`ProducerLoad` (confluent-kafka, its own thread) sends message n to partition
n % partitions at a steady pace and records, for each n, the (partition,
offset) its delivery report gave, every delivery failure, and every error the
client reported through `error_cb`. `audit` reads every partition from the
start and requires what `crash.audit` requires (offsets dense from 0, each
message stored once, in its own partition, with the bytes sent, every
acknowledged one at its acknowledged offset) and that nothing is stored that
was never sent.
"""
from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaError, Producer

from . import clients, crash
from .procs import wait_until

# What librdkafka reports through error_cb about connections (a broker went
# away, nothing answers); it handles them itself by reconnecting, refreshing
# metadata and retrying what was in flight.
CONNECTION_ERRORS = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
                     KafkaError._TIMED_OUT}


class ProducerLoad:
    """`rate` messages per second in bursts of `burst`, until `stop()` (or the end of a
    `with` block), which flushes and requires every message to be answered."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: int = 1000, burst: int = 50,
                 **overrides):
        conf = {
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "message.timeout.ms": 180_000, "queue.buffering.max.messages": 50_000,
            # A paused broker holds requests without answering. Give up on one after 10 s
            # (the client then retries it, same producer id and sequence numbers, after a
            # metadata refresh) instead of librdkafka's 60 s, to keep the tests short.
            "socket.timeout.ms": 10_000,
            "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 1000,
            "error_cb": self._on_client_error,
        }
        conf.update(overrides)
        self.producer = Producer(conf)
        self.topic = topic
        self.partitions = partitions
        self.rate, self.burst = rate, burst
        self.sent = 0
        self.acked: dict[int, tuple[int, int]] = {}  # n -> (partition, offset) from its delivery report
        self.acks_per_partition = [0] * partitions
        self.failed: dict[int, str] = {}             # n -> delivery error
        self.client_errors: list[KafkaError] = []    # from error_cb, in order
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer-load", daemon=True)

    # --- callbacks (run on the load thread, inside poll/flush)
    def _on_delivery(self, err, msg):
        n = crash.seq_of(msg.value())
        if err is None:
            self.acked[n] = (msg.partition(), msg.offset())
            self.acks_per_partition[msg.partition()] += 1
        else:
            self.failed[n] = f"{err.name()}: {err.str()} (retriable={err.retriable()}, fatal={err.fatal()})"

    def _on_client_error(self, err):
        self.client_errors.append(err)

    def _run(self):
        period = self.burst / self.rate
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                for _ in range(self.burst):
                    n = self.sent
                    while True:
                        try:
                            self.producer.produce(self.topic, value=crash.payload(n), key=b"k%d" % n,
                                                  partition=n % self.partitions, on_delivery=self._on_delivery)
                            break
                        except BufferError:  # the local queue is full: the cluster is behind
                            self.producer.poll(0.05)
                            if self._stop.is_set():
                                return
                    self.sent += 1
                self.producer.poll(0)
                next_at += period
                while (delay := next_at - time.monotonic()) > 0:
                    self.producer.poll(delay)
                if next_at < time.monotonic() - 1:
                    next_at = time.monotonic()  # fell behind: do not burst to catch up
        except BaseException as e:  # noqa: BLE001 - re-raised by stop()
            self.error = e

    # --- control
    def start(self) -> "ProducerLoad":
        self._thread.start()
        return self

    def stop(self, flush_timeout: float = 150.0) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "producer thread did not stop"
        if self.error:
            raise self.error
        left = self.producer.flush(flush_timeout)
        assert left == 0, f"{left} messages neither acknowledged nor failed {flush_timeout:.0f}s after the load " \
                          f"stopped; {self.describe()}"

    def __enter__(self) -> "ProducerLoad":
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
        else:  # the test already failed; do not hide why
            self._stop.set()
            self._thread.join(30)
            self.producer.flush(5)

    # --- observation
    def acks_on(self, partitions) -> int:
        counts = list(self.acks_per_partition)
        return sum(counts[p] for p in partitions)

    def wait_acks(self, at_least: int, timeout: float, partitions=None, what: str = "") -> None:
        """Until `at_least` more acknowledgements arrive: in all, or on each of `partitions`."""
        def short() -> list:
            counts = list(self.acks_per_partition)
            if partitions is None:
                return [] if sum(counts) >= total_base + at_least else ["all"]
            return [p for p in partitions if counts[p] < base[p] + at_least]
        base = list(self.acks_per_partition)
        total_base = sum(base)
        where = "in all" if partitions is None else f"on each of partitions {list(partitions)}"
        wait_until(lambda: not short() or self.error, timeout, f"{at_least} more acknowledgements {where} {what}",
                   on_fail=lambda: f"short: {short()}; {self.describe()}")
        if self.error:
            raise self.error

    def non_retriable_client_errors(self) -> list[str]:
        """error_cb errors a client cannot ride out: fatal ones (e.g. the idempotent
        producer's OUT_OF_ORDER_SEQUENCE_NUMBER), or neither retriable nor about a connection."""
        return [f"{e.name()}: {e.str()}" for e in self.client_errors
                if e.fatal() or not (e.retriable() or e.code() in CONNECTION_ERRORS)]

    def describe(self) -> str:
        names: dict[str, int] = {}
        for e in self.client_errors:
            names[e.name()] = names.get(e.name(), 0) + 1
        return (f"sent {self.sent}, acknowledged {len(self.acked)} (per partition {list(self.acks_per_partition)}), "
                f"delivery failures {len(self.failed)} (e.g. {list(self.failed.items())[:3]}), "
                f"client errors {names}")

    def assert_clean(self) -> None:
        """Every message acknowledged, nothing the client could not retry."""
        assert not self.failed, f"{len(self.failed)} delivery failures; {self.describe()}"
        bad = self.non_retriable_client_errors()
        assert not bad, f"non-retriable client errors: {bad[:5]}; {self.describe()}"
        assert len(self.acked) == self.sent, f"not every message acknowledged; {self.describe()}"


def audit(bootstrap: str, topic: str, load: ProducerLoad) -> dict[int, list[clients.Rec]]:
    """Reads the whole topic back and checks it against what `load` sent and was told."""
    log = clients.consume_confluent(bootstrap, topic, list(range(load.partitions)), timeout=180)
    crash.audit(log, load.acked, load.partitions)
    stored = [crash.seq_of(r.value) for recs in log.values() for r in recs]
    never_sent = [n for n in stored if n >= load.sent]
    assert not never_sent, f"{len(never_sent)} stored messages were never sent, e.g. {never_sent[:5]}"
    return log
