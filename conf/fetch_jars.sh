#!/usr/bin/env bash
# Fetch the Kafka broker and the Flink Kafka connector jars from Maven Central into jars/.
#
# Idempotent: jars/.stamp holds the sha256 of conf/pom.xml from the last successful fetch,
# and the script does nothing while that matches and the jar folders are not empty.
# Usage: bash conf/fetch_jars.sh [--force]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pom="$root/conf/pom.xml"
jars="$root/jars"
stamp="$jars/.stamp"

want="$(sha256sum "$pom" | cut -d' ' -f1)"

have_jars() {
    compgen -G "$jars/kafka/kafka_2.13-*.jar" >/dev/null && compgen -G "$jars/flink/flink-sql-connector-kafka-*.jar" >/dev/null
}

if [[ "${1:-}" != "--force" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && have_jars; then
    exit 0
fi

if ! command -v mvn >/dev/null; then
    echo "fetch_jars: mvn not found; install Maven (apt-get install maven) and a JDK 17" >&2
    exit 1
fi

# Start clean so a changed pom never leaves stale versions beside new ones on the classpath.
rm -rf "$jars/kafka" "$jars/flink" "$stamp"
mkdir -p "$jars"
mvn -q -B -Dstyle.color=never -f "$pom" package
if ! have_jars; then
    echo "fetch_jars: maven finished but the expected jars are missing under $jars" >&2
    exit 1
fi
echo "$want" >"$stamp"
echo "fetch_jars: jars ready in $jars ($(ls "$jars/kafka" | wc -l) broker jars, $(ls "$jars/flink" | wc -l) connector jar)"
