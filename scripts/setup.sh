#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, idempotently:
# the s3s-fs S3-compatible test server, a Python venv with the Kafka clients,
# and the Apache Kafka CLI tools / Java client jars from Maven Central.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Tools are cached outside the clone so that a fresh clone on the same machine reuses them.
tools="${OXBOW_TOOLS:-$HOME/.cache/oxbow-tools}"
mkdir -p "$tools"

s3s_version=0.14.1
if [ ! -x "$tools/bin/s3s-fs" ]; then
  echo "setup: installing s3s-fs $s3s_version into $tools" >&2
  cargo install --quiet --locked --root "$tools" --features binary --version "$s3s_version" s3s-fs
fi

if [ ! -x "$root/.venv/bin/python" ]; then
  echo "setup: creating Python venv" >&2
  python3 -m venv "$root/.venv"
fi
if ! cmp -s "$root/tests/requirements.txt" "$root/.venv/.installed-requirements" 2>/dev/null; then
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/tests/requirements.txt"
  cp "$root/tests/requirements.txt" "$root/.venv/.installed-requirements"
fi

if ! cmp -s "$root/tests/java/pom.xml" "$tools/kafka-libs/.pom" 2>/dev/null; then
  echo "setup: fetching Kafka CLI jars from Maven Central" >&2
  rm -rf "$tools/kafka-libs"
  mvn -q -B -f "$root/tests/java/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tools/kafka-libs" -DincludeScope=runtime
  cp "$root/tests/java/pom.xml" "$tools/kafka-libs/.pom"
fi

# Only to check the end-to-end tests themselves against Apache Kafka (OXBOW_TEST_TARGET=kafka).
if [ "${OXBOW_TEST_TARGET:-oxbow}" = kafka ] \
    && ! cmp -s "$root/tests/java/kafka-broker/pom.xml" "$tools/kafka-broker-libs/.pom" 2>/dev/null; then
  echo "setup: fetching the Apache Kafka broker jars from Maven Central" >&2
  rm -rf "$tools/kafka-broker-libs"
  mvn -q -B -f "$root/tests/java/kafka-broker/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tools/kafka-broker-libs" -DincludeScope=runtime
  cp "$root/tests/java/kafka-broker/pom.xml" "$tools/kafka-broker-libs/.pom"
fi
