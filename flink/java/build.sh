#!/usr/bin/env bash
# Builds the Flink job's JVM functions (aircast.flink: the FastSplit lane, the
# FirstSeen dedupe, the Windows aggregates) into a jar.
#   flink/java/build.sh <folder of Flink's jars> <jar to write>
# Locally (make setup): the jars PyFlink ships, .venv-flink/.../pyflink/lib; in the
# image (kuberay/images/flink/Dockerfile): /opt/flink/lib.
set -euo pipefail
lib=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
classes=$(mktemp -d)
trap 'rm -rf "$classes"' EXIT
javac --release 11 -nowarn -encoding UTF-8 -cp "$lib/*" -d "$classes" \
  "$here"/aircast/flink/*.java
ls "$classes"/aircast/flink/{FastSplit,FirstSeen,Windows}.class >/dev/null
mkdir -p "$(dirname "$out")"
jar --create --file "$out" -C "$classes" .
echo "built $out"
