#!/usr/bin/env bash
# Compile conf/bundle/src into jars/ops/flink-anonymizer-ops.jar, against the Flink jars PyFlink ships
# (so it is built for the Flink the job runs on). Idempotent: jars/.stamp-ops holds the sha256 of the sources.
# Usage: bash conf/bundle/build.sh PYTHON
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${1:?usage: build.sh PYTHON}"
src="$root/conf/bundle/src"
jar="$root/jars/ops/flink-anonymizer-ops.jar"
stamp="$root/jars/.stamp-ops"

want="$(find "$src" -name '*.java' -type f | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
if [[ -f "$jar" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
if ! command -v javac >/dev/null; then
    echo "build.sh: javac not found; install a JDK 17" >&2
    exit 1
fi
lib="$("$python" -c 'import os, pyflink; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')"
classes="$(mktemp -d)"
trap 'rm -rf "$classes"' EXIT
javac --release 11 -nowarn -cp "$lib/*" -d "$classes" $(find "$src" -name '*.java' -type f | sort)
mkdir -p "$(dirname "$jar")"
jar cf "$jar.tmp" -C "$classes" .
mv "$jar.tmp" "$jar"
echo "$want" >"$stamp"
echo "build.sh: $jar built"
