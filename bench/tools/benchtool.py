#!/usr/bin/env python3
"""Measurement and reporting helper for bench/compare.sh, bench/scaling.sh and
bench/file-compare.sh (standard library only).

Subcommands:

  point    run one client invocation, sample the target's CPU time from
           /proc/PID/stat during the measured window, append one CSV row
  table    print a CSV as a text table (and optionally a Markdown one)
  plot     draw PNGs with gnuplot from a compare.sh CSV
  pairs    rounds of alternating targets (compare.sh --client bdevperf):
           per-pair ratios, their median, the ratio of each target's best
           run, QD1 average latency; optional Markdown and PNGs
  bdevperf-fill  check a bdevperf perform_tests result: bytes written
  idle-table  the idle / light / full load / hog table of bench/idle-light.sh
  sweep-plot  latency (p50, p99) and target CPU against offered load
  rpc      one JSON-RPC 2.0 call over a unix socket (SPDK apps: vhost,
           bdevperf); prints the result as JSON
  sysinfo  one line about the machine (cores, CPU model, load average)
  cpus     the CPUs this process may run on, space separated

The CSV columns are listed in COLUMNS. Everything a table or plot shows comes
from the CSV, so a table can be re-printed from an old run's CSV.
"""

import argparse
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

COLUMNS = [
    "suite", "client", "target", "disk", "workload", "rw", "bs", "iodepth",
    "queues", "reactors", "mode", "iops", "mib_s", "p50_us", "p99_us",
    "p999_us", "max_us", "mean_us", "client_cpu_pct", "target_cpu_s",
    "target_cpu_pct", "iops_per_target_cpu_s", "target_cpu_us_per_io",
    "tgt_core_other_pct", "tgt_core_steal_pct", "errors", "timeouts", "load1", "status", "note",
    "round", "unix_time", "think_us", "target_busy_pct", "target_busy_ns_per_io",
    "link_ns_before", "link_ns_after",
]

# spinblk-linkprobe's round trip of a cache line between the client's and the target's cores
# falls in one of three bands on this project's 2-vCPU machine, changing from minute to minute
# as the hypervisor moves the vCPUs: about 30 ns (two hardware threads of one physical core,
# which then also share its pipeline), 70-120 ns (nearby cores) and 300-340 ns (distant ones).
# The bands' upper bounds, in ns:
LINK_BANDS = (("sibling", 50.0), ("near", 200.0), ("far", float("inf")))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads) in clock ticks."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        data = f.read()
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def core_ticks(cores):
    """(busy, steal) clock ticks summed over the given CPUs from /proc/stat.
    busy = user + nice + system + irq + softirq (guest time is inside user)."""
    busy = steal = 0
    want = {f"cpu{c}" for c in cores}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in want:
                v = [int(x) for x in parts[1:9]]
                busy += v[0] + v[1] + v[2] + v[5] + v[6]
                steal += v[7]
    return busy, steal


def load1():
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


def parse_spinblk_bench(text):
    """The JSON object printed by spinblk-bench --json."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            lat = r["lat_us"]
            return {
                "iops": r["iops"], "mib_s": r["mib_s"], "p50_us": lat["p50"],
                "p99_us": lat["p99"], "p999_us": lat["p99_9"],
                "max_us": lat["max"], "mean_us": lat["mean"],
                "client_cpu_pct": r["cpu"]["pct_one_core"],
                "errors": r["errors"], "timeouts": r["timeouts"],
                "fatal": r.get("fatal") or [],
                "window": tuple(r["window_unix_s"])
                if r.get("window_unix_s") and r["window_unix_s"][0] > 0 else None,
            }
    raise ValueError("no JSON object in spinblk-bench output")


TOTAL_RE = re.compile(
    r"^\s*Total\s*:\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
    r"\s+([\d.]+)\s+([\d.]+)", re.M)
PCT_RE = re.compile(r"^\s*([\d.]+)%\s*:\s*([\d.]+)us", re.M)


def parse_bdevperf(text):
    """SPDK bdevperf's text report, run with -l (latency summary).

    The "Total" row gives IOPS, MiB/s, Fail/s, TO/s, average/min/max latency.
    With -l each job prints cumulative-percentage cutoffs; with several jobs
    (one per client core) the worst job's value is kept.
    """
    m = TOTAL_RE.search(text)
    if not m:
        raise ValueError("no 'Total' row in bdevperf output")
    iops, mib_s, fail_s, to_s, avg, _mn, mx = (float(x) for x in m.groups())
    pct = {}
    for p, us in PCT_RE.findall(text):
        p = round(float(p), 5)
        pct[p] = max(pct.get(p, 0.0), float(us))
    return {
        "iops": iops, "mib_s": mib_s, "p50_us": pct.get(50.0, ""),
        "p99_us": pct.get(99.0, ""), "p999_us": pct.get(99.9, ""),
        "max_us": mx, "mean_us": avg, "client_cpu_pct": "",
        "errors": fail_s, "timeouts": to_s, "fatal": [], "window": None,
    }


def parse_bdevperf_json(text):
    """The JSON result of bdevperf's perform_tests RPC (as printed by
    bdevperf.py perform_tests): one entry per job in "results". IOPS are
    summed over jobs, the average latency is weighted by each job's IOPS."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the perform_tests output")
    r = json.loads(text[start:])
    jobs = r.get("results") or []
    if not jobs:
        raise ValueError("perform_tests returned no job results")
    iops = sum(float(j["iops"]) for j in jobs)
    mib = sum(float(j["mibps"]) for j in jobs)
    avg = sum(float(j["iops"]) * float(j["avg_latency_us"]) for j in jobs) / iops if iops else 0.0
    failed = sum(int(j.get("io_failed", 0)) for j in jobs)
    timeouts = sum(int(j.get("io_timeout", 0)) for j in jobs)
    bad = [f"{j.get('job')}: {j.get('status')}" for j in jobs if j.get("status") not in (None, "finished")]
    return {
        "iops": iops, "mib_s": mib, "p50_us": "", "p99_us": "", "p999_us": "",
        "max_us": max(float(j["max_latency_us"]) for j in jobs), "mean_us": avg,
        "client_cpu_pct": "", "errors": failed, "timeouts": timeouts, "fatal": bad,
        "window": None, "runtime": max(float(j["runtime"]) for j in jobs),
    }


def latency_summaries(path):
    """The 'Latency summary' blocks bdevperf -l printed to its log so far,
    as a list of {percentile: us} (worst job's value per percentile)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    blocks = text.split("Latency summary")[1:]
    out = []
    for b in blocks:
        # A block ends where the next report or run starts.
        b = re.split(r"Running I/O|Device Information|Received shutdown", b)[0]
        pct = {}
        for p, us in PCT_RE.findall(b):
            p = round(float(p), 5)
            pct[p] = max(pct.get(p, 0.0), float(us))
        if pct:
            out.append(pct)
    return out


def parse_idle(_text):
    """A client that does no I/O (e.g. `sleep N` while bdevperf sits
    attached and idle): no figures but the target's CPU."""
    return {"iops": 0.0, "mib_s": 0.0, "p50_us": "", "p99_us": "", "p999_us": "",
            "max_us": "", "mean_us": "", "client_cpu_pct": "", "errors": 0,
            "timeouts": 0, "fatal": [], "window": None}


def fmt(v, digits=1):
    if v == "" or v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


class Sampler:
    """Samples the target's CPU time (and its cores' /proc/stat counters)
    every PERIOD seconds on a thread, with wall-clock timestamps."""

    PERIOD = 0.05

    def __init__(self, pids, cores, client_pids=()):
        self.pids, self.cores, self.client_pids = pids, cores, list(client_pids)
        # (unix time, target ticks, (core busy, core steal), client ticks)
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def take(self):
        try:
            ticks = sum(cpu_ticks(p) for p in self.pids)
            core = core_ticks(self.cores) if self.cores else (0, 0)
        except (OSError, ValueError):
            return
        try:
            cticks = sum(cpu_ticks(p) for p in self.client_pids) if self.client_pids else None
        except (OSError, ValueError):
            cticks = None
        self.samples.append((time.time(), ticks, core, cticks))

    def run(self):
        while not self.stop.is_set():
            self.take()
            self.stop.wait(self.PERIOD)

    def window(self, t0, t1):
        """The first sample at or after t0 and the last at or before t1."""
        inside = [s for s in self.samples if t0 - 1e-3 <= s[0] <= t1 + 1e-3]
        if len(inside) < 2:
            return None
        return inside[0], inside[-1]


def busy_seconds(sock):
    """The busy time of all of a target's threads so far, in seconds, from
    SPDK's thread_get_stats (SPDK's vhost and spinblk both answer it: a thread
    is busy in the passes in which a poller found work)."""
    try:
        st = jsonrpc_call(sock, "thread_get_stats", timeout=5.0)
        return sum(t["busy"] for t in st["threads"]) / st["tick_rate"]
    except (OSError, RuntimeError, KeyError, TypeError, ZeroDivisionError):
        return None


def cmd_point(a):
    """Runs the client command, samples the target's CPU time all along, and
    appends one row to the CSV with the target's CPU rate over the client's
    measured window (spinblk-bench --json reports it as window_unix_s; for
    other clients: launch + sample_from for sample_len seconds)."""
    pids = [int(p) for p in a.target_pid.split(",") if p]
    cores = [int(c) for c in a.target_cores.split(",") if c] if a.target_cores else []
    out = open(a.client_log, "ab") if a.client_log else subprocess.DEVNULL
    client_pids = [int(p) for p in a.client_pid.split(",") if p] if a.client_pid else []
    sampler = Sampler(pids, cores, client_pids)
    sampler.thread.start()
    pct_before = len(latency_summaries(a.pct_file)) if a.pct_file else 0
    busy_before = busy_seconds(a.target_rpc) if a.target_rpc else None
    launch = time.time()
    proc = subprocess.Popen(a.command, stdout=subprocess.PIPE, stderr=out)
    stdout, _ = proc.communicate()
    ended = time.time()
    busy_after = busy_seconds(a.target_rpc) if a.target_rpc else None
    sampler.stop.set()
    sampler.thread.join()
    la = load1()
    text = stdout.decode("utf-8", "replace")
    if a.client_log:
        out.write(stdout)
        out.close()
    if a.result_file:
        with open(a.result_file, encoding="utf-8", errors="replace") as f:
            text = f.read()

    row = {c: "" for c in COLUMNS}
    row.update({
        "suite": a.suite, "client": a.client, "target": a.target,
        "disk": a.disk, "workload": a.workload, "rw": a.rw, "bs": a.bs,
        "iodepth": a.iodepth, "queues": a.queues, "reactors": a.reactors,
        "mode": a.mode, "load1": f"{la:.2f}", "note": a.note, "round": a.round,
        "think_us": a.think_us,
        "unix_time": f"{launch:.0f}",
        "link_ns_before": a.link_ns_before,
    })
    status = "ok"
    try:
        parser = {"bdevperf": parse_bdevperf, "bdevperf-json": parse_bdevperf_json,
                  "spinblk-bench": parse_spinblk_bench, "idle": parse_idle}[a.parser]
        r = parser(text)
        if r["fatal"]:
            status = "fatal: " + "; ".join(r["fatal"])
        elif r["timeouts"] not in ("", 0, 0.0):
            status = "timeouts"
        elif r["errors"] not in ("", 0, 0.0):
            status = "errors"
        elif proc.returncode != 0:
            status = f"client exit {proc.returncode}"
        if a.pct_file:
            # bdevperf prints the summary of the run (-l) around the time it
            # answers perform_tests: wait for it briefly.
            for _ in range(60):
                blocks = latency_summaries(a.pct_file)
                if len(blocks) > pct_before:
                    last = blocks[-1]
                    r["p50_us"] = last.get(50.0, "")
                    r["p99_us"] = last.get(99.0, "")
                    r["p999_us"] = last.get(99.9, "")
                    break
                time.sleep(0.05)
        for k in ("iops", "mib_s", "p50_us", "p99_us", "p999_us", "max_us",
                  "mean_us", "client_cpu_pct", "errors", "timeouts"):
            row[k] = fmt(r[k], 1 if k not in ("p50_us", "p99_us", "p999_us", "mean_us") else 2)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        status = f"no result ({e}; client exit {proc.returncode})"
        r = None

    win = r.get("window") if r else None
    if not win:
        win = (launch + a.sample_from, launch + a.sample_from + a.sample_len)
    picked = sampler.window(*win)
    if r is not None and picked is not None and \
            picked[1][0] - picked[0][0] >= 0.5 * (win[1] - win[0]):
        (t1, k1, c1, ck1), (t2, k2, c2, ck2) = picked
        rate = (k2 - k1) / CLK_TCK / (t2 - t1)  # CPU-seconds per second
        if row["client_cpu_pct"] == "" and ck1 is not None and ck2 is not None:
            # A client that does not report its own CPU (bdevperf): sampled.
            row["client_cpu_pct"] = f"{(ck2 - ck1) / CLK_TCK / (t2 - t1) * 100:.1f}"
        row["target_cpu_pct"] = f"{rate * 100:.1f}"
        row["target_cpu_s"] = f"{rate * a.runtime:.2f}"
        if rate > 0:
            row["iops_per_target_cpu_s"] = f"{r['iops'] / rate:.0f}"
        if r["iops"] > 0:
            row["target_cpu_us_per_io"] = f"{rate / r['iops'] * 1e6:.2f}"
        if cores:
            # What else ran on the target's cores (other tenants, the kernel
            # on behalf of others, interrupts), and what the hypervisor stole
            # from them, in % of those cores' wall time.
            span = CLK_TCK * (t2 - t1) * len(cores)
            other = (c2[0] - c1[0] - (k2 - k1)) / span * 100
            row["tgt_core_other_pct"] = f"{max(other, 0.0):.0f}"
            row["tgt_core_steal_pct"] = f"{(c2[1] - c1[1]) / span * 100:.0f}"
    elif status == "ok":
        status = "target CPU not sampled over the window (target gone?)"
    if r is not None and busy_before is not None and busy_after is not None:
        # Busy time over the whole client run (the target finds no work before or after it):
        # the target core's cost per I/O whatever the client's speed, where a polling target's
        # CPU time is always its whole core.
        busy = busy_after - busy_before
        row["target_busy_pct"] = f"{busy / a.runtime * 100:.1f}"
        if r["iops"] > 0:
            row["target_busy_ns_per_io"] = f"{busy / (r['iops'] * a.runtime) * 1e9:.1f}"
    if status == "ok" and ended - launch > a.runtime + a.sample_from + 10:
        status = f"ok (client took {ended - launch:.0f}s)"
    row["status"] = status

    new = not os.path.exists(a.csv) or os.path.getsize(a.csv) == 0
    with open(a.csv, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)
    print(f"  {a.target:<12} {a.workload:<22} IOPS={row['iops']:>10} "
          f"p50={row['p50_us']:>8} p99={row['p99_us']:>9} us  "
          f"target CPU={row['target_cpu_pct']:>6}%  client CPU={row['client_cpu_pct']:>6}%  "
          f"others on target core={row['tgt_core_other_pct']:>3}%  "
          + (f"busy={row['target_busy_pct']}% ({row['target_busy_ns_per_io']} ns/IO)  "
             if row["target_busy_pct"] else "") +
          f"load={row['load1']}  {status}", file=sys.stderr, flush=True)
    return 0


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def render(headers, rows, markdown):
    """rows: list of lists of strings; None in a row = separator (text only)."""
    widths = [len(h) for h in headers]
    for r in rows:
        if r is None:
            continue
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    out = []
    if markdown:
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|")
        for r in rows:
            if r is not None:
                out.append("| " + " | ".join(r) + " |")
    else:
        def line(cells):
            return "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                             for i, c in enumerate(cells)).rstrip()
        out.append(line(headers))
        out.append("  ".join("-" * w for w in widths))
        for r in rows:
            out.append("" if r is None else line(r))
    return "\n".join(out)


def compare_table(rows, markdown):
    """Rows grouped by (client, workload); targets of one workload adjacent;
    'vs' is IOPS relative to the first target listed for that workload."""
    headers = ["workload", "target", "IOPS", "vs", "p50 us", "p99 us",
               "p99.9 us", "client CPU%", "tgt CPU-s", "tgt CPU%",
               "IOPS/tgt-CPU-s", "tgt us/IO", "others% tgt core", "steal%", "load1", "status"]
    groups = {}
    order = []
    for r in rows:
        key = (r["client"], r["workload"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)
    out = []
    multi_client = len({r["client"] for r in rows}) > 1
    for key in order:
        g = groups[key]
        base = num(g[0]["iops"])
        for r in g:
            iops = num(r["iops"])
            vs = f"{iops / base:.2f}x" if iops is not None and base else ""
            wl = r["workload"] + (f" [{r['client']}]" if multi_client else "")
            out.append([
                wl, r["target"], fmt(iops, 0) if iops is not None else "",
                vs, r["p50_us"], r["p99_us"], r["p999_us"], r["client_cpu_pct"],
                r["target_cpu_s"], r["target_cpu_pct"], r["iops_per_target_cpu_s"],
                r["target_cpu_us_per_io"], r.get("tgt_core_other_pct", ""),
                r.get("tgt_core_steal_pct", ""), r["load1"], r["status"],
            ])
        out.append(None)
    if out and out[-1] is None:
        out.pop()
    return render(headers, out, markdown)


def scaling_table(rows, markdown):
    headers = ["reactors", "queues", "IOPS", "p50 us", "p99 us",
               "client CPU%", "target CPU%", "IOPS/tgt-CPU-s", "others% tgt cores",
               "steal%", "load1", "status"]
    out = [[r["reactors"], r["queues"], fmt(num(r["iops"]), 0) if num(r["iops"]) is not None else "",
            r["p50_us"], r["p99_us"], r["client_cpu_pct"], r["target_cpu_pct"],
            r["iops_per_target_cpu_s"], r.get("tgt_core_other_pct", ""),
            r.get("tgt_core_steal_pct", ""), r["load1"], r["status"]] for r in rows]
    return render(headers, out, markdown)


def file_table(rows, markdown):
    headers = ["workload", "target", "IOPS", "vs", "p50 us", "p99 us",
               "tgt CPU%", "tgt us CPU/IO", "client CPU%", "others% tgt core",
               "steal%", "load1", "status"]
    out = []
    seen = {}
    for r in rows:
        seen.setdefault(r["workload"], []).append(r)
    for wl, g in seen.items():
        base = num(g[0]["iops"])
        for r in g:
            iops = num(r["iops"])
            out.append([wl, r["target"], fmt(iops, 0) if iops is not None else "",
                        f"{iops / base:.2f}x" if iops is not None and base else "",
                        r["p50_us"], r["p99_us"], r["target_cpu_pct"],
                        r["target_cpu_us_per_io"], r["client_cpu_pct"],
                        r.get("tgt_core_other_pct", ""), r.get("tgt_core_steal_pct", ""),
                        r["load1"], r["status"]])
        out.append(None)
    if out and out[-1] is None:
        out.pop()
    return render(headers, out, markdown)


def cmd_table(a):
    rows = read_csv(a.csv)
    if not rows:
        print("(no results)")
        return 0
    kind = {"compare": compare_table, "scaling": scaling_table, "file": file_table}[a.kind]
    print(kind(rows, False))
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(kind(rows, True) + "\n")
    return 0


def gp_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_plot(a):
    """Three PNGs from a compare.sh CSV: IOPS per workload and target, latency
    percentiles (p50/p99/p99.9) per workload and target, and IOPS per target
    CPU-second."""
    if not shutil.which("gnuplot"):
        print("benchtool: gnuplot not found, no plots", file=sys.stderr)
        return 1
    rows = [r for r in read_csv(a.csv) if num(r["iops"]) is not None]
    if not rows:
        print("benchtool: no results to plot", file=sys.stderr)
        return 1
    os.makedirs(a.outdir, exist_ok=True)
    multi_client = len({r["client"] for r in rows}) > 1

    def wl(r):
        return r["workload"] + (f" ({r['client']})" if multi_client else "")

    workloads, targets = [], []
    for r in rows:
        if wl(r) not in workloads:
            workloads.append(wl(r))
        if r["target"] not in targets:
            targets.append(r["target"])
    by = {(wl(r), r["target"]): r for r in rows}

    def bars(column, fname, scale=1.0):
        path = os.path.join(a.outdir, fname)
        with open(path, "w", encoding="utf-8") as f:
            f.write("workload " + " ".join(gp_str(t) for t in targets) + "\n")
            for w in workloads:
                vals = []
                for t in targets:
                    v = num(by[(w, t)][column]) if (w, t) in by else None
                    vals.append("NaN" if v is None else f"{v / scale:.3f}")
                f.write(gp_str(w) + " " + " ".join(vals) + "\n")
        return path

    iops_dat = bars("iops", "iops.dat", 1000.0)
    eff_dat = bars("iops_per_target_cpu_s", "efficiency.dat", 1000.0)
    # latency.dat: one block per workload (gnuplot "index"), one row per target.
    lat_dat = os.path.join(a.outdir, "latency.dat")
    lat_max = 1.0
    with open(lat_dat, "w", encoding="utf-8") as f:
        for k, w in enumerate(workloads):
            if k:
                f.write("\n\n")
            f.write(f'# {w}\ntarget "p50" "p99" "p99.9"\n')
            for t in targets:
                r = by.get((w, t))
                vals = [num(r[c]) if r else None for c in ("p50_us", "p99_us", "p999_us")]
                lat_max = max([lat_max] + [v for v in vals if v is not None])
                f.write(gp_str(t) + " " +
                        " ".join("NaN" if v is None else f"{v:.3f}" for v in vals) + "\n")

    title = a.title.replace('"', "'")
    ncols = len(targets)
    nw = len(workloads)
    panels = []
    for k, w in enumerate(workloads):
        last = k == nw - 1
        panels.append(f"""
set title {gp_str(w)}
{"set key top right" if last else "unset key"}
{"set ylabel 'latency (us, log scale)'" if k == 0 else "unset ylabel"}
plot for [i=2:4] "{lat_dat}" index {k} using i:xtic(1) title columnheader(i)
""")
    top = 10 ** (len(str(int(lat_max))))
    script = f"""
set terminal pngcairo size 1200,650 noenhanced font ",10"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xtics rotate by -20 left
set datafile missing "NaN"

set output "{a.outdir}/iops.png"
set title "{title}: IOPS per workload and target (higher is better)"
set ylabel "thousand IOPS"
set format y "%g"
plot for [i=2:{ncols + 1}] "{iops_dat}" using i:xtic(1) title columnheader(i)

set output "{a.outdir}/efficiency.png"
set title "{title}: IOPS per target CPU-second (higher is better; a busy-poller burns its whole core)"
set ylabel "thousand IOPS per CPU-second of the target"
plot for [i=2:{ncols + 1}] "{eff_dat}" using i:xtic(1) title columnheader(i)

set terminal pngcairo size {max(1200, 110 * nw * max(ncols, 2))},600 noenhanced font ",10"
set output "{a.outdir}/latency.png"
set multiplot layout 1,{nw} title "{title}: client-side latency p50 / p99 / p99.9 per workload and target (lower is better)"
set logscale y
set yrange [1:{top}]
set format y "%g"
set xtics norotate center
{"".join(panels)}
unset multiplot
"""
    gp = os.path.join(a.outdir, "plots.gp")
    with open(gp, "w", encoding="utf-8") as f:
        f.write(script)
    res = subprocess.run(["gnuplot", gp], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        print("benchtool: gnuplot failed:\n" + res.stderr, file=sys.stderr)
        return 1
    for p in ("iops.png", "latency.png", "efficiency.png"):
        print(os.path.join(a.outdir, p))
    return 0


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def pairs_data(rows, subject, key_order=None):
    """Groups the rows of an alternating run by (disk, workload); runs on a
    RAM disk that was not filled (note "NOT filled") are left out.

    Returns (groups, targets): groups is a list of ((disk, workload),
    {target: {round: row}}) in first-seen order, targets the target names in
    first-seen order with the subject first. Only rows whose status starts
    with "ok" and that have an IOPS figure are used."""
    groups, order, targets = {}, [], []
    for r in rows:
        if not r.get("status", "").startswith("ok") or num(r["iops"]) is None:
            continue
        if "NOT filled" in r.get("note", ""):
            continue  # a RAM disk the fill did not cover: not comparable
        key = (r["disk"], r["workload"])
        if key not in groups:
            groups[key] = {}
            order.append(key)
        groups[key].setdefault(r["target"], {})[r.get("round", "")] = r
        if r["target"] not in targets:
            targets.append(r["target"])
    if subject in targets:
        targets.remove(subject)
        targets.insert(0, subject)
    if key_order:
        rank = {k: i for i, k in enumerate(key_order)}
        order.sort(key=lambda k: rank.get(k, len(rank)))
    return [(k, groups[k]) for k in order], targets


def pairs_tables(rows, subject, markdown, key_order=None):
    """Two tables: per target (best, median, spread, QD1 average latency,
    target CPU) and per comparison (pair ratios, median, best-of ratio)."""
    groups, targets = pairs_data(rows, subject, key_order)
    t1h = ["disk", "workload", "target", "runs", "best IOPS", "median IOPS", "worst IOPS",
           "avg lat us (best run)", "avg lat us (median)", "p50/p99 us (best run)",
           "tgt CPU% (median)", "IOPS/tgt-CPU-s (median)", "client CPU% (median)",
           "others% tgt core (max)", "load1 (median)", "tgt busy% (median)",
           "tgt busy ns/IO (median)"]
    t1 = []
    for (disk, wl), by_t in groups:
        for t in targets:
            runs = by_t.get(t)
            if not runs:
                continue
            rs = list(runs.values())
            iops = [num(r["iops"]) for r in rs]
            best = max(rs, key=lambda r: num(r["iops"]))
            lat = [num(r["mean_us"]) for r in rs if num(r["mean_us"]) is not None]
            cpu = [num(r["target_cpu_pct"]) for r in rs if num(r["target_cpu_pct"]) is not None]
            oth = [num(r.get("tgt_core_other_pct")) for r in rs
                   if num(r.get("tgt_core_other_pct")) is not None]
            ld = [num(r["load1"]) for r in rs if num(r["load1"]) is not None]
            eff = [num(r["iops_per_target_cpu_s"]) for r in rs
                   if num(r["iops_per_target_cpu_s"]) is not None]
            ccpu = [num(r["client_cpu_pct"]) for r in rs if num(r["client_cpu_pct"]) is not None]
            busy = [num(r.get("target_busy_pct")) for r in rs
                    if num(r.get("target_busy_pct")) is not None]
            bnio = [num(r.get("target_busy_ns_per_io")) for r in rs
                    if num(r.get("target_busy_ns_per_io")) is not None]
            t1.append([disk, wl, t, str(len(rs)), fmt(max(iops), 0), fmt(median(iops), 0),
                       fmt(min(iops), 0), fmt(num(best["mean_us"]), 2),
                       fmt(median(lat), 2) if lat else "",
                       f"{best['p50_us']}/{best['p99_us']}" if best["p50_us"] else "",
                       fmt(median(cpu), 1) if cpu else "",
                       fmt(median(eff), 0) if eff else "", fmt(median(ccpu), 1) if ccpu else "",
                       fmt(max(oth), 0) if oth else "", fmt(median(ld), 2) if ld else "",
                       fmt(median(busy), 1) if busy else "", fmt(median(bnio), 1) if bnio else ""])
        t1.append(None)
    if t1 and t1[-1] is None:
        t1.pop()
    t2h = ["disk", "workload", "ratio", "pair ratios (round order)", "median pair ratio",
           "best-of ratio", "pairs", "per busy core: pair ratios", "per busy core: median"]
    t2 = []
    for (disk, wl), by_t in groups:
        mine = by_t.get(subject, {})
        for other in targets[1:]:
            theirs = by_t.get(other, {})
            rounds = [k for k in mine if k in theirs]
            rounds.sort(key=lambda k: (num(k) is None, num(k) or 0, k))
            ratios = [num(mine[k]["iops"]) / num(theirs[k]["iops"]) for k in rounds
                      if num(theirs[k]["iops"])]
            best_m = max((num(r["iops"]) for r in mine.values()), default=None)
            best_t = max((num(r["iops"]) for r in theirs.values()), default=None)
            # IOPS per busy target core, subject over other: the other's busy ns per I/O
            # over the subject's, same round.
            per_core = [num(theirs[k].get("target_busy_ns_per_io")) /
                        num(mine[k].get("target_busy_ns_per_io")) for k in rounds
                        if num(theirs[k].get("target_busy_ns_per_io"))
                        and num(mine[k].get("target_busy_ns_per_io"))]
            t2.append([disk, wl, f"{subject}/{other}", " ".join(f"{x:.2f}" for x in ratios),
                       f"{median(ratios):.2f}" if ratios else "",
                       f"{best_m / best_t:.2f}" if best_m and best_t else "", str(len(ratios)),
                       " ".join(f"{x:.2f}" for x in per_core),
                       f"{median(per_core):.2f}" if per_core else ""])
    out = render(t1h, t1, markdown)
    out += "\n\n" + render(t2h, t2, markdown)
    return out


def pairs_summary(rows, subject, markdown):
    """One line per (disk, workload): each target's best IOPS, the subject's
    best-of ratio and median pair ratio against each other target, and the
    average latency of each target's best run."""
    groups, targets = pairs_data(rows, subject)
    others = targets[1:]
    headers = ["disk", "workload"] + [f"{t} best" for t in targets]
    headers += [f"best-of vs {o}" for o in others] + [f"median pair vs {o}" for o in others]
    headers += ["avg lat us of best runs (" + " / ".join(targets) + ")"]
    out = []
    for (disk, wl), by_t in groups:
        best = {}
        for t in targets:
            runs = by_t.get(t, {})
            best[t] = max(runs.values(), key=lambda r: num(r["iops"])) if runs else None
        line = [disk, wl] + [fmt(num(best[t]["iops"]), 0) if best[t] else "" for t in targets]
        mine = by_t.get(subject, {})
        for o in others:
            b = best[o]
            line.append(f"{num(best[subject]['iops']) / num(b['iops']):.2f}"
                        if best.get(subject) and b and num(b["iops"]) else "")
        for o in others:
            theirs = by_t.get(o, {})
            rs = [num(mine[k]["iops"]) / num(theirs[k]["iops"]) for k in mine
                  if k in theirs and num(theirs[k]["iops"])]
            line.append(f"{median(rs):.2f}" if rs else "")
        line.append(" / ".join(fmt(num(best[t]["mean_us"]), 2) if best[t] else "-" for t in targets))
        out.append(line)
    return render(headers, out, markdown)


def undisturbed(rows, limit):
    """The rows whose target core ran (almost) nothing else: others% on the
    target core at most `limit`."""
    out = []
    for r in rows:
        o = num(r.get("tgt_core_other_pct"))
        if o is not None and o <= limit:
            out.append(r)
    return out


def pairs_report(rows, subject, markdown, limit):
    sep = "\n\n" if markdown else "\n"
    text = "Summary (best run of each target; median of the back-to-back pair ratios):" + sep
    text += pairs_summary(rows, subject, markdown) + "\n\n"
    text += "All runs:" + sep + pairs_tables(rows, subject, markdown)
    clean = undisturbed(rows, limit)
    head = (f"Undisturbed runs only (others% on the target core <= {limit:g}; "
            f"{len(clean)} of {len(rows)} runs):")
    text += "\n\n" + head + ("\n\n" if markdown else "\n")
    key_order = []
    for r in rows:
        if (r["disk"], r["workload"]) not in key_order:
            key_order.append((r["disk"], r["workload"]))
    text += pairs_tables(clean, subject, markdown, key_order) if clean else "(none)"
    if any(link_state(r) for r in clean):
        bounds = ", ".join(f"{n} under {u:g} ns" for n, u in LINK_BANDS if u != float("inf"))
        text += "\n\n" + (f"Undisturbed runs by the link between the client's and the target's "
                           f"cores (spinblk-linkprobe's round trip before and after each run, "
                           f"the same band both times; {bounds}, far above; medians per band):")
        text += ("\n\n" if markdown else "\n") + link_tables(clean, subject, markdown)
    return text


def cmd_amend(a):
    """Sets COLUMN=VALUE in the CSV's last row when that row is the run named by --target,
    --disk, --workload and --round (a point that recorded no row leaves the one before it
    alone)."""
    col, _, value = a.set.partition("=")
    if col not in COLUMNS:
        print(f"benchtool amend: no column {col!r}", file=sys.stderr)
        return 2
    rows = read_csv(a.csv) if os.path.exists(a.csv) else []
    last = rows[-1] if rows else None
    named = (a.target, a.disk, a.workload, a.round)
    if not last or tuple(last.get(k) for k in ("target", "disk", "workload", "round")) != named:
        print(f"benchtool amend: the last row is not {' '.join(named)}", file=sys.stderr)
        return 1
    last[col] = value
    with open(a.csv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})
    return 0


def link_band(ns):
    """The LINK_BANDS name of a spinblk-linkprobe figure."""
    return next(name for name, upper in LINK_BANDS if ns < upper)


def link_state(r):
    """The run's LINK_BANDS name when spinblk-linkprobe read the same band before and after
    it, "mixed" when the band changed, None when the run has no figures."""
    b, e = num(r.get("link_ns_before")), num(r.get("link_ns_after"))
    if b is None or e is None:
        return None
    return link_band(b) if link_band(b) == link_band(e) else "mixed"


def link_tables(rows, subject, markdown):
    """Each target's runs split by the link between the client's and the target's cores
    (LINK_BANDS): runs, median IOPS and median busy ns per I/O in each band, and the
    subject's ratios against each other target within each band (per busy core: the other's
    median busy ns per I/O over the subject's). Runs whose band changed (mixed) are counted
    only."""
    groups, targets = pairs_data(rows, subject)
    bands = [name for name, _ in LINK_BANDS]
    h1 = ["disk", "workload", "target", "runs " + " / ".join(bands + ["mixed"])]
    h1 += [f"median IOPS {b}" for b in bands] + [f"busy ns/IO {b}" for b in bands]
    h2 = ["disk", "workload", "ratio"] + [f"per busy core {b}" for b in bands]
    h2 += [f"IOPS {b}" for b in bands]
    t1, t2 = [], []
    for (disk, wl), by_t in groups:
        med = {}
        for t in targets:
            runs = list(by_t.get(t, {}).values())
            counts = [sum(1 for r in runs if link_state(r) == b) for b in bands + ["mixed"]]
            iops, ns = {}, {}
            for b in bands:
                mine = [r for r in runs if link_state(r) == b]
                i = [num(r["iops"]) for r in mine if num(r["iops"])]
                n = [num(r["target_busy_ns_per_io"]) for r in mine
                     if num(r.get("target_busy_ns_per_io"))]
                iops[b] = median(i) if i else None
                ns[b] = median(n) if n else None
            med[t] = (iops, ns)
            t1.append([disk, wl, t, " / ".join(str(c) for c in counts)]
                      + [fmt(iops[b], 0) for b in bands] + [fmt(ns[b], 1) for b in bands])
        for o in targets[1:]:
            (mi, mn), (oi, on) = med[subject], med[o]
            t2.append([disk, wl, f"{subject}/{o}"]
                      + [f"{on[b] / mn[b]:.2f}" if mn[b] and on[b] else "" for b in bands]
                      + [f"{mi[b] / oi[b]:.2f}" if mi[b] and oi[b] else "" for b in bands])
    return render(h1, t1, markdown) + "\n\n" + render(h2, t2, markdown)


def cmd_pairs(a):
    if len(a.csv) == 1:
        rows = read_csv(a.csv[0])
    else:
        # Several runs: round R of the i-th file becomes round "i.R" (pairs
        # only form within one run).
        rows = []
        for i, path in enumerate(a.csv, 1):
            for r in read_csv(path):
                r["round"] = f"{i}.{r.get('round', '')}"
                rows.append(r)
    if not rows:
        print("(no results)")
        return 0
    print(pairs_report(rows, a.subject, False, a.undisturbed))
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(pairs_report(rows, a.subject, True, a.undisturbed) + "\n")
    if a.plot_dir:
        return pairs_plot(rows, a.subject, a.plot_dir, a.title)
    return 0


def pairs_plot(rows, subject, outdir, title):
    """rounds.png: IOPS of every run, per (disk, workload), x = round, one
    line per target. ratios.png: median pair ratio and best-of ratio of the
    subject against each other target, per (disk, workload)."""
    if not shutil.which("gnuplot"):
        print("benchtool: gnuplot not found, no plots", file=sys.stderr)
        return 1
    groups, targets = pairs_data(rows, subject)
    if not groups:
        print("benchtool: no results to plot", file=sys.stderr)
        return 1
    os.makedirs(outdir, exist_ok=True)
    rounds_dat = os.path.join(outdir, "rounds.dat")
    with open(rounds_dat, "w", encoding="utf-8") as f:
        for k, ((disk, wl), by_t) in enumerate(groups):
            if k:
                f.write("\n\n")
            rnds = sorted({rd for runs in by_t.values() for rd in runs},
                          key=lambda x: (num(x) is None, num(x) or 0, x))
            f.write(f"# {disk} {wl}\nround " + " ".join(gp_str(t) for t in targets) + "\n")
            for rd in rnds:
                vals = []
                for t in targets:
                    r = by_t.get(t, {}).get(rd)
                    vals.append("NaN" if r is None else f"{num(r['iops']) / 1000:.3f}")
                f.write(f"{gp_str(str(rd))} " + " ".join(vals) + "\n")
    others = targets[1:]
    ratios_dat = os.path.join(outdir, "ratios.dat")
    cols = []
    for o in others:
        cols += [f"median pair {subject}/{o}", f"best-of {subject}/{o}"]
    with open(ratios_dat, "w", encoding="utf-8") as f:
        f.write("group " + " ".join(gp_str(c) for c in cols) + "\n")
        for (disk, wl), by_t in groups:
            mine = by_t.get(subject, {})
            vals = []
            for o in others:
                theirs = by_t.get(o, {})
                rs = [num(mine[k]["iops"]) / num(theirs[k]["iops"]) for k in mine
                      if k in theirs and num(theirs[k]["iops"])]
                bm = max((num(r["iops"]) for r in mine.values()), default=None)
                bt = max((num(r["iops"]) for r in theirs.values()), default=None)
                vals.append(f"{median(rs):.3f}" if rs else "NaN")
                vals.append(f"{bm / bt:.3f}" if bm and bt else "NaN")
            f.write(gp_str(f"{disk} {wl}") + " " + " ".join(vals) + "\n")
    title = title.replace('"', "'")
    n = len(groups)
    ncol = min(n, 4)
    nrow = (n + ncol - 1) // ncol
    panels = []
    for k, ((disk, wl), _by) in enumerate(groups):
        panels.append(f"""
set title {gp_str(f"{disk} {wl}")}
{"set key bottom right" if k == 0 else "unset key"}
plot for [i=2:{len(targets) + 1}] "{rounds_dat}" index {k} using 0:i:xtic(1) with linespoints title columnheader(i)
""")
    script = f"""
set datafile missing "NaN"
set grid ytics
set terminal pngcairo size {300 * ncol + 100},{280 * nrow + 80} noenhanced font ",9"
set output "{outdir}/rounds.png"
set multiplot layout {nrow},{ncol} title "{title}: IOPS of every run by round (targets alternate within a round)"
set ylabel "thousand IOPS"
set xlabel "round"
set yrange [0:*]
{"".join(panels)}
unset multiplot

set terminal pngcairo size {max(900, 140 * n * max(len(cols), 2) // 2)},600 noenhanced font ",10"
set output "{outdir}/ratios.png"
set title "{title}: {subject} IOPS / other target's IOPS (median of back-to-back pairs, and best run / best run)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by -20 left
unset xlabel
set ylabel "ratio"
set yrange [0:*]
set key top right
plot for [i=2:{len(cols) + 1}] "{ratios_dat}" using i:xtic(1) title columnheader(i), 1 with lines lc rgb "black" dt 2 notitle
"""
    gp = os.path.join(outdir, "pairs.gp")
    with open(gp, "w", encoding="utf-8") as f:
        f.write(script)
    res = subprocess.run(["gnuplot", gp], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        print("benchtool: gnuplot failed:\n" + res.stderr, file=sys.stderr)
        return 1
    for p in ("rounds.png", "ratios.png"):
        print(os.path.join(outdir, p))
    return 0


IDLE_COLUMNS = [
    # header, workload, mode, what
    ("idle CPU%", "idle", None, "cpu"),
    ("light intr p50/p99 us", "light", "interrupt", "lat"),
    ("light intr CPU%", "light", "interrupt", "cpu"),
    ("light poll p50/p99 us", "light", "poll", "lat"),
    ("light poll CPU%", "light", "poll", "cpu"),
    ("QD32 IOPS", "qd32", None, "iops"),
    ("QD1 intr p50 us", "qd1", "interrupt", "p50"),
    ("QD1 poll p50 us", "qd1", "poll", "p50"),
    ("hog light intr p50/p99 us", "hog-light", "interrupt", "lat"),
    ("hog QD1 intr p50/p99 us", "hog-qd1", "interrupt", "lat"),
    ("hog QD1 poll p50/p99 us", "hog-qd1", "poll", "lat"),
    ("others% tgt core (median, without hog)", None, None, "others"),
]


def idle_cells(rows):
    """{(target, workload, mode): [rows]} for the ok rows of an idle-light CSV."""
    cells = {}
    for r in rows:
        if not r.get("status", "").startswith("ok"):
            continue
        cells.setdefault((r["target"], r["workload"], r["mode"]), []).append(r)
    return cells


def idle_value(cells, target, wl, mode, what):
    """Median over rounds of one figure; None when not measured."""
    rs = []
    for (t, w, m), v in cells.items():
        if t == target and (w == wl or (wl is None and not w.startswith("hog"))) \
                and (mode is None or m == mode):
            rs += v
    if not rs:
        return None
    col = {"cpu": "target_cpu_pct", "iops": "iops", "p50": "p50_us", "p99": "p99_us",
           "others": "tgt_core_other_pct"}
    if what == "lat":
        p50 = median([x for x in (num(r["p50_us"]) for r in rs) if x is not None])
        p99 = median([x for x in (num(r["p99_us"]) for r in rs) if x is not None])
        return (p50, p99)
    vals = [x for x in (num(r[col[what]]) for r in rs) if x is not None]
    return median(vals) if vals else None


def idle_table(rows, markdown):
    cells = idle_cells(rows)
    targets = []
    for r in rows:
        if r["target"] not in targets:
            targets.append(r["target"])
    headers = ["target"] + [c[0] for c in IDLE_COLUMNS]
    out = []
    for t in targets:
        line = [t]
        for _h, wl, mode, what in IDLE_COLUMNS:
            v = idle_value(cells, t, wl, mode, what)
            if v is None:
                line.append("n/a")
            elif what == "lat":
                line.append("/".join("" if x is None else f"{x:.1f}" for x in v))
            elif what == "iops":
                line.append(f"{v:.0f}")
            elif what in ("cpu", "others"):
                line.append(f"{v:.1f}" if what == "cpu" else f"{v:.0f}")
            else:
                line.append(f"{v:.2f}")
        out.append(line)
    text = render(headers, out, markdown)
    rounds = sorted({r.get("round", "") for r in rows})
    text += f"\n(medians over {len(rounds)} round(s); n/a = not measured for that target/client)"
    return text + "\n" + idle_goals(cells, markdown)


def idle_goals(cells, markdown):
    """Issue 13's goals, where the rows needed are there."""
    a, b, q = "spinblk-adaptive", "spinblk-busy", "qsd"
    lines = []

    def have(*xs):
        return all(x is not None for x in xs)

    idle = idle_value(cells, a, "idle", None, "cpu")
    if have(idle):
        lines.append(f"idle client: adaptive {idle:.1f}% of a core (goal < 1%)")
    for mode in ("interrupt", "poll"):
        la = idle_value(cells, a, "light", mode, "lat")
        lq = idle_value(cells, q, "light", mode, "lat")
        ca = idle_value(cells, a, "light", mode, "cpu")
        if have(la, lq, ca) and la[0] and lq[0]:
            lines.append(f"light load, client {mode}: adaptive p50 {la[0]:.1f} us = {la[0] / lq[0]:.2f}x qsd's "
                         f"{lq[0]:.1f} us (goal < 0.5x) at {ca:.1f}% of a core (goal < 40%)")
    ia, ib = idle_value(cells, a, "qd32", None, "iops"), idle_value(cells, b, "qd32", None, "iops")
    if have(ia, ib) and ib:
        lines.append(f"full load: QD32 IOPS adaptive/busy = {ia / ib:.2f} (goal >= 0.95)")
    for mode in ("interrupt", "poll"):
        pa, pb = idle_value(cells, a, "qd1", mode, "p50"), idle_value(cells, b, "qd1", mode, "p50")
        if have(pa, pb) and pb:
            lines.append(f"continuous QD1 p50, client {mode}: adaptive/busy = {pa / pb:.2f} (goal <= 1.1)")
    for wl, mode in (("hog-light", "interrupt"), ("hog-qd1", "interrupt"), ("hog-qd1", "poll")):
        ha, hb = idle_value(cells, a, wl, mode, "lat"), idle_value(cells, b, wl, mode, "lat")
        if have(ha, hb):
            lines.append(f"{wl} (client {mode}) with a busy process on the target core: p50/p99 adaptive "
                         f"{ha[0]:.1f}/{ha[1]:.1f} us vs busy {hb[0]:.1f}/{hb[1]:.1f} us")
    if not lines:
        return "(goals of issue 13: need spinblk-adaptive rows)"
    bullet = "- " if markdown else "  "
    return "issue 13 goals:\n" + "\n".join(bullet + x for x in lines)


def cmd_idle_table(a):
    rows = read_csv(a.csv)
    if not rows:
        print("(no results)")
        return 0
    print(idle_table(rows, False))
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(idle_table(rows, True) + "\n")
    return 0


def cmd_sweep_plot(a):
    """latency-vs-load.png: p50 and p99 against achieved IOPS (the offered
    load, set by the think time), one line per target and client mode; and
    the target's CPU against the same axis."""
    if not shutil.which("gnuplot"):
        print("benchtool: gnuplot not found, no plots", file=sys.stderr)
        return 1
    rows = [r for r in read_csv(a.csv) if r["workload"] == "sweep"
            and r.get("status", "").startswith("ok") and num(r["iops"])]
    if not rows:
        print("benchtool: no sweep rows to plot", file=sys.stderr)
        return 1
    # One point per (target, client mode, pause): the median over rounds.
    by = {}
    for r in rows:
        by.setdefault((f"{r['target']} ({r['mode']})", r.get("think_us", "")), []).append(r)
    series = {}
    for (name, think), rs in by.items():
        def med(col, rs=rs):
            v = [num(r[col]) for r in rs if num(r[col]) is not None]
            return median(v) if v else None
        series.setdefault(name, []).append({
            "iops": med("iops"), "p50_us": med("p50_us"), "p99_us": med("p99_us"),
            "target_cpu_pct": med("target_cpu_pct"), "think_us": think})
    os.makedirs(a.outdir, exist_ok=True)
    dat = os.path.join(a.outdir, "sweep.dat")
    names = list(series)
    with open(dat, "w", encoding="utf-8") as f:
        for k, n in enumerate(names):
            if k:
                f.write("\n\n")
            f.write(f"# {n}\n# iops p50_us p99_us target_cpu_pct think_us\n")
            for r in sorted(series[n], key=lambda r: -(num(r["think_us"]) or 0)):
                vals = [r["iops"], r["p50_us"], r["p99_us"], r["target_cpu_pct"]]
                f.write(" ".join("NaN" if v is None else f"{v:.3f}" for v in vals)
                        + f" {r['think_us'] or 'NaN'}\n")
    title = a.title.replace('"', "'")
    plots_p50 = ", ".join(f'"{dat}" index {k} using 1:2 with linespoints title {gp_str(n + " p50")}'
                          for k, n in enumerate(names))
    plots_p99 = ", ".join(f'"{dat}" index {k} using 1:3 with linespoints dt 2 title {gp_str(n + " p99")}'
                          for k, n in enumerate(names))
    plots_cpu = ", ".join(f'"{dat}" index {k} using 1:4 with linespoints title {gp_str(n)}'
                          for k, n in enumerate(names))
    script = f"""
set terminal pngcairo size 1300,600 noenhanced font ",10"
set output "{a.outdir}/latency-vs-load.png"
set datafile missing "NaN"
set multiplot layout 1,2 title "{title}: QD1, offered load set by the pause after each completion (medians over rounds)"
set grid
set logscale xy
set xlabel "IOPS (achieved = offered)"
set ylabel "latency (us)"
set key top left font ",8"
set title "latency against load (solid p50, dashed p99)"
plot {plots_p50}, {plots_p99}
unset logscale y
set ylabel "target CPU (% of one core)"
set yrange [0:105]
set title "target CPU against load"
plot {plots_cpu}
unset multiplot
"""
    gp = os.path.join(a.outdir, "sweep.gp")
    with open(gp, "w", encoding="utf-8") as f:
        f.write(script)
    res = subprocess.run(["gnuplot", gp], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        print("benchtool: gnuplot failed:\n" + res.stderr, file=sys.stderr)
        return 1
    print(os.path.join(a.outdir, "latency-vs-load.png"))
    return 0


def cmd_bdevperf_fill(a):
    """Prints the bytes a bdevperf write pass wrote (IOPS * io size *
    runtime), from perform_tests' JSON or (--text) bdevperf's own report;
    exit 1 if no result could be read or the run had failures."""
    with open(a.result, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        if a.text:
            r = parse_bdevperf(text)
            r["runtime"] = a.runtime
        else:
            r = parse_bdevperf_json(text)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"benchtool: {e}", file=sys.stderr)
        return 1
    if r["errors"] or r["timeouts"]:
        print(f"benchtool: the write pass had failures ({r['errors']}/s failed, "
              f"{r['timeouts']}/s timed out)", file=sys.stderr)
        return 1
    print(int(r["iops"] * a.io_size * r["runtime"]))
    return 0


def jsonrpc_call(path, method, params=None, timeout=60.0):
    """One JSON-RPC 2.0 request on a unix socket; returns the result or
    raises RuntimeError with the server's error."""
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        sk.settimeout(timeout)
        sk.connect(path)
        sk.sendall(json.dumps(req).encode())
        buf = b""
        dec = json.JSONDecoder()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{method}: no reply within {timeout}s")
            sk.settimeout(left)
            chunk = sk.recv(65536)
            if not chunk:
                raise RuntimeError(f"{method}: connection closed before a reply")
            buf += chunk
            try:
                resp, _ = dec.raw_decode(buf.decode("utf-8").lstrip())
            except (ValueError, UnicodeDecodeError):
                continue
            if "error" in resp:
                e = resp["error"]
                raise RuntimeError(f"{method}: error {e.get('code')}: {e.get('message')}")
            return resp.get("result")


def cmd_rpc(a):
    params = json.loads(a.params) if a.params else None
    end = time.monotonic() + a.retry
    while True:
        try:
            res = jsonrpc_call(a.sock, a.method, params, a.timeout)
            break
        except (OSError, RuntimeError) as e:
            if time.monotonic() >= end:
                print(f"benchtool rpc: {e}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    print(json.dumps(res, indent=2))
    return 0


def cmd_cpu_snap(a):
    """One line: unix time, CPU ticks of each pid (0 if gone), busy ticks of
    the given cores; `cpu-diff` turns two such lines into rates."""
    ticks = []
    for p in a.pids.split(","):
        try:
            ticks.append(cpu_ticks(int(p)))
        except (OSError, ValueError):
            ticks.append(0)
    busy, _steal = core_ticks([int(c) for c in a.cores.split(",") if c])
    print(f"{time.time():.3f} {busy} " + " ".join(map(str, ticks)))
    return 0


def cmd_cpu_diff(a):
    """From two cpu-snap lines (pids: target first): the CPU rate of each pid
    and what else ran on the cores, in % of one core."""
    t1, b1, *p1 = a.before.split()
    t2, b2, *p2 = a.after.split()
    dt = float(t2) - float(t1)
    rates = [(int(y) - int(x)) / CLK_TCK / dt * 100 for x, y in zip(p1, p2)]
    ncores = max(1, a.ncores)
    others = (int(b2) - int(b1)) / CLK_TCK / dt * 100 - rates[0]
    names = a.names.split(",")
    parts = [f"{n} {r:.1f}%" for n, r in zip(names, rates)]
    print(", ".join(parts) + f", others on the target core(s) {max(others, 0.0) / ncores:.0f}% "
          f"(over {dt:.1f}s)")
    return 0


def cmd_sysinfo(_a):
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg", encoding="ascii") as f:
        la = " ".join(f.read().split()[:3])
    print(f"cores={os.cpu_count()} allowed={len(os.sched_getaffinity(0))} "
          f"model='{model}' kernel={os.uname().release} loadavg='{la}'")
    return 0


def cmd_cpus(_a):
    print(" ".join(str(c) for c in sorted(os.sched_getaffinity(0))))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    pt = sub.add_parser("point", help="run one client invocation and record it")
    pt.add_argument("--csv", required=True)
    pt.add_argument("--suite", default="")
    pt.add_argument("--client", default="spinblk-bench")
    pt.add_argument("--parser", choices=["spinblk-bench", "bdevperf", "bdevperf-json", "idle"],
                    default="spinblk-bench")
    pt.add_argument("--result-file", help="parse this file (after the command ends) instead of its stdout")
    pt.add_argument("--client-log", help="append the client's stdout and stderr here")
    pt.add_argument("--pct-file", help="bdevperf's log (run with -l, line-buffered): take p50/p99/p99.9 "
                    "from the latency summary this run adds to it")
    pt.add_argument("--target", required=True)
    pt.add_argument("--target-pid", required=True, help="pid(s), comma separated")
    pt.add_argument("--client-pid", default="",
                    help="pid(s) of a long-running client (bdevperf) whose CPU to sample over the window")
    pt.add_argument("--target-rpc", default="",
                    help="the target's JSON-RPC socket: its threads' busy time (thread_get_stats) "
                    "before and after the run gives busy %% and busy ns per I/O")
    pt.add_argument("--target-cores", default="",
                    help="the target's cores, comma separated: report what else ran there")
    pt.add_argument("--disk", default="")
    pt.add_argument("--workload", required=True)
    pt.add_argument("--rw", default="")
    pt.add_argument("--bs", default="")
    pt.add_argument("--iodepth", default="")
    pt.add_argument("--queues", default="")
    pt.add_argument("--reactors", default="")
    pt.add_argument("--mode", default="")
    pt.add_argument("--note", default="")
    pt.add_argument("--round", default="", help="round number (alternating runs)")
    pt.add_argument("--think-us", default="", help="the client's pause after each completion")
    pt.add_argument("--link-ns-before", default="",
                    help="spinblk-linkprobe's figure between the client's and the target's cores, "
                    "taken before the target started (see the link tables of `pairs`)")
    pt.add_argument("--runtime", type=float, required=True,
                    help="the client's measured seconds (target CPU-s = rate * runtime)")
    pt.add_argument("--sample-from", type=float, default=0.5,
                    help="clients that do not report their window (bdevperf): it "
                    "starts this many seconds after launch")
    pt.add_argument("--sample-len", type=float, default=1.0,
                    help="... and lasts this many seconds")
    pt.add_argument("command", nargs=argparse.REMAINDER)
    pt.set_defaults(func=cmd_point)

    am = sub.add_parser("amend", help="set a column of the last row of a CSV, if it is the run named")
    am.add_argument("--csv", required=True)
    am.add_argument("--target", required=True)
    am.add_argument("--disk", required=True)
    am.add_argument("--workload", required=True)
    am.add_argument("--round", required=True)
    am.add_argument("--set", required=True, metavar="COLUMN=VALUE")
    am.set_defaults(func=cmd_amend)

    tb = sub.add_parser("table", help="print a results CSV as a table")
    tb.add_argument("--kind", choices=["compare", "scaling", "file"], default="compare")
    tb.add_argument("--markdown", help="also write a Markdown table here")
    tb.add_argument("csv")
    tb.set_defaults(func=cmd_table)

    pl = sub.add_parser("plot", help="PNG plots from a compare.sh CSV (gnuplot)")
    pl.add_argument("--title", default="spinblk compare")
    pl.add_argument("--outdir", required=True)
    pl.add_argument("csv")
    pl.set_defaults(func=cmd_plot)

    pr = sub.add_parser("pairs", help="per-pair ratios and best-of ratios of an alternating run")
    pr.add_argument("--subject", default="spinblk", help="the target whose ratios are shown")
    pr.add_argument("--markdown", help="also write Markdown tables here")
    pr.add_argument("--undisturbed", type=float, default=10.0,
                    help="the second set of tables keeps runs with at most this much else "
                    "(%% of the core) on the target core (default 10)")
    pr.add_argument("--plot-dir", help="draw rounds.png and ratios.png here (gnuplot)")
    pr.add_argument("--title", default="spinblk vs SPDK (bdevperf)")
    pr.add_argument("csv", nargs="+", help="results.csv of one run, or of several (rounds renumbered run.round)")
    pr.set_defaults(func=cmd_pairs)

    bf = sub.add_parser("bdevperf-fill", help="bytes written by a perform_tests write pass")
    bf.add_argument("--io-size", type=int, required=True)
    bf.add_argument("--text", action="store_true",
                    help="the file is bdevperf's text report (a run without -z), not perform_tests JSON")
    bf.add_argument("--runtime", type=float, default=0.0, help="with --text: the run's seconds")
    bf.add_argument("result", help="file holding the perform_tests JSON output")
    bf.set_defaults(func=cmd_bdevperf_fill)

    it = sub.add_parser("idle-table", help="the table of bench/idle-light.sh")
    it.add_argument("--markdown", help="also write a Markdown table here")
    it.add_argument("csv")
    it.set_defaults(func=cmd_idle_table)

    sp = sub.add_parser("sweep-plot", help="latency and target CPU against offered load")
    sp.add_argument("--outdir", required=True)
    sp.add_argument("--title", default="idle-light")
    sp.add_argument("csv")
    sp.set_defaults(func=cmd_sweep_plot)

    rp = sub.add_parser("rpc", help="one JSON-RPC call on a unix socket")
    rp.add_argument("--sock", required=True)
    rp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply")
    rp.add_argument("--retry", type=float, default=0.0,
                    help="repeat a failing call (no socket yet, error reply) for up to this many seconds")
    rp.add_argument("method")
    rp.add_argument("params", nargs="?", help="JSON object")
    rp.set_defaults(func=cmd_rpc)

    cs = sub.add_parser("cpu-snap", help="CPU ticks of pids and busy ticks of cores, now")
    cs.add_argument("--pids", required=True)
    cs.add_argument("--cores", required=True)
    cs.set_defaults(func=cmd_cpu_snap)
    cd = sub.add_parser("cpu-diff", help="rates between two cpu-snap lines")
    cd.add_argument("--names", required=True, help="names of the pids, comma separated")
    cd.add_argument("--ncores", type=int, default=1)
    cd.add_argument("before")
    cd.add_argument("after")
    cd.set_defaults(func=cmd_cpu_diff)

    si = sub.add_parser("sysinfo", help="cores, CPU model, load average")
    si.set_defaults(func=cmd_sysinfo)
    cp = sub.add_parser("cpus", help="allowed CPUs")
    cp.set_defaults(func=cmd_cpus)

    a = p.parse_args()
    if a.cmd == "point":
        if a.command and a.command[0] == "--":
            a.command = a.command[1:]
        if not a.command:
            p.error("point: no client command after --")
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
