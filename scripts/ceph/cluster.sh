#!/usr/bin/env bash
# A throwaway one-node Ceph cluster on 127.0.0.1 for tests and benchmarks: one mon, one mgr and
# one OSD on the memstore object store, no authentication, pool size 1, everything (config, data,
# sockets, logs, pid files) inside one short temporary directory. It installs nothing
# (scripts/install-deps.sh does: ceph-mon ceph-osd ceph-mgr ceph-common).
#
#   cluster.sh start [DIR]           start a cluster; prints DIR (the last line on stdout)
#   cluster.sh stop DIR              stop exactly the daemons this DIR's start started (by PID,
#                                    checked against the command line), then remove DIR
#   cluster.sh env DIR               print `export CEPH_CONF=...` lines for a shell to eval
#   cluster.sh image DIR NAME MIB    create image NAME (MIB MiB) in the cluster's pool
#   cluster.sh kill-osd DIR          SIGKILL the OSD (fault tests); `stop` still cleans up
#   cluster.sh rss DIR               print "mon=KiB mgr=KiB osd=KiB" (resident memory)
#
# Environment for `start`: CEPH_POOL (default rbd), CEPH_MEMSTORE_MIB (OSD capacity, default
# 1024), CEPH_MGR=0 (no mgr: saves ~300 MiB; RBD I/O does not need it), CEPH_MGR_MODULES and
# CEPH_MGR_DISABLED_MODULES (mgr modules to enable / never load), CEPH_OSD_CONF (extra lines for
# the [osd] section), CEPH_START_TIMEOUT (seconds, default 120).
#
# Why these settings (measured on a 2-core machine shared by several test runs): the memstore OSD
# keeps every object in RAM; `memstore page set = true` and MALLOC_ARENA_MAX=2 keep it at a few
# hundred MiB under 4 KiB random writes (without page set it passed 1.2 GiB). Ceph's unix socket
# paths must stay under 107 bytes, hence a short DIR. Ports: the mon listens on a free port
# picked per run (several clusters can run at once); the OSD and mgr bind their own free ports
# in Ceph's range 6800-7300.
set -euo pipefail

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}
log() { echo "cluster.sh: $*" >&2; }

# step NAME: append "NAME ms-since-start" to DIR/log/start.timing (where start-up time goes).
step() {
    echo "$1 $((($(date +%s%N) - t0ns) / 1000000))" >>"$dir/log/start.timing"
}

need_tools() {
    local t missing=()
    for t in ceph-mon ceph-osd ceph ceph-authtool rbd python3; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    [[ ${CEPH_MGR:-1} == 0 ]] || command -v ceph-mgr >/dev/null || missing+=(ceph-mgr)
    ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (Debian: apt-get install ceph-mon ceph-osd ceph-mgr ceph-common; or run scripts/install-deps.sh)"
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# pid_ok DIR PID: PID is alive and is a Ceph daemon started with DIR's config (not a recycled PID).
pid_ok() {
    local dir=$1 pid=$2 cmd
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $cmd == *ceph-* && $cmd == *"$dir/ceph.conf"* ]]
}

# rss_of DIR NAME: resident KiB of daemon NAME (mon.a, mgr.x, osd.0), or 0.
rss_of() {
    local dir=$1 name=$2 pid
    [[ -e $dir/run/$name.pid ]] || { echo 0; return; }
    pid=$(<"$dir/run/$name.pid")
    pid_ok "$dir" "$pid" || { echo 0; return; }
    awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"
}

cmd_start() {
    need_tools
    local dir=${1:-}
    if [[ -z $dir ]]; then
        dir=$(mktemp -d /tmp/ceph.XXXXXX)
    else
        mkdir -p "$dir"
        dir=$(cd "$dir" && pwd)
    fi
    # The longest socket path is DIR/run/ceph-client.admin.PID.CCTID.asok (about 45 bytes
    # past DIR); Ceph's limit is 107.
    ((${#dir} <= 50)) || die "DIR too long for Ceph's unix sockets (${#dir} > 50 bytes): $dir"
    local pool=${CEPH_POOL:-rbd} memstore_mib=${CEPH_MEMSTORE_MIB:-1024}
    local timeout=${CEPH_START_TIMEOUT:-120} with_mgr=${CEPH_MGR:-1}
    local t0=$SECONDS
    t0ns=$(date +%s%N)
    mkdir -p "$dir"/{run,log,mon,osd}
    local port fsid
    port=$(free_port)
    fsid=$(</proc/sys/kernel/random/uuid)
    local conf=$dir/ceph.conf
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
public network = 127.0.0.0/8
ms bind msgr1 = false
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
log to stderr = false
err to stderr = false
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool delete = true
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail crit = 0
mon data avail warn = 0
# Commit map changes (OSD boot, pool creation) within ~50 ms instead of Paxos' default 1 s
# batching: most of a cold start is waiting for such commits.
paxos propose interval = 0.05
paxos min wait = 0.01
mon warn on insecure global id reclaim allowed = false
ms async op threads = 2
[mon]
mon data = $dir/mon/\$name
mon cluster log file = $dir/log/cluster.log
mon initial members = a
[mon.a]
public addr = v2:127.0.0.1:$port
[mgr]
mgr data = $dir/mgr/\$name
# No optional modules (restful, iostat, nfs); Ceph's always-on modules still load. Listing those
# in CEPH_MGR_DISABLED_MODULES saves ~90 MiB but turns health into HEALTH_ERR.
mgr initial modules = ${CEPH_MGR_MODULES-}
mgr disabled modules = ${CEPH_MGR_DISABLED_MODULES-diskprediction_local}
[osd]
osd data = $dir/osd/\$name
osd objectstore = memstore
memstore device bytes = $((memstore_mib << 20))
memstore page set = true
osd op num shards = 1
osd op num threads per shard = 2
osd class load list = *
osd class default list = *
# The PG log lives in the object store, i.e. in RAM here, and in the OSD's own memory: with the
# defaults (up to 10000 entries per PG) the OSD grew from ~560 MiB to ~1 GiB during 8 s of 4 KiB
# random writes to a 256 MiB image; with these it stayed at ~560 MiB.
osd min pg log entries = 100
osd max pg log entries = 200
osd pg log dups tracked = 200
${CEPH_OSD_CONF:-}
[client]
admin socket = $dir/run/\$cluster-\$name.\$pid.\$cctid.asok
log file = /dev/null
EOF
    export MALLOC_ARENA_MAX=2
    step config
    # Mon: a monmap with this one mon, then the daemon (it daemonizes and writes its pid file).
    ceph-mon -c "$conf" -i a --mkfs >"$dir/log/mkfs-mon.out" 2>&1 ||
        die "ceph-mon --mkfs failed: $(tail -3 "$dir/log/mkfs-mon.out")"
    ceph-mon -c "$conf" -i a >"$dir/log/start-mon.out" 2>&1 ||
        die "ceph-mon failed to start: $(tail -3 "$dir/log/start-mon.out")"
    step mon-started
    local ceph=(ceph -c "$conf" --connect-timeout 30)
    if [[ $with_mgr != 0 ]]; then
        mkdir -p "$dir/mgr/mgr.x"
        ceph-mgr -c "$conf" -i x >"$dir/log/start-mgr.out" 2>&1 ||
            { log "ceph-mgr failed to start"; cmd_stop "$dir"; exit 1; }
    fi
    step mgr-started
    # One `ceph` session (each start of the CLI costs ~0.5 s): register OSD id 0, create the pool
    # and tag it for RBD. The OSD places itself in the CRUSH map when it boots (`osd crush
    # update on start`).
    local out
    out=$(printf '%s\n' "osd create" "osd pool create $pool 8 8" \
        "osd pool application enable $pool rbd" | "${ceph[@]}" 2>&1) ||
        { log "ceph commands failed: $out"; cmd_stop "$dir"; exit 1; }
    [[ $(head -1 <<<"$out") == 0 ]] || { log "unexpected osd id: $out"; cmd_stop "$dir"; exit 1; }
    step pool-created
    mkdir -p "$dir/osd/osd.0"
    ceph-osd -c "$conf" -i 0 --mkfs >"$dir/log/mkfs-osd.out" 2>&1 ||
        { log "ceph-osd --mkfs failed: $(tail -3 "$dir/log/mkfs-osd.out")"; cmd_stop "$dir"; exit 1; }
    step osd-mkfs
    ceph-osd -c "$conf" -i 0 >"$dir/log/start-osd.out" 2>&1 ||
        { log "ceph-osd failed to start"; cmd_stop "$dir"; exit 1; }
    step osd-started
    # `rbd pool init` writes to the pool, so it returns once its PGs are active.
    if ! timeout "$timeout" rbd -c "$conf" pool init "$pool" >"$dir/log/pool-init.out" 2>&1; then
        log "the pool did not become usable within ${timeout}s; $("${ceph[@]}" -s 2>&1 | tr '\n' ' ')"
        cmd_stop "$dir"
        exit 1
    fi
    step pool-usable
    cat >"$dir/state" <<EOF
MON_PORT=$port
POOL=$pool
STARTED_NS=$t0ns
EOF
    local ms=$((($(date +%s%N) - t0ns) / 1000000))
    log "cluster up in ${ms} ms ($((SECONDS - t0)) s): $dir (mon 127.0.0.1:$port, pool $pool);" \
        "RSS KiB: $(cmd_rss "$dir")"
    echo "$dir"
}

# term_wait DIR SECONDS PID...: SIGTERM the PIDs that are still DIR's daemons, wait up to
# SECONDS for them to exit, SIGKILL what is left and wait for that too.
term_wait() {
    local dir=$1 secs=$2 pid live
    shift 2
    local pids=()
    for pid in "$@"; do pid_ok "$dir" "$pid" && pids+=("$pid"); done
    ((${#pids[@]})) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local deadline=$(($(date +%s%N) + secs * 1000000000)) sig=KILL
    while :; do
        live=()
        for pid in "${pids[@]}"; do pid_ok "$dir" "$pid" && live+=("$pid"); done
        ((${#live[@]})) || return 0
        if (($(date +%s%N) > deadline)); then
            [[ $sig ]] || return 0
            kill -"$sig" "${live[@]}" 2>/dev/null || true
            sig=
            deadline=$(($(date +%s%N) + 2000000000))
        fi
        sleep 0.05
    done
}

cmd_stop() {
    local dir=${1:?usage: cluster.sh stop DIR}
    [[ -f $dir/ceph.conf ]] || die "$dir is not a cluster directory (no ceph.conf)"
    local f pids=()
    # The OSD first (it shuts down quickly while the mon is there to hear it), then the rest.
    term_wait "$dir" 3 "$(cat "$dir/run/osd.0.pid" 2>/dev/null || true)"
    for f in "$dir"/run/*.pid; do
        [[ -e $f ]] && pids+=("$(<"$f")")
    done
    term_wait "$dir" 3 "${pids[@]}"
    case $dir in
    /tmp/*) rm -rf "$dir" ;;
    *) log "left $dir in place (not under /tmp)" ;;
    esac
}

cmd_env() {
    local dir=${1:?usage: cluster.sh env DIR}
    [[ -f $dir/ceph.conf ]] || die "$dir is not a cluster directory"
    # shellcheck disable=SC1091
    source "$dir/state"
    echo "export CEPH_CONF=$dir/ceph.conf"
    echo "export CEPH_POOL=$POOL"
    echo "export CEPH_MON=127.0.0.1:$MON_PORT"
}

cmd_image() {
    local dir=${1:?usage: cluster.sh image DIR NAME MIB} name=${2:?image name} mib=${3:?size in MiB}
    # shellcheck disable=SC1091
    source "$dir/state"
    rbd -c "$dir/ceph.conf" create --size "${mib}M" "$POOL/$name"
}

cmd_kill_osd() {
    local dir=${1:?usage: cluster.sh kill-osd DIR} pid
    pid=$(cat "$dir/run/osd.0.pid" 2>/dev/null) || die "no OSD pid file"
    pid_ok "$dir" "$pid" || die "the OSD ($pid) is not running"
    kill -KILL "$pid"
}

cmd_rss() {
    local dir=${1:?usage: cluster.sh rss DIR}
    echo "mon=$(rss_of "$dir" mon.a) mgr=$(rss_of "$dir" mgr.x) osd=$(rss_of "$dir" osd.0)"
}

case ${1:-} in
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
env) shift; cmd_env "$@" ;;
image) shift; cmd_image "$@" ;;
kill-osd) shift; cmd_kill_osd "$@" ;;
rss) shift; cmd_rss "$@" ;;
*) die "usage: cluster.sh start [DIR] | stop DIR | env DIR | image DIR NAME MIB | kill-osd DIR | rss DIR" ;;
esac
