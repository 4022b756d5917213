#!/usr/bin/env bash
# The one Secret the manifests reference besides Strimzi's (aircast-secrets), with random
# values. No secret value lives in the manifests, and none goes through a command line
# here either (values travel in files of a private temporary directory).
#
#   kuberay/create-secrets.sh [namespace]                create it, or add the keys it lacks
#   kuberay/create-secrets.sh [namespace] --rotate KEY   give KEY a new random value
#
# Run once per cluster before `kubectl apply -k`, and again after an upgrade that adds a
# key (existing values are kept). After --rotate, restart what reads KEY: kuberay/README.md,
# "Rotating secrets". Kafka passwords are not here: Strimzi's User Operator keeps one
# Secret per KafkaUser (kafka/users.yaml).
set -euo pipefail
namespace="${1:-aircast}"
rotate=""
if [[ "${2:-}" == "--rotate" ]]; then
  rotate="${3:?--rotate needs a key}"
fi
secret=aircast-secrets
keys=(
  redis-password             # the application cache (redis)
  redis-gcs-password         # the Ray GCS store (redis-gcs)
  influxdb-admin-password    # InfluxDB's first admin (set up once)
  influxdb-admin-token       # its operator token (set up once; influxdb-provision uses it)
  influxdb-app-password      # v1 user aircast (collectors, Serve, training)
  influxdb-grafana-password  # v1 user grafana (read only)
  serve-admin-token          # the Serve API's admin endpoints
  grafana-admin-password     # Grafana's admin
)
if [[ -n "$rotate" && ! " ${keys[*]} " == *" $rotate "* ]]; then
  echo "unknown key $rotate (one of: ${keys[*]})" >&2
  exit 2
fi

umask 077
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
# Hex: safe in every place a value lands (Redis's config file, URLs, YAML).
new_value() { printf '%s' "$(openssl rand -hex 24)" > "$workdir/$1"; }

if ! kubectl get namespace "$namespace" >/dev/null 2>&1; then
  kubectl create namespace "$namespace"
  kubectl label namespace "$namespace" pod-security.kubernetes.io/enforce=restricted
fi

if ! kubectl -n "$namespace" get secret "$secret" >/dev/null 2>&1; then
  for key in "${keys[@]}"; do new_value "$key"; done
  kubectl -n "$namespace" create secret generic "$secret" --from-file="$workdir"
  echo "secret $secret created in namespace $namespace"
  exit 0
fi

# Existing Secret: the keys it lacks (or the one to rotate) get new values, in one patch.
existing="$(kubectl -n "$namespace" get secret "$secret" -o go-template='{{range $k, $v := .data}}{{$k}} {{end}}')"
wanted=()
for key in "${keys[@]}"; do
  if [[ "$key" == "$rotate" || ! " $existing " == *" $key "* ]]; then
    new_value "$key"
    wanted+=("$key")
  fi
done
if [[ ${#wanted[@]} -eq 0 ]]; then
  echo "secret $secret in namespace $namespace has every key; nothing to do"
  exit 0
fi
{
  printf '{"data": {'
  sep=""
  for key in "${wanted[@]}"; do
    printf '%s"%s": "%s"' "$sep" "$key" "$(base64 -w0 < "$workdir/$key")"
    sep=", "
  done
  printf '}}\n'
} > "$workdir/patch.json"
kubectl -n "$namespace" patch secret "$secret" --type merge --patch-file "$workdir/patch.json"
echo "secret $secret in namespace $namespace: new values for ${wanted[*]}"
