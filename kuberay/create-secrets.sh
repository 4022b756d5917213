#!/usr/bin/env bash
# Create the one Secret every manifest references (aircast-secrets), with random values.
# No secret value lives in the manifests. Run once per cluster, before `kubectl apply -k`:
#   kuberay/create-secrets.sh [namespace]
# Rotate: delete the Secret, run again, restart the pods (and re-run influxdb-provision).
set -euo pipefail
namespace="${1:-aircast}"
rand() { openssl rand -hex 24; }
kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"
kubectl -n "$namespace" create secret generic aircast-secrets \
  --from-literal=redis-password="$(rand)" \
  --from-literal=influxdb-admin-password="$(rand)" \
  --from-literal=influxdb-admin-token="$(rand)" \
  --from-literal=influxdb-app-password="$(rand)" \
  --from-literal=influxdb-grafana-password="$(rand)" \
  --from-literal=serve-admin-token="$(rand)" \
  --from-literal=grafana-admin-password="$(rand)"
echo "secret aircast-secrets created in namespace $namespace"
