#!/usr/bin/env python3
"""Records the exact bytes SPDK's rpc.py (`spdk-rpc`) sends for each command in commands.txt.

A tiny unix-socket listener stands in for the server: it answers each request with a canned
result of the right shape (so rpc.py goes on) and keeps every byte it received. The captures
become test fixtures for spinblk's JSON-RPC server (crates/rpc/tests/fixtures/):
  <NN>-<method>.req   the raw bytes of one rpc.py run (pretty-printed objects, back to back)
  index.json          the command line and the methods of each capture
Usage: capture.py SPDK_RPC OUT_DIR [COMMANDS]   (SPDK_RPC: path of the spdk-rpc executable;
COMMANDS: the command file, default commands.txt next to this script; commands-rbd.txt holds
the RBD methods, whose replay needs a Ceph cluster)
"""
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading

CANNED = {
    "framework_get_subsystems": [{"subsystem": "bdev", "depends_on": []},
                                 {"subsystem": "vhost_blk", "depends_on": ["bdev"]}],
    "framework_get_config": [],
    "rpc_get_methods": ["bdev_null_create", "vhost_create_blk_controller", "bdev_wait_for_examine"],
    "bdev_get_bdevs": [],
    "vhost_get_controllers": [],
    "bdev_get_iostat": {"tick_rate": 1, "ticks": 1, "bdevs": []},
    "framework_get_reactors": {"tick_rate": 1, "pid": 1, "reactors": []},
    "thread_get_stats": {"tick_rate": 1, "threads": []},
    "thread_get_pollers": {"tick_rate": 1, "threads": []},
    "framework_get_scheduler": {"scheduler_name": "static", "scheduler_period": 0},
    "spdk_get_version": {"version": "x", "fields": {"major": 26, "minor": 9, "patch": 0, "suffix": ""}},
}


def serve(sock, received):
    """Answers every request of one connection; appends the raw bytes to `received`."""
    conn, _ = sock.accept()
    buf = ""
    dec = json.JSONDecoder()
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            received.append(data)
            buf += data.decode()
            while True:
                s = buf.lstrip()
                try:
                    req, idx = dec.raw_decode(s)
                except ValueError:
                    break
                buf = s[idx:]
                reqs = req if isinstance(req, list) else [req]
                out = [{"jsonrpc": "2.0", "id": r.get("id"),
                        "result": CANNED.get(r.get("method"), r.get("params", {}).get("name", True)
                                             if r.get("method", "").endswith("_create") else True)}
                       for r in reqs if "id" in r]
                conn.sendall((json.dumps(out if isinstance(req, list) else out[0]) + "\n").encode())


def main():
    rpc, out_dir = sys.argv[1], sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="spinblk-capture-")
    conf = os.path.join(tmp, "conf.json")
    with open(conf, "w") as f:
        json.dump({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_null_create",
                 "params": {"name": "cfg0", "num_blocks": 2048, "block_size": 512}},
                {"method": "bdev_wait_for_examine"}]},
            {"subsystem": "vhost_blk", "config": [
                {"method": "vhost_create_blk_controller",
                 "params": {"ctrlr": "cfgc0", "dev_name": "cfg0"}}]}]}, f)
    index = []
    commands = sys.argv[3] if len(sys.argv) > 3 else os.path.join(here, "commands.txt")
    with open(commands) as cmds:
        lines = [l.strip() for l in cmds if l.strip() and not l.startswith("#")]
    for n, line in enumerate(lines):
        line = line.replace("@TMP@", tmp).replace("@CONF@", conf)
        path = os.path.join(tmp, "rpc.sock")
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(1)
        received = []
        t = threading.Thread(target=serve, args=(sock, received))
        t.start()
        args = [rpc, "-s", path, "-t", "5"] + shlex.split(line)
        subprocess.run(args, stdout=subprocess.DEVNULL, check=True)
        t.join(5)
        sock.close()
        raw = b"".join(received).replace(tmp.encode(), b"@TMP@")
        methods = []
        dec = json.JSONDecoder()
        s = raw.decode()
        while s.strip():
            s = s.lstrip()
            v, i = dec.raw_decode(s)
            s = s[i:]
            methods += [r["method"] for r in (v if isinstance(v, list) else [v])]
        name = "%02d-%s.req" % (n, line.split()[0])
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(raw)
        index.append({"file": name, "command": line.replace(tmp, "@TMP@"), "methods": methods})
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    print("captured %d rpc.py runs into %s" % (len(index), out_dir))


if __name__ == "__main__":
    main()
