#!/usr/bin/env bash
# Runs a local Warden cluster: nats-server with JetStream in operator mode over TLS, one control
# plane and three Wardens, each a separate process with its own state directory under
# run/quickstart. Each Warden enrolls for its own broker credential; then the script applies an
# Iggy configuration to every node and shows each result.
#
#   ./deploy/quickstart.sh          keep the cluster running until Ctrl-C
#   ./deploy/quickstart.sh --once   stop everything after the run; exit 0 only if every node
#                                   succeeded
set -euo pipefail

once=0
for argument in "$@"; do
  case "$argument" in
    --once) once=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "error: unknown option $argument; use --once or --help" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
run="$root/run/quickstart"
nodes=(node-1 node-2 node-3)
pids=()

stop_all() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for() {
  local what="$1" tries="$2"
  shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "error: timed out waiting for $what; logs are in $run" >&2
  exit 1
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is missing; install the Rust toolchain from https://rustup.rs" >&2
  exit 1
fi
echo "==> installing nats-server if missing"
nats_server="$("$root/deploy/install-nats.sh")"
echo "==> building"
cargo build --bins --quiet
bin="$root/target/debug"

rm -rf "$run"
mkdir -p "$run"
nats_port="$(free_port)"
websocket_port="$(free_port)"
api_port="$(free_port)"
nats_url="tls://127.0.0.1:${nats_port}"
export WARDEN_API="http://127.0.0.1:${api_port}"
export WARDEN_API_KEY_FILE="$run/admin-api-key"

echo "==> writing the broker set-up: operator and account keys, a CA, a server certificate"
"$bin/wardenctl" broker init --dir "$run/broker" --host 127.0.0.1 --host localhost \
  --client-port "$nats_port" --websocket-port "$websocket_port" --jetstream-storage 1GiB

echo "==> starting nats-server with TLS on port $nats_port (WebSocket-TLS on $websocket_port)"
"$nats_server" -c "$run/broker/nats.conf" >"$run/nats-server.log" 2>&1 &
pids+=($!)
wait_for "nats-server" 50 bash -c "exec 3<>/dev/tcp/127.0.0.1/${nats_port}"

echo "==> creating the root, task and secrets keys and signing trust document version 1 (offline steps)"
"$bin/wardenctl" key create --out "$run/root.key" >/dev/null
"$bin/wardenctl" key create --out "$run/task.key" >/dev/null
"$bin/wardenctl" key create --out "$run/secrets.key" >/dev/null
"$bin/wardenctl" trust sign --root-key "$run/root.key" --version 1 --expires-in 30d \
  --task-key "$(cat "$run/task.key.pub")" --out "$run/trust.b64"

echo "==> starting the control plane on port $api_port"
"$bin/control-plane" --nats-url "$nats_url" --broker-dir "$run/broker" --listen "127.0.0.1:${api_port}" \
  --task-key "$run/task.key" --trust-document "$run/trust.b64" --admin-key-out "$WARDEN_API_KEY_FILE" \
  --secrets-key "$run/secrets.key" --artifact-cache-dir "$run/artifact-cache" --unreachable-after-secs 10 --sweep-interval-ms 1000 >"$run/control-plane.log" 2>&1 &
pids+=($!)
wait_for "the control plane API" 150 test -s "$WARDEN_API_KEY_FILE"
wait_for "the control plane API" 150 "$bin/wardenctl" deployment list

echo "==> creating deployment demo with ${#nodes[@]} nodes"
"$bin/wardenctl" deployment create demo --description "quickstart"
for node in "${nodes[@]}"; do
    "$bin/wardenctl" node add "$node" --deployment demo --bootstrap-out "$run/$node.toml" \
    --state-dir "$run/$node" --heartbeat-interval-secs 2 --tls-name localhost --tls-name 127.0.0.1 \
    --expect-root-key "$(cat "$run/root.key.pub")"
done

echo "==> starting ${#nodes[@]} Wardens"
for node in "${nodes[@]}"; do
  "$bin/warden" --bootstrap "$run/$node.toml" >"$run/$node.log" 2>&1 &
  pids+=($!)
done

echo "==> applying deploy/examples/iggy-server.toml as configuration version 1 to every node"
issued="$("$bin/wardenctl" -o json task issue --deployment demo --all-nodes apply-config \
  --version 1 --file "$root/deploy/examples/iggy-server.toml")"
mapfile -t task_ids < <(python3 -c 'import json, sys; [print(t["id"]) for t in json.load(sys.stdin)["tasks"]]' <<<"$issued")

status=0
"$bin/wardenctl" task wait "${task_ids[@]}" --timeout-secs 60 || status=$?

echo "==> configuration file on each node"
for node in "${nodes[@]}"; do
  echo "--- $run/$node/iggy/server.toml"
  head -n 3 "$run/$node/iggy/server.toml" 2>/dev/null || echo "(not written)"
done
sleep 3
echo "==> node health"
"$bin/wardenctl" node list --deployment demo

echo "==> node TLS certificates from the deployment CA"
for node in "${nodes[@]}"; do
  wait_for "a certificate on $node" 100 test -s "$run/$node/tls/node.crt"
done
"$bin/wardenctl" ca show --deployment demo --bundle-out "$run/ca-bundle.pem"
if command -v openssl >/dev/null 2>&1; then
  for node in "${nodes[@]}"; do
    openssl verify -CAfile "$run/ca-bundle.pem" "$run/$node/tls/node.crt" | sed "s|^$run/||"
  done
fi

if [[ "$status" -eq 0 ]]; then
  echo "==> every node applied the configuration"
else
  echo "==> not every node succeeded; see 'wardenctl task show <id>' and the logs in $run" >&2
fi

if [[ "$once" -eq 1 ]]; then
  exit "$status"
fi
cat <<TEXT

The cluster keeps running; press Ctrl-C to stop it. In another shell:
  export WARDEN_API=$WARDEN_API WARDEN_API_KEY_FILE=$WARDEN_API_KEY_FILE
  $bin/wardenctl node list --deployment demo
  $bin/wardenctl task issue --deployment demo --node node-1 collect-diagnostics
  $bin/wardenctl task list
  $bin/wardenctl ca show --deployment demo
  $bin/wardenctl alert list
TEXT
wait
