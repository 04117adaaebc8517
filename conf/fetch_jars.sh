#!/usr/bin/env bash
# Fetch the Kafka broker, the Flink Kafka connector, Kafka Connect and Debezium jars from Maven Central into jars/.
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

# Kafka Connect, Debezium and Apicurio's Avro converter (make cdc-demo, the CDC tests): their own pom and
# folder, jars/connect/, so none of their dependencies reaches the broker's class path. Apicurio's POMs
# declare repositories not reachable here: conf/registry/settings.xml mirrors every one to Central.
connect_pom="$root/conf/connect/pom.xml"
connect_stamp="$jars/.stamp-connect"
fetch_connect() {
    local want_connect
    want_connect="$(sha256sum "$connect_pom" | cut -d' ' -f1)"
    if [[ "${1:-}" != "--force" && -f "$connect_stamp" && "$(cat "$connect_stamp")" == "$want_connect" ]] \
        && compgen -G "$jars/connect/debezium-connector-postgres-*.jar" >/dev/null \
        && compgen -G "$jars/connect/apicurio-registry-utils-converter-*.jar" >/dev/null; then
        return 0
    fi
    rm -rf "$jars/connect" "$connect_stamp"
    mkdir -p "$jars"
    mvn -q -B -Dstyle.color=never -s "$root/conf/registry/settings.xml" -f "$connect_pom" package
    echo "$want_connect" >"$connect_stamp"
    echo "fetch_jars: Kafka Connect, Debezium and the Avro converter ready in $jars/connect ($(ls "$jars/connect" | wc -l) jars)"
}

if [[ "${1:-}" != "--force" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && have_jars; then
    fetch_connect "${1:-}"
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
fetch_connect "${1:-}"
echo "fetch_jars: jars ready in $jars ($(ls "$jars/kafka" | wc -l) broker jars, $(ls "$jars/flink" | wc -l) connector jar)"
