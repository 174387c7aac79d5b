#!/usr/bin/env python3
"""Process and QMP driver of scripts/migrate-test.sh (run it through that script).

Starts the vhost-user-blk backend, a source QEMU (TCG) whose guest runs spinblk-guest-io from
an initramfs, and for each migration a destination QEMU with -incoming; migrates over a unix
socket with QMP, checks after each switch-over that the guest's I/O resumed and that the pages
the backend wrote into guest memory arrived (the guest's memcheck), then asks the guest for a
final full verify. Talks to the guest over its serial console (a unix socket per QEMU).

Exit status: 0 pass, 1 test failure, 2 setup error. With --negative-control: 0 only if a
post-migration memory check FAILED (with stale pages), as it must when the backend does not
log the pages it writes.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time


def now():
    return time.monotonic()


T0 = now()


def say(msg):
    print(f"migrate-test: [{now() - T0:6.1f}s] {msg}", flush=True)


class Failure(Exception):
    """The test failed (not a setup problem)."""


class SetupError(Exception):
    """The harness could not run the test."""


# --- processes ---------------------------------------------------------------------------------
class Proc:
    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "wb")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        # Own process group: a Ctrl-C to the test reaches us, and we stop the children in order.
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT, env=full_env, start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def stop(self, grace=5.0):
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)
        self.log.close()
        return self.p.returncode

    def tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return lines[-n:]
        except OSError:
            return []


def wait_path(path, timeout, procs=()):
    deadline = now() + timeout
    while now() < deadline:
        if os.path.exists(path):
            return
        for p in procs:
            if not p.alive():
                raise Failure(f"{p.name} exited (status {p.p.returncode}) before {path} appeared")
        time.sleep(0.05)
    raise Failure(f"{path} did not appear within {timeout:.0f} s")


def connect_unix(path, timeout, proc):
    deadline = now() + timeout
    last = None
    while now() < deadline:
        if not proc.alive():
            raise Failure(f"{proc.name} exited (status {proc.p.returncode}) before {path} accepted")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as e:
            last = e
            s.close()
            time.sleep(0.05)
    raise Failure(f"cannot connect to {path} within {timeout:.0f} s: {last}")


# --- QMP ---------------------------------------------------------------------------------------
class Qmp:
    def __init__(self, path, proc, timeout=20):
        self.name = proc.name
        self.sock = connect_unix(path, timeout, proc)
        self.sock.settimeout(30)
        self.f = self.sock.makefile("rwb")
        # QEMU greets once the machine is set up; a vhost-user handshake that never finishes
        # (a backend that does not serve this connection) keeps it from getting there.
        hint = " (is it stuck in the vhost-user handshake?)"
        greeting = self._read("greeting" + hint)
        if "QMP" not in greeting:
            raise Failure(f"unexpected QMP greeting {greeting}")
        self.cmd("qmp_capabilities", hint=hint)

    def _read(self, what="reply"):
        try:
            line = self.f.readline()
        except OSError as e:
            raise Failure(f"no QMP {what} from {self.name} within 30 s ({e})") from None
        if not line:
            raise Failure(f"{self.name} closed its QMP connection")
        return json.loads(line)

    def cmd(self, name, args=None, hint=""):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            self.f.write(json.dumps(msg).encode() + b"\n")
            self.f.flush()
        except OSError as e:
            raise Failure(f"QMP {name} to {self.name}: {e}") from None
        while True:
            r = self._read(f"reply to {name}{hint}")
            if "event" in r:
                continue
            if "error" in r:
                raise Failure(f"QMP {name}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- the guest's console -----------------------------------------------------------------------
class GuestLog:
    """Everything the guest prints, from whichever QEMU runs it, split into lines."""

    def __init__(self, path):
        self.file = open(path, "w", encoding="utf-8")
        self.lines = []
        self.partial = b""
        self.cond = threading.Condition()

    def feed(self, data):
        with self.cond:
            self.partial += data
            *done, self.partial = self.partial.split(b"\n")
            for raw in done:
                line = raw.decode("utf-8", "replace").replace("\r", "")
                self.lines.append(line)
                self.file.write(f"{now() - T0:7.2f} {line}\n")
            self.file.flush()
            self.cond.notify_all()

    def mark(self):
        with self.cond:
            return len(self.lines)

    def wait(self, regex, since, timeout, check, what):
        """The first line from index `since` matching `regex`; `check()` raises on trouble."""
        rx = re.compile(regex)
        deadline = now() + timeout
        i = since
        while True:
            with self.cond:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    i += 1
                    if m:
                        return i, m
                left = deadline - now()
                if left <= 0:
                    raise Failure(f"timed out after {timeout:.0f} s waiting for {what}")
                self.cond.wait(min(left, 0.5))
            check()

    def close(self):
        self.file.close()


class Console:
    def __init__(self, path, proc, log):
        self.sock = connect_unix(path, 20, proc)
        self.log = log
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()

    def _pump(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.log.feed(data)

    def send(self, line):
        try:
            self.sock.sendall(line.encode() + b"\n")
        except OSError as e:
            raise Failure(f"cannot write to the guest console: {e}") from None

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        except OSError:
            pass


# --- the test ----------------------------------------------------------------------------------
class Vm:
    def __init__(self, a, n, vhost_sock, log, incoming=None):
        w = a.workdir
        self.name = f"vm{n:02d}"
        self.vhost_sock = vhost_sock
        self.qmp_path = f"{w}/qmp{n}.sock"
        con = f"{w}/con{n}.sock"
        argv = [
            a.qemu, "-name", self.name,
            "-machine", "q35,accel=tcg,memory-backend=mem", "-cpu", "max",
            "-smp", str(a.smp), "-m", a.mem,
            "-object", f"memory-backend-memfd,id=mem,size={a.mem},share=on",
            "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
            "-chardev", f"socket,id=con,path={con},server=on,wait=on", "-serial", "chardev:con",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel", a.kernel, "-initrd", a.initrd, "-append", a.append,
            # The guest reads which QEMU it runs on (same length for all: migration-safe).
            "-fw_cfg", f"name=opt/spinblk/host,string={self.name}",
            "-chardev", f"socket,id=vub,path={vhost_sock}",
            "-device", f"vhost-user-blk-pci,chardev=vub,num-queues={a.queues},id=disk0",
        ]
        if incoming:
            argv += ["-incoming", incoming]
        self.proc = Proc(self.name, argv, f"{w}/{self.name}.log")
        self.console = self.qmp = None
        try:
            # QEMU waits for the console client before it starts (wait=on): no output is lost.
            self.console = Console(con, self.proc, log)
            self.qmp = Qmp(self.qmp_path, self.proc)
        except BaseException:
            # Not handed to the caller yet: stop it here, or it outlives the test.
            if self.console:
                self.console.close()
            self.proc.stop()
            raise

    def status(self):
        return self.qmp.cmd("query-status").get("status")

    def quit(self):
        """QMP quit, then TERM/KILL if it lingers."""
        if self.proc.alive():
            try:
                self.qmp.cmd("quit")
            except (Failure, OSError):
                pass
            try:
                self.proc.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.qmp.close()
        self.console.close()
        return self.proc.stop()


class Test:
    def __init__(self, a):
        self.a = a
        self.log = GuestLog(f"{a.workdir}/guest.log")
        self.backend = None
        self.vms = []
        self.cur = None
        self.results = []
        self.problems = []

    # Anything that makes waiting pointless.
    def check(self):
        if self.backend and not self.backend.alive():
            raise Failure(f"the backend exited (status {self.backend.p.returncode})")
        if self.cur and not self.cur.proc.alive():
            raise Failure(f"{self.cur.name} exited (status {self.cur.proc.p.returncode})")

    def guest_wait(self, regex, timeout, what, since=None):
        if since is None:
            since = self.log.mark()
        return self.log.wait(regex, since, timeout, self.check, what)

    def command(self, cmd, reply_regex, timeout, what):
        since = self.log.mark()
        self.cur.console.send(cmd)
        return self.guest_wait(reply_regex, timeout, what, since)

    def start_backend(self):
        env = {}
        if self.a.backend_env:
            for kv in self.a.backend_env:
                k, _, v = kv.partition("=")
                env[k] = v
        say(f"backend: {' '.join(self.a.backend)}" + (f" (env {' '.join(self.a.backend_env)})" if env else ""))
        self.backend = Proc("backend", self.a.backend, f"{self.a.workdir}/backend.log", env)
        for s in dict.fromkeys(self.a.sockets):
            wait_path(s, 20, [self.backend])
        time.sleep(0.2)
        self.check()

    def progress_writes(self, line):
        m = re.search(r" w=(\d+) ", line)
        return int(m.group(1)) if m else -1

    def migrate(self, n):
        a = self.a
        src = self.cur
        dst_sock = a.sockets[n % len(a.sockets)]
        uri_path = f"{a.workdir}/mig{n}.sock"
        say(f"migration {n}: starting vm{n:02d} on {os.path.basename(dst_sock)} with -incoming unix:{uri_path}")
        dst = Vm(a, n, dst_sock, self.log, incoming=f"unix:{uri_path}")
        self.vms.append(dst)
        wait_path(uri_path, 20, [dst.proc])
        st = dst.status()
        if st != "inmigrate":
            raise Failure(f"{dst.name} is '{st}', not 'inmigrate'")
        _, m = self.command(f"mark mig{n}", rf"^GIO MARK mig{n} (.*)", 30, f"the guest's answer to 'mark mig{n}'")
        say(f"migration {n}: guest before: {m.group(1)}")
        src.qmp.cmd("migrate-set-parameters", {"max-bandwidth": a.max_bandwidth, "downtime-limit": a.downtime_limit})
        t_start = now()
        before = self.log.mark()
        src.qmp.cmd("migrate", {"uri": f"unix:{uri_path}"})
        info = {}
        last_report = t_start
        while True:
            self.check()
            if not dst.proc.alive():
                raise Failure(f"{dst.name} (destination) exited (status {dst.proc.p.returncode}) during migration {n}")
            info = src.qmp.cmd("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise Failure(f"migration {n} {status}: {info.get('error-desc', info)}")
            if now() - t_start > a.migration_timeout:
                try:
                    src.qmp.cmd("migrate_cancel")
                except Failure:
                    pass
                ram = info.get("ram", {})
                raise Failure(
                    f"migration {n} did not complete within {a.migration_timeout} s (status {status}, "
                    f"{ram.get('transferred', 0) >> 20} MiB sent, {ram.get('remaining', 0) >> 20} MiB remaining, "
                    f"dirty rate {ram.get('dirty-pages-rate', '?')} pages/s, {ram.get('dirty-sync-count', '?')} syncs)")
            if now() - last_report > 10:
                last_report = now()
                ram = info.get("ram", {})
                say(f"migration {n}: {status} {now() - t_start:.0f}s: {ram.get('transferred', 0) >> 20} MiB sent, "
                    f"{ram.get('remaining', 0) >> 20} MiB remaining, {ram.get('dirty-sync-count', 0)} syncs")
            time.sleep(0.1)
        wall = now() - t_start
        # The destination runs once it has loaded the state.
        deadline = now() + 20
        while (st := dst.status()) != "running":
            if now() > deadline:
                raise Failure(f"{dst.name} is '{st}' 20 s after migration {n} completed")
            time.sleep(0.1)
        sst = src.status()
        ram = info.get("ram", {})
        r = {
            "n": n, "from": src.name, "to": dst.name,
            "sockets": f"{os.path.basename(src.vhost_sock)}->{os.path.basename(dst_sock)}",
            "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
            "setup_ms": info.get("setup-time"), "wall_s": round(wall, 1),
            "transferred_mib": ram.get("transferred", 0) >> 20, "dirty_syncs": ram.get("dirty-sync-count"),
            "mbps": ram.get("mbps"), "src_status": sst,
        }
        self.results.append(r)
        say(f"migration {n}: completed: total {r['total_ms']} ms, downtime {r['downtime_ms']} ms, setup "
            f"{r['setup_ms']} ms, {r['transferred_mib']} MiB, {r['dirty_syncs']} dirty syncs; source is '{sst}'")
        if sst != "postmigrate":
            self.problems.append(f"after migration {n} the source is '{sst}', not 'postmigrate'")
        # The guest's memory thread notices the new host before it refills anything there,
        # and checks its buffer at once.
        self.cur = dst
        _, m = self.guest_wait(rf"^GIO MEMCHECK (ok|FAIL) switch:{src.name}->{dst.name}(.*)", a.lost_secs + 30,
                               f"the guest's memory check at the switch to {dst.name}", since=before)
        r["memcheck"] = m.group(1)
        r["memcheck_detail"] = m.group(2).strip()
        say(f"migration {n}: device-written memory check: {m.group(1)} {m.group(2).strip()}")
        sm = re.search(r"chunks=(\d+) .*refills_since_mark=(\d+)", m.group(2))
        if not sm:
            self.problems.append(f"migration {n}: cannot parse the memory check line")
        elif int(sm.group(2)) < int(sm.group(1)) and m.group(1) == "ok":
            self.problems.append(
                f"migration {n}: only {sm.group(2)} of the buffer's {sm.group(1)} chunks were refilled during the "
                "migration; the memory check proves little (lower --mem-mib)")
        # The source goes next: its vhost-user session must end before another QEMU takes its socket.
        rc = src.quit()
        self.vms.remove(src)
        say(f"migration {n}: {src.name} quit (status {rc})")
        # The guest's I/O must resume on the destination: a progress line with more writes.
        t_resume = now()
        _, m = self.command("ping", r"^GIO PONG (.*)", 30, "the guest's answer to 'ping' on the destination")
        w0 = self.progress_writes(" " + m.group(1) + " ")
        since = self.log.mark()
        while True:
            i, m = self.guest_wait(r"^GIO PROGRESS (.*)", a.lost_secs + 10, "guest progress on the destination", since)
            since = i
            w = self.progress_writes(" " + m.group(1) + " ")
            if w > w0:
                break
        r["resume_s"] = round(now() - t_resume, 1)
        say(f"migration {n}: guest I/O goes on on {dst.name}: {m.group(1)}")
        if n == 1 and a.inject:
            self.command(f"inject {a.inject}", r"^GIO INJECT ", 30, f"the guest's INJECT {a.inject} line")
            say(f"self-test: the guest injected '{a.inject}'")

    def run(self):
        a = self.a
        self.start_backend()
        say(f"vm0: booting on {os.path.basename(a.sockets[0])} ({a.smp} vCPUs, {a.mem} RAM, {a.queues} queues)")
        vm = Vm(a, 0, a.sockets[0], self.log)
        self.vms.append(vm)
        self.cur = vm
        _, m = self.guest_wait(r"^GIO READY (.*)|^GIO RESULT .*|^GIO-EXIT .*", a.boot_timeout, "GIO READY (boot + fill)")
        if not m.group(0).startswith("GIO READY"):
            raise Failure(f"the guest tool did not start: {m.group(0)}")
        if "GIO HOST vm00" not in self.log.lines:
            raise Failure("the guest does not see which QEMU it runs on (no 'GIO HOST vm00': fw_cfg missing?)")
        say(f"vm0: guest workload running ({m.group(1)})")
        # Let the workload run a little before the first migration.
        self.guest_wait(r"^GIO PROGRESS ", 30, "the first progress line")
        for n in range(1, a.migrations + 1):
            self.migrate(n)
        say("finish: stopping the workload, final full verify")
        _, m = self.command("finish", r"^GIO RESULT (PASS|FAIL)(.*)", a.lost_secs + 120, "the guest's final verdict")
        self.final = m.group(0)
        say(f"guest: {self.final}")
        # A thread stuck in a lost request keeps the tool from exiting: do not wait for it.
        if re.search(r" lost=[1-9]", self.final):
            say("guest: a request was lost, the guest cannot exit cleanly; stopping it")
            return
        try:
            self.guest_wait(r"^GIO-EXIT rc=", 30, "the guest tool's exit")
            self.cur.proc.p.wait(timeout=30)
        except (Failure, subprocess.TimeoutExpired) as e:
            self.problems.append(f"the guest did not power off after its verdict: {e}")

    def collect(self):
        errors = [l for l in self.log.lines if l.startswith("GIO ERROR")]
        kernel = [l for l in self.log.lines if re.search(
            r"I/O error|Kernel panic|BUG:|Oops|virtio_blk virtio\d+: req\.|blocked for more than|Call Trace", l)]
        return errors, kernel

    def stop_all(self):
        for vm in list(self.vms):
            vm.quit()
        self.vms = []
        rc = None
        if self.backend:
            rc = self.backend.stop(grace=15)
        return rc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--append", required=True)
    p.add_argument("--mem", default="1048584K")
    p.add_argument("--smp", type=int, default=2)
    p.add_argument("--queues", type=int, default=2)
    p.add_argument("--socket", dest="sockets", action="append", required=True,
                   help="vhost-user socket; repeat: QEMU n uses socket n mod count")
    p.add_argument("--migrations", type=int, default=2)
    p.add_argument("--max-bandwidth", type=int, default=1 << 30, help="bytes/s")
    p.add_argument("--downtime-limit", type=int, default=300, help="ms")
    p.add_argument("--migration-timeout", type=int, default=90)
    p.add_argument("--boot-timeout", type=int, default=240)
    p.add_argument("--lost-secs", type=int, default=20)
    p.add_argument("--negative-control", action="store_true")
    p.add_argument("--inject", choices=["stale", "corrupt", "hang"])
    p.add_argument("--backend-env", action="append", default=[])
    p.add_argument("backend", nargs=argparse.REMAINDER, help="-- backend command")
    a = p.parse_args()
    if a.backend[:1] == ["--"]:
        a.backend = a.backend[1:]
    if not a.backend:
        p.error("no backend command after --")

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    t = Test(a)
    failure = None
    try:
        t.run()
    except Failure as e:
        failure = str(e)
    except KeyboardInterrupt as e:
        failure = f"interrupted ({e})"
    finally:
        backend_rc = t.stop_all()
    errors, kernel = t.collect()
    t.log.close()

    print()
    say("--- summary ---")
    for r in t.results:
        say(f"migration {r['n']} {r['from']}->{r['to']} ({r['sockets']}): total {r['total_ms']} ms, "
            f"downtime {r['downtime_ms']} ms, setup {r['setup_ms']} ms, {r['transferred_mib']} MiB sent, "
            f"{r['dirty_syncs']} dirty syncs, I/O resumed within {r.get('resume_s', '?')} s, "
            f"memcheck {r.get('memcheck', 'not run')} {r.get('memcheck_detail', '')}")
    if t.results:
        tot = [r["total_ms"] for r in t.results if r["total_ms"] is not None]
        down = [r["downtime_ms"] for r in t.results if r["downtime_ms"] is not None]
        say(f"MIGRATE-FIGURES total_ms={','.join(map(str, tot))} downtime_ms={','.join(map(str, down))}")
    say(f"backend exit status {backend_rc}")
    notable = [l for l in (t.backend.tail(100000) if t.backend else [])
               if not l.startswith("stats ") and re.search(r"(?i)\berror\b|\bwarn|panic|\bfail", l)]
    if notable:
        say(f"backend log: {len(notable)} line(s) with error/warn/panic/fail, the first ones:")
        for l in notable[:8]:
            print("    " + l[:300])
    for f in sorted(os.listdir(a.workdir)):
        if re.match(r"vm\d+\.log$", f):
            with open(os.path.join(a.workdir, f), "rb") as fh:
                extra = [l for l in fh.read().decode("utf-8", "replace").splitlines()
                         if l.strip() and "waiting for connection" not in l]
            if extra:
                say(f"{f[:-4]} (QEMU) said:")
                for l in extra[:8]:
                    print("    " + l[:300])
    if errors:
        say(f"guest errors ({len(errors)}):")
        for l in errors[:20]:
            print("    " + l)
    if kernel:
        say("guest kernel trouble:")
        for l in kernel[:20]:
            print("    " + l)
    final = getattr(t, "final", None)
    memfails = [r for r in t.results if r.get("memcheck") == "FAIL"]

    if a.negative_control:
        stale_fail = [r for r in memfails if re.search(r"stale=[1-9]", r.get("memcheck_detail", ""))]
        if stale_fail:
            say(f"NEGATIVE CONTROL OK: the memory check failed as it must without dirty logging "
                f"({len(stale_fail)} of {len(t.results)} migrations; e.g. {stale_fail[0]['memcheck_detail']})")
            if failure:
                say(f"(the run also failed otherwise: {failure})")
            return 0
        say("######################################################################")
        say("### NEGATIVE CONTROL FAILED: the memory check did not catch the missing dirty logging")
        if failure:
            say(f"### the run failed before it could tell: {failure}")
        say("######################################################################")
        dump_logs(t)
        return 1

    if a.inject:
        want = {"stale": "GIO ERROR STALE", "corrupt": "GIO ERROR CORRUPT", "hang": "GIO ERROR LOST"}[a.inject]
        hits = [l for l in errors if l.startswith(want)]
        if hits and final and final.startswith("GIO RESULT FAIL"):
            say(f"SELF-TEST OK: the injected '{a.inject}' fault was caught: {hits[0]}")
            say(f"guest verdict: {final}")
            return 0
        say(f"### SELF-TEST FAILED: the injected '{a.inject}' fault was not reported ({want}); verdict {final}")
        if failure:
            say(f"### the run failed: {failure}")
        dump_logs(t)
        return 1

    problems = list(t.problems)
    if failure:
        problems.insert(0, failure)
    if errors:
        problems.append(f"the guest reported {len(errors)} error(s)")
    if kernel:
        problems.append("the guest kernel logged I/O errors or worse")
    if memfails:
        problems.append(f"the device-written memory check failed after migration(s) {[r['n'] for r in memfails]}")
    if final is None:
        problems.append("no final verdict from the guest")
    elif not final.startswith("GIO RESULT PASS"):
        problems.append(f"guest verdict: {final}")
    if len(t.results) != a.migrations:
        problems.append(f"{len(t.results)} of {a.migrations} migrations completed")
    if problems:
        say("######################################################################")
        for pr in problems:
            say(f"### MIGRATE-TEST FAIL: {pr}")
        say("######################################################################")
        dump_logs(t)
        return 1
    say(f"PASS: {len(t.results)} migrations under load, memory checks ok, final verify ok")
    return 0


def dump_logs(t):
    lines = t.log.lines
    say(f"--- guest console (last 40 lines of {t.a.workdir}/guest.log) ---")
    for l in lines[-40:]:
        print("    " + l)
    if t.backend:
        say(f"--- backend log (last 20 lines of {t.backend.log_path}) ---")
        for l in t.backend.tail(20):
            print("    " + l)
    for f in sorted(os.listdir(t.a.workdir)):
        if re.match(r"vm\d+\.log$", f):
            path = os.path.join(t.a.workdir, f)
            with open(path, "rb") as fh:
                text = fh.read().decode("utf-8", "replace").strip()
            if text:
                say(f"--- {f} (QEMU stderr, last 10 lines) ---")
                for l in text.splitlines()[-10:]:
                    print("    " + l)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        say(f"setup error: {e}")
        sys.exit(2)
