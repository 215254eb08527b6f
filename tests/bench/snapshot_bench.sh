#!/usr/bin/env bash
# Benchmark of live checkpoints and backups (not a test; nothing here gates
# CI), driven by snap-demo (tests/integration/snapshot/snap_demo.c: a group
# of VHD disks stacked gate → cbt → top → engine, 8 asynchronous writers
# per disk in one private reactor, as hvstord will run them):
#   1. I/O hold time per checkpoint, 4-disk group, 32 writes in flight
#      (goal: < 1 ms);
#   2. guest write latency p99 during a backup against the same workload
#      just before it (goal: within 2x);
#   3. bytes an incremental backup reads against the bytes the guest changed
#      (64 KiB aligned writes, so that "changed" is exact; goal: within 1.05x);
#   4. full-backup throughput against `qemu-img convert -O vpc` of the same
#      disk image (the chain is a single dynamic VHD at the cut).
#
# Usage: tests/bench/snapshot_bench.sh [BUILD_DIR]
#   BENCH_DIR   where the images go (default /var/tmp)
#   BENCH_MIB   size of each disk in MiB (default 512)
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
DEMO=$build/tests/integration/snap-demo
[ -x "$DEMO" ] || { echo "build first: $DEMO not found" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/hvstor-snapbench-XXXXXX")
trap 'rm -rf "$dir"' EXIT
mib=${BENCH_MIB:-512}

echo "== 1. checkpoint hold time, 4 disks, 32 writes in flight (goal < 1 ms)"
"$DEMO" checkpoint "$dir/cp" --disks 4 --runs 20 --merge --size "${mib}M" >"$dir/cp.json"
python3 - "$dir/cp.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
h = sorted(r["hold_ms"] for r in rows)
m = sorted(r["last_merge_hold_ms"] for r in rows)
held = sum(r["held_requests"] for r in rows) / len(rows)
print(f"  checkpoint hold: median {h[len(h)//2]:.3f} ms, max {h[-1]:.3f} ms over {len(h)} "
      f"checkpoints ({held:.0f} requests held each); goal < 1 ms: "
      f"{'met' if h[-1] < 1 else 'NOT met'}")
print(f"  live-merge final hold (per disk, checkpoint delete): median "
      f"{m[len(m)//2]:.1f} ms, max {m[-1]:.1f} ms")
PY

echo "== 2+3. backups of 2 disks under random 64 KiB writes (one full, three incrementals)"
"$DEMO" backup "$dir/vm" "$dir/b" --disks 2 --size "${mib}M" --incrementals 3 \
    --write-bytes 64k --span "$((mib / 4))M" --fill-ms 2000 >"$dir/b.json"
python3 - "$dir/b.json" <<'PY'
import json, sys
for r in (json.loads(l) for l in open(sys.argv[1])):
    ratio = r["p99_ms_during"] / max(r["p99_ms_before"], 1e-9)
    line = (f"  #{r['sequence']} {r['type']:11s} {r['seconds']:.2f} s, hold {r['hold_ms']:.3f} ms,"
            f" write p99 {r['p99_ms_during']:.2f} ms during vs {r['p99_ms_before']:.2f} ms "
            f"before = {ratio:.2f}x (goal <= 2x: {'met' if ratio <= 2 else 'NOT met'})")
    if r["type"] == "incremental":
        ch = r["guest_changed_before_cut"]
        rd = r["bytes_read"] / max(ch, 1)
        line += (f"; read {r['bytes_read'] >> 20} MiB for {ch >> 20} MiB changed = {rd:.3f}x"
                 f" (goal <= 1.05x: {'met' if rd <= 1.05 else 'NOT met'})")
    print(line)
PY

echo "== 4. full backup throughput vs qemu-img convert of the same image"
"$DEMO" backup "$dir/vm4" "$dir/b4" --disks 1 --size "${mib}M" --fill-ms 3000 --idle \
    --write-bytes 1M >"$dir/f.json"
sync
t0=$(date +%s.%N)
qemu-img convert -f vpc -O vpc -o subformat=dynamic "$dir/vm4/disk0.vhd" "$dir/qemu.vhd"
sync
t1=$(date +%s.%N)
python3 - "$dir/f.json" "$t0" "$t1" "$dir/vm4/disk0.vhd" <<'PY'
import json, sys, os
r = json.loads(open(sys.argv[1]).readline())
q = float(sys.argv[3]) - float(sys.argv[2])
ours = r["bytes_read"] / r["seconds"] / 2**20
theirs = r["bytes_read"] / q / 2**20
print(f"  hvstor full backup: {r['bytes_read'] >> 20} MiB read, {r['bytes_written'] >> 20} MiB "
      f"written in {r['seconds']:.2f} s = {ours:.0f} MiB/s (cut, read, hash, write, merge back)")
print(f"  qemu-img convert:   same image in {q:.2f} s = {theirs:.0f} MiB/s")
print(f"  ratio hvstor/qemu-img: {ours / theirs:.2f}x")
PY
