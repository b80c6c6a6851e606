#!/usr/bin/env bash
# Migrates a busy 1 GiB guest (random full-page writes over WS, default 256M) between two network-lab
# hosts joined by a 1 Gbit/s link (tc tbf) with 20 ms RTT (a userspace delay proxy, 10 ms each way),
# and prints per-round link utilisation and the downtime the guest saw. Root needed.
# Usage: bench/netlab-1gbit.sh [STRATEGY] [WS]      (defaults: auto 256M)
set -euo pipefail
cd "$(dirname "$0")/.."
strategy=${1:-auto}
ws=${2:-256M}
cargo build -q -p ferry -p ferry-netlab --example proxy
F=$PWD/target/debug/ferry
PROXY=$PWD/target/debug/examples/proxy
W=$(mktemp -d /tmp/ferry-netlab-XXXX)
cleanup() {
  pkill -f "control $W/" 2>/dev/null || true
  pkill -f "examples/proxy --netns ferrybench-h0" 2>/dev/null || true
  "$F" netlab down --name ferrybench >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
"$F" netlab up --name ferrybench --hosts 2 --rate 1gbit >/dev/null
"$F" guest build --memory 1G --ws "$ws" -o "$W/g.img" >/dev/null
ip netns exec ferrybench-h1 "$F" vm receive --listen 10.77.0.2:7000 --insecure --once --control "$W/d.sock" >"$W/d.out" 2>"$W/d.err" &
ip netns exec ferrybench-h0 "$PROXY" --netns ferrybench-h0 --listen 127.0.0.1:7001 --to 10.77.0.2:7000 --delay 10ms >"$W/p.out" 2>&1 &
ip netns exec ferrybench-h0 "$F" vm run --kernel "$W/g.img" --memory 1G --insecure --control "$W/s.sock" >/dev/null 2>"$W/s.err" &
sleep 2
"$F" migrate --vm "$W/s.sock" --to 127.0.0.1:7001 --strategy "$strategy" --json >"$W/r.json"
python3 - "$W/r.json" "$strategy" "$ws" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
g = r["guest_observed"]
print(f"1 Gbit/s, 20 ms RTT, 1 GiB guest, ws {sys.argv[3]}, strategy {sys.argv[2]} (used: {r['strategy_used']}), {r['channels']} channels, RTT measured {r['rtt_ms']:.1f} ms")
for x in r["rounds"]:
    mbit = x["bytes"] * 8 / x["seconds"] / 1e6 if x["seconds"] > 0 else 0
    print(f"  round {x['round']}: {x['bytes']/1e6:.1f} MB in {x['seconds']*1e3:.0f} ms = {mbit:.0f} Mbit/s ({mbit/10:.1f}% of the link)")
print(f"  total {r['total_ms']:.0f} ms, engine downtime {r['downtime_ms']:.1f} ms, "
      f"guest-observed {g['gap_ns']/1e6:.1f} ms at the switch-over (sequence {'continues' if g['sequence_continues'] else 'BROKEN'}), "
      f"largest gap before it {r.get('source_max_gap_ms') or 0:.1f} ms, after it {g.get('after_max_gap_ns', 0)/1e6:.1f} ms, "
      f"{r['bytes_sent']/2**20:.0f} MiB sent, post-copy pages {r['postcopy_pages']}, on demand {r['postcopy_requests']}")
PY
