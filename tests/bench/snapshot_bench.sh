#!/usr/bin/env bash
# Benchmark of live checkpoints and backups (not a test; nothing here gates
# CI), driven by snap-demo (tests/integration/snapshot/snap_demo.c: a group
# of VHD disks stacked gate → cbt → top → engine, 8 asynchronous writers
# per disk in one private reactor, as hvstord will run them):
#   1. I/O hold time per checkpoint, 4-disk group, 32 writes in flight
#      (goal: < 1 ms), median, p99 and max over BENCH_CHECKPOINTS cuts; then
#      the final hold of a live merge (checkpoint delete), which is not a cut;
#   2. guest write latency p99 during a backup against the same workload
#      for 2 s just before it (goal: within 2x), with the backup's default pacing and
#      again --unpaced, with the backup's throughput both ways;
#   3. bytes an incremental backup reads against the bytes the guest changed
#      (64 KiB aligned writes, so that "changed" is exact; goal: within 1.05x);
#   4. full-backup throughput against `qemu-img convert -O vpc` of the same
#      disk image (the chain is a single dynamic VHD at the cut).
#
# Usage: tests/bench/snapshot_bench.sh [BUILD_DIR]
#   BENCH_DIR   where the images go (default /var/tmp)
#   BENCH_MIB   size of each disk in MiB (default 512)
#   BENCH_CHECKPOINTS  cuts measured in part 1 (default 42)
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
cps=${BENCH_CHECKPOINTS:-42}
echo "load: $(uptime)"

echo "== 1. checkpoint hold time, 4 disks, 32 writes in flight (goal < 1 ms)"
# Checkpoints stack (each cut's child becomes the next cut's parent), as
# when a VM keeps several checkpoints: seven per VM (a live chain's request
# context has room for about eight levels), on fresh VMs until $cps cuts.
: >"$dir/cp.json"
for ((n = 0; n < cps; n += 7)); do
    "$DEMO" checkpoint "$dir/cp$n" --disks 4 --runs $((cps - n < 7 ? cps - n : 7)) \
        --size "${mib}M" >>"$dir/cp.json"
    rm -rf "$dir/cp$n"
done
"$DEMO" checkpoint "$dir/cpm" --disks 4 --runs 2 --merge --size "${mib}M" >"$dir/cpm.json"
rm -rf "$dir/cpm"
python3 - "$dir/cp.json" "$dir/cpm.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
h = sorted(r["hold_ms"] for r in rows)
s = sorted(r["drain_ms"] for r in rows)
held = sum(r["held_requests"] for r in rows) / len(rows)
p99 = h[min(len(h) - 1, (len(h) * 99) // 100)]
print(f"  checkpoint hold (what a guest request waited): median {h[len(h)//2]:.4f} ms, "
      f"p99 {p99:.4f} ms, max {h[-1]:.4f} ms over {len(h)} checkpoints, "
      f"{held:.1f} requests held per cut")
print(f"    max / goal (1 ms) = {h[-1]:.4f}x: {'met' if h[-1] < 1 else 'NOT met'}")
print(f"  in-flight writes settled into the checkpoint (guest not held): median "
      f"{s[len(s)//2]:.2f} ms, max {s[-1]:.2f} ms")
m = sorted(json.loads(l)["last_merge_hold_ms"] for l in open(sys.argv[2]))
print(f"  live-merge final hold (checkpoint delete, per disk; not a cut): median "
      f"{m[len(m)//2]:.1f} ms, max {m[-1]:.1f} ms (last disk of each of {len(m)} runs)")
PY

echo "== 2+3. backups of 2 disks under random 64 KiB writes (one full, three incrementals)"
for mode in paced unpaced; do
    flag=; [ "$mode" = unpaced ] && flag=--unpaced
    "$DEMO" backup "$dir/vm-$mode" "$dir/b-$mode" --disks 2 --size "${mib}M" --incrementals 3 \
        --write-bytes 64k --span "$((mib / 4))M" --fill-ms 2000 --baseline-ms 2000 $flag >"$dir/b-$mode.json"
done
python3 - "$dir/b-paced.json" "$dir/b-unpaced.json" <<'PY'
import json, sys
for mode, path in (("paced (default)", sys.argv[1]), ("--unpaced", sys.argv[2])):
    print(f"  {mode}:")
    for r in (json.loads(l) for l in open(path)):
        ratio = r["p99_ms_during"] / max(r["p99_ms_before"], 1e-9)
        mibs = r["bytes_read"] / r["seconds"] / 2**20
        line = (f"    #{r['sequence']} {r['type']:11s} {r['seconds']:.2f} s ({mibs:.0f} MiB/s read, "
                f"cut to merged back), hold {r['hold_ms']:.4f} ms, write p99 "
                f"{r['p99_ms_during']:.2f} ms during vs {r['p99_ms_before']:.2f} ms before = "
                f"{ratio:.2f}x (goal <= 2x: {'met' if ratio <= 2 else 'NOT met'}), guest writes "
                f"{r['writes_during'] / r['seconds']:.0f}/s during vs "
                f"{r['writes_before'] / r['seconds_before']:.0f}/s before")
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
