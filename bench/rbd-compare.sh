#!/usr/bin/env bash
# Ceph RBD: spinblk --rbd against qemu-storage-daemon (driver=rbd), same image, same client.
#
#   bench/rbd-compare.sh [options]
#
# Starts a throwaway one-node Ceph cluster (scripts/ceph/cluster.sh: memstore OSD, no mgr),
# creates an image and writes it through once (so reads hit allocated objects), then serves it
# in turn by
#   spinblk --rbd POOL/IMAGE --rbd-conf CONF               (librbd, completions to the reactor)
#   qemu-storage-daemon --blockdev driver=rbd,...           (librbd, one iothread)
# each pinned with all its threads (librados'/librbd's included) to the target core(s), both
# with librbd's defaults from the same ceph.conf, while spinblk-bench (libblkio, one queue, on
# the client core) runs 4 KiB randread and randwrite at QD1 and QD32. The targets alternate,
# in swapped order every round, so a machine whose speed drifts hurts both alike.
#
# Per point: IOPS, p50/p99 latency, and the target's CPU time per I/O (utime+stime of every
# thread, from /proc/PID/stat sampled every 50 ms, over the client's measured window). The
# summary gives, per workload and target, the best and median IOPS, the median p50 and CPU per
# I/O, the ratio of the best runs and the median of the per-round ratios (spinblk / each other
# target).
#
# Options (environment variables in brackets):
#   --rounds N          rounds (default 3) [ROUNDS]
#   --runtime S         measured seconds per point (default 5) [RUNTIME]
#   --ramp S            seconds before measuring (default 1) [RAMP]
#   --target-cpu LIST   target core(s) (default 0) [TARGET_CPU]
#   --client-cpu N      client core (default 1) [CLIENT_CPU]
#   --cluster-cpu LIST  pin the cluster's daemons (mon, OSD) to these cores, e.g. the client's,
#                       so that only the target runs on the target core (default: unpinned, the
#                       scheduler's choice) [CLUSTER_CPU]
#   --size MIB          image size (default 256) [SIZE_MIB]
#   --workloads LIST    randread-qdN and randwrite-qdN, N from 1 to 256 (default
#                       randread-qd1,randread-qd32,randwrite-qd1,randwrite-qd32) [WORKLOADS]
#   --targets LIST      spinblk,qsd (default both); spinblk-before adds another spinblk binary,
#                       SPINBLK_BEFORE_BIN (an older commit's build), run like spinblk [TARGETS]
#   --out DIR           results (default target/bench-results/rbd-DATE) [OUT]
# Needs: target/release/spinblk and spinblk-bench (cargo build --release -p spinblk -p
# spinblk-bench; or SPINBLK_BIN/BENCH_BIN), Ceph (scripts/install-deps.sh), and for qsd Debian's
# qemu-block-extra (its block-rbd module).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$root/bench/lib.sh" # bl_rand_workloads
rounds=${ROUNDS:-3}
runtime=${RUNTIME:-5}
ramp=${RAMP:-1}
target_cpu=${TARGET_CPU:-0}
client_cpu=${CLIENT_CPU:-1}
cluster_cpu=${CLUSTER_CPU:-}
size_mib=${SIZE_MIB:-256}
targets=${TARGETS:-spinblk,qsd}
workload_sel=${WORKLOADS:-randread-qd1,randread-qd32,randwrite-qd1,randwrite-qd32}
out=${OUT:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "rbd-compare.sh: $*" >&2; exit 2; }
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
while (($#)); do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --target-cpu) target_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    --cluster-cpu) cluster_cpu=$2; shift 2 ;;
    --size) size_mib=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --workloads) workload_sel=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
if ! [[ $rounds =~ ^[0-9]+$ ]] || ((rounds < 1)); then die "--rounds must be a positive number"; fi
if ! [[ $runtime =~ ^[0-9]+$ ]] || ((runtime < 2)); then die "--runtime must be at least 2"; fi
if ! [[ $size_mib =~ ^[0-9]+$ ]] || ((size_mib < 16)); then die "--size must be at least 16 (MiB)"; fi
# Workloads: "label rw qd".
workload_list=$(bl_rand_workloads "$workload_sel") || exit 2
mapfile -t workloads <<<"$workload_list"

spinblk=${SPINBLK_BIN:-$root/target/release/spinblk}
bench=${BENCH_BIN:-$root/target/release/spinblk-bench}
[[ -x $spinblk ]] || die "$spinblk not found: cargo build --release -p spinblk"
[[ -x $bench ]] || die "$bench not found: cargo build --release -p spinblk-bench"
for t in ceph-mon ceph-osd rbd taskset python3; do
  command -v "$t" >/dev/null || die "$t not found (scripts/install-deps.sh)"
done
if [[ ,$targets, == *,qsd,* ]]; then
  command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found (qemu-system-common)"
  qemu-storage-daemon --blockdev help 2>/dev/null | grep -qw rbd ||
    ls /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so >/dev/null 2>&1 ||
    die "qemu-storage-daemon has no rbd driver (Debian: apt-get install qemu-block-extra)"
fi

out=${out:-$root/target/bench-results/rbd-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
# Binaries copied, so a rebuild meanwhile cannot change them under the run.
mkdir -p "$out/bin"
cp "$spinblk" "$out/bin/spinblk"
if [[ ,$targets, == *,spinblk-before,* ]]; then
  [[ -x ${SPINBLK_BEFORE_BIN:-} ]] || die "--targets spinblk-before needs SPINBLK_BEFORE_BIN (an executable spinblk)"
  cp "$SPINBLK_BEFORE_BIN" "$out/bin/spinblk-before"
fi
cp "$bench" "$out/bin/spinblk-bench"
spinblk=$out/bin/spinblk
bench=$out/bin/spinblk-bench
run=$(mktemp -d /tmp/spinblk-rbdb.XXXXXX)
points=$out/points.jsonl
: >"$points"

ceph_dir=
target_pid=
cleanup() {
  if [[ -n $target_pid ]] && kill -0 "$target_pid" 2>/dev/null; then
    kill -TERM "$target_pid" 2>/dev/null || true
    sleep 1
    kill -KILL "$target_pid" 2>/dev/null || true
  fi
  if [[ -n $ceph_dir ]]; then bash "$root/scripts/ceph/cluster.sh" stop "$ceph_dir" || true; fi
  rm -rf "$run"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# --- cluster and image --------------------------------------------------------
t0=$SECONDS
pin_cluster=()
[[ -n $cluster_cpu ]] && pin_cluster=(taskset -c "$cluster_cpu")
ceph_dir=$(CEPH_MGR=0 CEPH_MEMSTORE_MIB=$((size_mib * 2 + 512)) \
  "${pin_cluster[@]}" bash "$root/scripts/ceph/cluster.sh" start 2>"$out/logs/ceph-start.log" | tail -n1) ||
  { ceph_dir=; die "the cluster did not start: $(tail -n 3 "$out/logs/ceph-start.log")"; }
conf=$ceph_dir/ceph.conf
image=bench
rbd -c "$conf" create --size "${size_mib}M" "rbd/$image"
log "cluster up ($(tail -n1 "$out/logs/ceph-start.log" | sed 's/^cluster.sh: //')); writing the image through once"
rbd -c "$conf" bench --io-type write --io-pattern seq --io-size 4M --io-threads 4 \
  --io-total "${size_mib}M" "rbd/$image" >"$out/logs/prefill.log" 2>&1 ||
  die "prefill failed: $(tail -n 3 "$out/logs/prefill.log")"
log "image rbd/$image: $size_mib MiB, written through in $((SECONDS - t0)) s (with the cluster start)"

# point TARGET ROUND WORKLOAD RW QD: one client run against the running target, sampled.
point() {
  python3 - "$target_pid" "$1" "$2" "$3" "$4" "$5" "$points" "$out/logs/client.log" \
    taskset -c "$client_cpu" "$bench" --socket "$sock" --rw "$4" --bs 4k --iodepth "$5" \
    --queues 1 --cpus "$client_cpu" --runtime "$runtime" --ramp "$ramp" --json <<'PY'
import json, os, subprocess, sys, threading, time
pid, target, rnd, wl, rw, qd, points, clog = sys.argv[1:9]
cmd = sys.argv[9:]
hz = os.sysconf("SC_CLK_TCK")
samples, stop = [], threading.Event()
def cpu():
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / hz
def sampler():
    while not stop.is_set():
        try:
            samples.append((time.time(), cpu()))
        except OSError:
            return
        time.sleep(0.05)
t = threading.Thread(target=sampler); t.start()
p = subprocess.run(cmd, capture_output=True, text=True)
stop.set(); t.join()
with open(clog, "a") as f:
    f.write(f"# {target} round {rnd} {wl}\n{p.stdout}{p.stderr}\n")
try:
    r = json.loads(p.stdout.strip().splitlines()[-1])
except (ValueError, IndexError):
    print(f"{target} {wl}: no result (exit {p.returncode}): {p.stderr.strip()[-200:]}", file=sys.stderr)
    sys.exit(0)
w0, w1 = r["window_unix_s"]
def at(ts):  # linear interpolation of the CPU samples
    prev = None
    for s in samples:
        if s[0] >= ts:
            if prev is None:
                return s[1]
            f = (ts - prev[0]) / max(s[0] - prev[0], 1e-9)
            return prev[1] + f * (s[1] - prev[1])
        prev = s
    return samples[-1][1] if samples else 0.0
cpu_s = at(w1) - at(w0)
ios = r["iops"] * r["runtime_s"]
row = {"target": target, "round": int(rnd), "workload": wl, "iops": r["iops"],
       "p50_us": r["lat_us"]["p50"], "p99_us": r["lat_us"]["p99"],
       "target_cpu_pct": 100.0 * cpu_s / max(w1 - w0, 1e-9),
       "cpu_us_per_io": 1e6 * cpu_s / max(ios, 1), "errors": r["errors"],
       "client_cpu_pct": r["cpu"]["pct_one_core"]}
with open(points, "a") as f:
    f.write(json.dumps(row) + "\n")
print(f"  {target:8} r{rnd} {wl:17} {row['iops']:9.0f} IOPS  p50 {row['p50_us']:8.1f} us  "
      f"p99 {row['p99_us']:8.1f} us  target CPU {row['target_cpu_pct']:5.1f}% = "
      f"{row['cpu_us_per_io']:6.1f} us/IO  errors {row['errors']}", file=sys.stderr)
PY
}

IFS=, read -r -a order <<<"$targets"

start_target() {
  local t=$1
  sock=$run/$t.sock
  rm -f "$sock"
  case $t in
    spinblk | spinblk-before)
      local bin=$spinblk
      [[ $t == spinblk-before ]] && bin=$out/bin/spinblk-before
      taskset -c "$target_cpu" "$bin" --rbd "rbd/$image" --rbd-conf "$conf" \
        --socket "$sock" --cpus "$target_cpu" --num-queues 1 </dev/null >>"$out/logs/target-spinblk.log" 2>&1 &
      ;;
    qsd)
      taskset -c "$target_cpu" qemu-storage-daemon --object iothread,id=iot0 \
        --blockdev "driver=rbd,node-name=d0,pool=rbd,image=$image,conf=$conf,user=admin" \
        --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$sock,writable=on,num-queues=1,iothread=iot0" \
        </dev/null >>"$out/logs/target-qsd.log" 2>&1 &
      ;;
    *) die "unknown target $t" ;;
  esac
  target_pid=$!
  local i
  for ((i = 0; i < 400; i++)); do
    [[ -S $sock ]] && { sleep 0.3; return 0; }
    kill -0 "$target_pid" 2>/dev/null || break
    sleep 0.05
  done
  die "$t did not come up; see $out/logs/target-$t.log"
}

stop_target() {
  kill -TERM "$target_pid" 2>/dev/null || true
  wait "$target_pid" 2>/dev/null || log "warning: $1 exited with status $?"
  target_pid=
}

{
  echo "rbd-compare.sh $(date -Is)"
  echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "image rbd/$image $size_mib MiB in a one-node memstore cluster (daemons on cores ${cluster_cpu:-any}); target core(s) $target_cpu, client core $client_cpu; $rounds rounds, ${runtime}s/point (+${ramp}s ramp); librbd $(dpkg-query -W -f='${Version}' librbd1 2>/dev/null || echo '?')"
} | tee "$out/run-info.txt" >&2

for ((r = 1; r <= rounds; r++)); do
  if ((r % 2 == 0)); then
    seq_targets=()
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do seq_targets+=("${order[i]}"); done
  else
    seq_targets=("${order[@]}")
  fi
  for t in "${seq_targets[@]}"; do
    log "round $r: $t"
    start_target "$t"
    for w in "${workloads[@]}"; do
      read -r label rw qd <<<"$w"
      point "$t" "$r" "$label" "$rw" "$qd"
    done
    stop_target "$t"
  done
done

python3 - "$points" <<'PY' | tee "$out/table.txt"
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
wls = list(dict.fromkeys(r["workload"] for r in rows))
tgts = list(dict.fromkeys(r["target"] for r in rows))
print("\n| workload | target | IOPS best | IOPS median | p50 us (median) | p99 us (median) | target CPU % (median) | target CPU us/IO (median) | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for w in wls:
    for t in tgts:
        rs = [r for r in rows if r["workload"] == w and r["target"] == t]
        if not rs:
            continue
        med = lambda k: st.median(r[k] for r in rs)
        print(f"| {w} | {t} | {max(r['iops'] for r in rs):.0f} | {med('iops'):.0f} | {med('p50_us'):.1f} | "
              f"{med('p99_us'):.1f} | {med('target_cpu_pct'):.1f} | {med('cpu_us_per_io'):.1f} | "
              f"{sum(r['errors'] for r in rs)} |")
for other in [t for t in tgts if t != "spinblk"]:
    if "spinblk" not in tgts:
        break
    print(f"\n| workload | vs | IOPS: best/best | IOPS: median of round ratios | p50: median of round ratios | CPU/IO: median of round ratios | rounds with less CPU/IO for spinblk |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for w in wls:
        s = {r["round"]: r for r in rows if r["workload"] == w and r["target"] == "spinblk"}
        q = {r["round"]: r for r in rows if r["workload"] == w and r["target"] == other}
        common = sorted(set(s) & set(q))
        if not common:
            continue
        best = max(r["iops"] for r in s.values()) / max(max(r["iops"] for r in q.values()), 1e-9)
        ratio = lambda k: st.median(s[i][k] / max(q[i][k], 1e-9) for i in common)
        fewer = sum(s[i]["cpu_us_per_io"] < q[i]["cpu_us_per_io"] for i in common)
        print(f"| {w} | {other} | {best:.2f} | {ratio('iops'):.2f} | {ratio('p50_us'):.2f} | {ratio('cpu_us_per_io'):.2f} | {fewer} of {len(common)} |")
    print(f"\n(ratios are spinblk / {other}: above 1 is more IOPS for spinblk; below 1 is lower latency or less CPU per I/O)")
PY
echo "points: $points"
echo "results: $out"
