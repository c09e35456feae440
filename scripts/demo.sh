#!/usr/bin/env bash
# The whole e-POP chain on loopback, in a scratch folder .demo/:
#
#   epop send  --(e-POP)-->  relay (twistd epop)  --(HTTPS)-->  e-PMSI sandbox
#
#   curl -x http://RELAY  --(CONNECT tunnel, TLS end to end)-->  sandbox
#
# Starts a local e-PMSI sandbox and a relay trusting its CA, tests the
# connection, uploads a sample zip through the relay, then again with curl
# using the relay as its HTTPS proxy, checks each of the sandbox's receipts
# against the file's SHA-256, prints the relay's journal and its console's
# address, then stops everything (in a terminal, once you press Enter, so
# that you can look at the console first).  Exit status 0 only if every
# step succeeded.
#
# Environment: BIN=folder holding python, epop and twistd (default .venv/bin);
# EPOP_DEMO_WAIT=0 stops at once even in a terminal; EPOP_DEMO_DIR=folder
# for the scratch files instead of .demo/ (emptied first).  epop's saved
# settings are not read: EPOP_CONFIG points into the scratch folder.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${BIN:-$ROOT/.venv/bin}
PY=$BIN/python
DEMO=${EPOP_DEMO_DIR:-$ROOT/.demo}
SHOWN=${DEMO#"$ROOT"/}  # as the messages name it: .demo, or the folder given

for tool in python epop twistd; do
    if [ ! -x "$BIN/$tool" ]; then
        echo "demo: $BIN/$tool not found; run 'make venv' first (or set BIN=)" >&2
        exit 1
    fi
done

heading() { printf '\n== %s\n' "$*"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ ${#PIDS[@]} -gt 0 ]; then
        heading "Stopping the relay and the sandbox"
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        echo "demo: failed (exit $status); logs are in $DEMO/" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

port_open() {
    "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()' "$1" 2>/dev/null
}

# wait_for DESCRIPTION PID LOG COMMAND...: retry COMMAND for up to 10 s.
wait_for() {
    local what=$1 pid=$2 log=$3
    shift 3
    for _ in $(seq 100); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "--- $log" >&2; cat "$log" >&2 || true
            fail "$what: the process exited"
        fi
        sleep 0.1
    done
    echo "--- $log" >&2; cat "$log" >&2 || true
    fail "$what: not ready after 10 s"
}

# check_receipt RECEIPT [WHAT]: the receipt's theFile SHA-256 must be the sample's.
check_receipt() {
    local received
    received=$("$PY" -c '
import json, sys
receipt = json.load(open(sys.argv[1]))
print(" ".join(f["sha256"] for f in receipt.get("files", []) if f.get("field") == "theFile"))
' "$1") || { cat "$1" >&2 || true; fail "$1 is not a JSON receipt"; }
    if [ "$received" != "$SAMPLE_SHA256" ]; then
        fail "sha256 mismatch: sent $SAMPLE_SHA256, e-PMSI received '${received}'"
    fi
    echo "OK: e-PMSI received exactly ${2:-the file that was sent} ($SAMPLE_SHA256)"
}

# journaled_tunnel: the relay's journal records a tunnel that has ended.
journaled_tunnel() {
    "$PY" -c '
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.endswith("\n")]
sys.exit(not any(r.get("type") == "object-released" and r.get("kind") == "tunnel" for r in records))
' "$JOURNAL"
}

heading "Scratch folder $DEMO"
rm -rf "$DEMO"
mkdir -p "$DEMO"
# epop's settings for the demo only: the person's own (a relay trusted with
# epop trust, tls = yes...) must neither steer the demo nor be changed by it.
export EPOP_CONFIG=$DEMO/client.ini
SANDBOX_PORT=$(free_port)
RELAY_PORT=$(free_port)
while [ "$RELAY_PORT" = "$SANDBOX_PORT" ]; do RELAY_PORT=$(free_port); done
CONSOLE_PORT=$(free_port)
while [ "$CONSOLE_PORT" = "$SANDBOX_PORT" ] || [ "$CONSOLE_PORT" = "$RELAY_PORT" ]; do CONSOLE_PORT=$(free_port); done
RELAY=127.0.0.1:$RELAY_PORT
SANDBOX_URL=https://127.0.0.1:$SANDBOX_PORT
CA=$DEMO/sandbox/tls/ca.pem
JOURNAL=$DEMO/journal.jsonl

heading "Starting the e-PMSI sandbox on $SANDBOX_URL (log: $SHOWN/sandbox.log)"
"$BIN/epop" sandbox --port "$SANDBOX_PORT" --interface 127.0.0.1 \
    --directory "$DEMO/sandbox" >"$DEMO/sandbox.log" 2>&1 &
SANDBOX_PID=$!
PIDS+=("$SANDBOX_PID")
wait_for "sandbox CA file $CA" "$SANDBOX_PID" "$DEMO/sandbox.log" test -s "$CA"
wait_for "sandbox port $SANDBOX_PORT" "$SANDBOX_PID" "$DEMO/sandbox.log" port_open "$SANDBOX_PORT"
echo "ready; its CA certificate is $SHOWN/sandbox/tls/ca.pem"

heading "Starting the relay on $RELAY, forwarding to $SANDBOX_URL (log: $SHOWN/relay.log)"
# The settings file the console saves to (the command line's options win over it).
printf '# The demo relay'"'"'s settings: its console saves its changes here.\n[epop]\n' >"$DEMO/relay.ini"
"$BIN/twistd" --nodaemon --pidfile= --logfile="$DEMO/relay.log" epop \
    --listen "tcp:$RELAY_PORT:interface=127.0.0.1" \
    --epmsi "$SANDBOX_URL" --ca-file "$CA" --journal "$JOURNAL" \
    --config "$DEMO/relay.ini" --console "tcp:$CONSOLE_PORT:interface=127.0.0.1" \
    >>"$DEMO/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
# Ready once its journal records that it listens (no probe connection needed).
wait_for "relay on $RELAY" "$RELAY_PID" "$DEMO/relay.log" \
    grep -q '"listening-opened"' "$JOURNAL"
echo "ready"
wait_for "the relay's console on 127.0.0.1:$CONSOLE_PORT" "$RELAY_PID" "$DEMO/relay.log" \
    grep -q "Console: open http" "$DEMO/relay.log"
console_url() { grep -o "Console: open http[^ ]*" "$DEMO/relay.log" | tail -n 1 | cut -d' ' -f3; }
echo "The relay's console (a browser on this machine): $(console_url)"

heading "Making a sample PMSI archive ($SHOWN/sample.zip)"
SAMPLE=$DEMO/sample.zip
"$PY" - "$SAMPLE" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("123456789.2026.11.rss.txt", os.urandom(3 << 20))
    archive.writestr("123456789.2026.11.ano.txt", os.urandom(1 << 20))
print(f"{sys.argv[1]}: {os.path.getsize(sys.argv[1])} bytes")
PY
SAMPLE_SHA256=$(sha256sum "$SAMPLE" | cut -d' ' -f1)
echo "sha256 $SAMPLE_SHA256"

heading "Testing the connection: epop test --relay $RELAY"
"$BIN/epop" test --relay "$RELAY" || fail "epop test --relay $RELAY"

heading "Sending the archive through the relay: epop send --relay $RELAY ... sample.zip"
"$BIN/epop" send --relay "$RELAY" --to /syriusUpload.do --field theFile \
    -F userId=demo -F year=2026 -F period=M11 -F finess=123456789 \
    "$SAMPLE" >"$DEMO/receipt.json" \
    || { cat "$DEMO/receipt.json" >&2 || true; fail "epop send"; }

heading "The sandbox's receipt (what e-PMSI would have answered)"
"$PY" -m json.tool "$DEMO/receipt.json" \
    || { cat "$DEMO/receipt.json"; fail "the receipt is not JSON"; }

heading "Checking the receipt's SHA-256 against the sample"
check_receipt "$DEMO/receipt.json"

heading "Sending the archive with curl, through the relay as its HTTPS proxy (CONNECT)"
if command -v curl >/dev/null 2>&1; then
    # What ATIH's applications and browsers do: the relay only opens a
    # tunnel to e-PMSI; TLS runs end to end between curl and the sandbox.
    echo "curl -x http://$RELAY --cacert $SHOWN/sandbox/tls/ca.pem -F theFile=@$SHOWN/sample.zip ... $SANDBOX_URL/syriusUpload.do"
    # --noproxy "": a NO_PROXY naming 127.0.0.1 must not send curl around the relay.
    HTTP_STATUS=$(curl -sS --max-time 60 -x "http://$RELAY" --noproxy "" --cacert "$CA" \
        -F userId=demo -F year=2026 -F period=M11 -F finess=123456789 \
        -F "theFile=@$SAMPLE" -o "$DEMO/receipt-curl.json" -w '%{http_code}' \
        "$SANDBOX_URL/syriusUpload.do") || fail "curl through the relay's HTTPS proxy mode (http://$RELAY)"
    [ "$HTTP_STATUS" = 200 ] \
        || { cat "$DEMO/receipt-curl.json" >&2 || true; fail "curl through the relay: HTTP status $HTTP_STATUS"; }
    check_receipt "$DEMO/receipt-curl.json" "the file curl sent through the relay's CONNECT tunnel"
    # The relay journals the tunnel once curl has closed it.
    wait_for "the relay's journal recording curl's tunnel (if none, curl went around the relay)" \
        "$RELAY_PID" "$DEMO/relay.log" journaled_tunnel
else
    echo "SKIPPED: curl is not installed (apt-get install curl)"
fi

heading "The relay's journal ($SHOWN/journal.jsonl): time, event, client, description"
"$PY" - "$JOURNAL" <<'PY'
import json, sys
with open(sys.argv[1]) as journal:
    for line in journal:
        if line.strip():
            e = json.loads(line)
            client = e.get("client") or "-"
            print(f"{e.get('time', '')}  {e.get('type', ''):<19}  {client:<21}  {e.get('description', '')}")
PY
[ -s "$JOURNAL" ] || fail "the journal $JOURNAL is empty"

heading "Demo finished: sandbox -> relay -> upload (epop, and curl through the proxy) -> receipt all OK"
if [ -t 0 ] && [ -t 1 ] && [ "${EPOP_DEMO_WAIT:-1}" != 0 ]; then
    echo "The relay and its console are still running. Open this address in a browser"
    echo "on this machine (it works once; the relay's log has the next one):"
    echo "    $(console_url)"
    read -r -p "Press Enter to stop the relay and the sandbox. " _ || true
else
    echo "The relay and its console stop with the demo (run make demo in a terminal to keep them open)."
fi
