"""The Apache Kafka 4.1.1 command-line tools, run as Java main classes from the Maven jars.

`kafka-topics.sh` is org.apache.kafka.tools.TopicCommand, and so on; each run is
bounded by a timeout after which the JVM is killed.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

from . import env

TOPICS = "org.apache.kafka.tools.TopicCommand"
CONSOLE_PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
PRODUCER_PERF = "org.apache.kafka.tools.ProducerPerformance"
CONSUMER_PERF = "org.apache.kafka.tools.ConsumerPerformance"


@dataclass
class ToolResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return (f"$ {' '.join(self.argv[-12:])}\nexit {self.returncode}\n--- stdout (tail)\n"
                f"{self.stdout[-3000:]}\n--- stderr (tail)\n{self.stderr[-3000:]}")


def run(main_class: str, *args: str, timeout: float = 120.0, input_text: str | None = None,
        log_level: str = "warn") -> ToolResult:
    if not (env.KAFKA_CLI_LIBS / "kafka-tools-4.1.1.jar").exists():
        raise RuntimeError(f"Kafka CLI jars missing in {env.KAFKA_CLI_LIBS}; run scripts/setup.sh")
    argv = ["java", "-Xmx512m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
            f"-Dorg.slf4j.simpleLogger.defaultLogLevel={log_level}",
            "-cp", f"{env.KAFKA_CLI_LIBS}/*", main_class, *[str(a) for a in args]]
    try:
        p = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=timeout,
                           stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode("utf-8", "replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"{main_class} timed out after {timeout}s\n--- stdout\n{out[-3000:]}\n"
                             f"--- stderr\n{err[-3000:]}") from None
    return ToolResult(argv, p.returncode, p.stdout, p.stderr)


def run_ok(main_class: str, *args: str, **kw) -> ToolResult:
    r = run(main_class, *args, **kw)
    assert r.returncode == 0, f"{main_class} failed:\n{r.describe()}"
    return r
