#!/usr/bin/env python3
"""Writes the seed corpus of the `vhost_user` fuzz target into fuzz/corpus/vhost_user/.

Seeds are message sequences in the operation format fuzz_targets/vhost_user.rs documents: QEMU's
setup order with I/O through a ring in a memfd, memory slots, dirty logging, resets, and one of
every request code. Run from anywhere: python3 fuzz/seeds/vhost_user_seeds.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", "vhost_user")

(GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE, SET_LOG_BASE, SET_LOG_FD,
 SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_KICK, SET_VRING_CALL,
 SET_VRING_ERR, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
 SET_VRING_ENABLE) = range(1, 19)
SET_BACKEND_REQ_FD, GET_CONFIG, SET_CONFIG = 21, 24, 25
GET_INFLIGHT_FD, SET_INFLIGHT_FD, RESET_DEVICE, GET_MAX_MEM_SLOTS = 31, 32, 34, 36
ADD_MEM_REG, REM_MEM_REG = 37, 38

# Protocol features the target offers: MQ, LOG_SHMFD, REPLY_ACK, BACKEND_REQ, CONFIG,
# INFLIGHT_SHMFD, CONFIGURE_MEM_SLOTS.
PROTOCOL = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 5) | (1 << 9) | (1 << 12) | (1 << 15)
# VERSION_1, INDIRECT_DESC, SEG_MAX, BLK_SIZE, FLUSH, CONFIG_WCE, MQ, PROTOCOL_FEATURES.
FEATURES = (1 << 32) | (1 << 28) | (1 << 2) | (1 << 6) | (1 << 9) | (1 << 11) | (1 << 12) \
    | (1 << 30)
EVENT_IDX, LOG_ALL = 1 << 29, 1 << 26

UA = 0x7F00_0000_0000  # the frontend's address of guest memory
MEM_PAGES = 16
DESC, AVAIL, USED, HDR, DATA, STATUS = 0x0, 0x100, 0x200, 0x1000, 0x2000, 0x3000
NEXT, WRITE = 1, 2

EVENTFD = b"\x00"
SATURATED_EVENTFD = b"\x08"  # an eventfd whose counter is at its maximum


def sealed_memfd(pages):
    return bytes([1, pages - 1])


def memfd(pages):
    return bytes([2, pages - 1])


def socket():
    return b"\x07"


class Seq:
    def __init__(self):
        self.b = bytearray()
        self.files = 0

    def msg(self, code, payload=b"", need_reply=False, fds=()):
        self.b += struct.pack("<BBBHB", 0, code, 1 if need_reply else 0, len(payload), len(fds))
        for f in fds:
            self.b += f
        self.b += payload
        first = self.files
        self.files += len(fds)
        return first

    def write(self, file, off, data):
        for k in range(0, len(data), 255):
            chunk = data[k:k + 255]
            self.b += struct.pack("<BBIB", 4, file, off + k, len(chunk)) + chunk

    def kick(self, file):
        self.b += bytes([5, file])

    def sync(self):
        self.b += b"\x06"

    def shrink(self, file, pages):
        self.b += bytes([7, file, pages])


def u64(v):
    return struct.pack("<Q", v)


def state(index, num):
    return struct.pack("<II", index, num)


def vring_addr(index, base, flags=0, log=0):
    return struct.pack("<IIQQQQ", index, flags, base + DESC, base + USED, base + AVAIL, log)


def region(gpa, size, ua, offset):
    return struct.pack("<QQQQ", gpa, size, ua, offset)


def negotiate(s, features=FEATURES, backend_req=True):
    s.msg(GET_FEATURES)
    s.msg(GET_PROTOCOL_FEATURES)
    s.msg(SET_PROTOCOL_FEATURES, u64(PROTOCOL))
    s.msg(GET_QUEUE_NUM)
    s.msg(GET_MAX_MEM_SLOTS)
    if backend_req:
        s.msg(SET_BACKEND_REQ_FD, need_reply=True, fds=[socket()])
    s.msg(SET_OWNER)
    s.msg(GET_CONFIG, struct.pack("<III", 0, 60, 0) + bytes(60))
    s.msg(SET_FEATURES, u64(features), need_reply=True)


def start_queue(s, q, ring_base, size=8):
    s.msg(SET_VRING_NUM, state(q, size), need_reply=True)
    s.msg(SET_VRING_BASE, state(q, 0), need_reply=True)
    s.msg(SET_VRING_ADDR, vring_addr(q, UA + ring_base), need_reply=True)
    kick = s.msg(SET_VRING_KICK, u64(q), need_reply=True, fds=[EVENTFD])
    s.msg(SET_VRING_CALL, u64(q), need_reply=True, fds=[EVENTFD])
    s.msg(SET_VRING_ENABLE, state(q, 1), need_reply=True)
    return kick


def requests(s, mem, ring_base, reqs):
    """reqs: [(type, sector, [(addr, len, flags)])]; lays chains at 4*i and publishes them."""
    for i, (rtype, sector, data) in enumerate(reqs):
        hdr = ring_base + HDR + 16 * i
        s.write(mem, hdr, struct.pack("<IIQ", rtype, 0, sector))
        descs = [(hdr, 16, 0)] + [(ring_base + a, n, f) for a, n, f in data] \
            + [(ring_base + STATUS + i, 1, WRITE)]
        table = b""
        for k, (a, n, f) in enumerate(descs):
            last = k == len(descs) - 1
            table += struct.pack("<QIHH", a, n, f | (0 if last else NEXT), 0 if last else 4 * i + k + 1)
        s.write(mem, ring_base + DESC + 16 * 4 * i, table)
    heads = b"".join(struct.pack("<H", 4 * i) for i in range(len(reqs)))
    s.write(mem, ring_base + AVAIL, struct.pack("<HH", 0, len(reqs)) + heads)


def io(s, mem, ring_base, kick):
    requests(s, mem, ring_base, [
        (1, 0, [(DATA, 4096, 0)]),          # write 4 KiB
        (0, 0, [(DATA + 0x1000, 4096, WRITE)]),  # read it back
        (4, 0, []),                          # flush
        (8, 0, [(DATA + 0x2000, 20, WRITE)]),    # GET_ID
    ])
    s.kick(kick)
    s.sync()


def save(name, s):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes(s.b))


def main():
    # QEMU's order: negotiate, inflight, memory table, two queues, I/O, stop, reset.
    s = Seq()
    negotiate(s)
    s.msg(GET_INFLIGHT_FD, struct.pack("<QQHHI", 0, 0, 2, 8, 0))
    mem = s.msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region(0, MEM_PAGES * 4096, UA, 0),
                need_reply=True, fds=[sealed_memfd(MEM_PAGES)])
    k0 = start_queue(s, 0, 0)
    k1 = start_queue(s, 1, 0x8000)
    io(s, mem, 0, k0)
    io(s, mem, 0x8000, k1)
    s.msg(SET_CONFIG, struct.pack("<III", 0x20, 1, 0) + b"\x00", need_reply=True)
    s.msg(GET_VRING_BASE, state(0, 0))
    s.msg(GET_VRING_BASE, state(1, 0))
    s.msg(RESET_DEVICE, need_reply=True)
    save("qemu_setup_io", s)

    # The same with EVENT_IDX, an unsealed memfd, then the frontend shrinks it under the queue.
    s = Seq()
    negotiate(s, FEATURES | EVENT_IDX, backend_req=False)
    mem = s.msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region(0, MEM_PAGES * 4096, UA, 0),
                need_reply=True, fds=[memfd(MEM_PAGES)])
    k0 = start_queue(s, 0, 0)
    s.msg(SET_VRING_CALL, u64(0), need_reply=True, fds=[SATURATED_EVENTFD])  # then I/O
    io(s, mem, 0, k0)
    s.shrink(mem, 1)
    s.kick(k0)
    s.sync()
    save("event_idx_shrunk_memory", s)

    # Memory slots: ADD_MEM_REG twice (ring in the second), I/O, REM_MEM_REG of the first.
    s = Seq()
    negotiate(s, backend_req=False)
    r0 = s.msg(ADD_MEM_REG, bytes(8) + region(0, 0x4000, UA, 0), need_reply=True,
               fds=[sealed_memfd(4)])
    r1 = s.msg(ADD_MEM_REG, bytes(8) + region(0x100000, MEM_PAGES * 4096, UA + 0x100000, 0),
               need_reply=True, fds=[sealed_memfd(MEM_PAGES)])
    k0 = start_queue(s, 0, 0x100000)
    requests(s, r1, 0, [(1, 8, [(DATA, 512, 0)])])
    # The chain's addresses are guest-physical: region 1 starts at 0x100000.
    s.write(r1, DESC, struct.pack("<QIHH", 0x100000 + HDR, 16, NEXT, 1)
            + struct.pack("<QIHH", 0x100000 + DATA, 512, NEXT, 2)
            + struct.pack("<QIHH", 0x100000 + STATUS, 1, WRITE, 0))
    s.kick(k0)
    s.sync()
    s.msg(REM_MEM_REG, bytes(8) + region(0, 0x4000, UA, 0), need_reply=True)
    s.msg(REM_MEM_REG, bytes(8) + region(0x100000, MEM_PAGES * 4096, UA + 0x100000, 0),
          need_reply=True)
    s.msg(GET_VRING_BASE, state(0, 0))
    _ = r0
    save("mem_slots", s)

    # Dirty logging (migration): LOG_ALL, a log region, a ring that logs its used writes.
    s = Seq()
    negotiate(s, backend_req=False)
    mem = s.msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region(0, MEM_PAGES * 4096, UA, 0),
                need_reply=True, fds=[sealed_memfd(MEM_PAGES)])
    s.msg(SET_VRING_NUM, state(0, 8), need_reply=True)
    s.msg(SET_VRING_ADDR, vring_addr(0, UA, flags=1, log=USED), need_reply=True)
    k0 = s.msg(SET_VRING_KICK, u64(0), need_reply=True, fds=[EVENTFD])
    s.msg(SET_VRING_ENABLE, state(0, 1), need_reply=True)
    s.msg(SET_FEATURES, u64(FEATURES | LOG_ALL), need_reply=True)
    s.msg(SET_LOG_BASE, struct.pack("<QQ", 4096, 0), fds=[memfd(1)])
    io(s, mem, 0, k0)
    s.msg(SET_FEATURES, u64(FEATURES), need_reply=True)
    s.msg(RESET_OWNER)
    save("dirty_log", s)

    # Inflight: SET_INFLIGHT_FD with a region the frontend made.
    s = Seq()
    negotiate(s, backend_req=False)
    s.msg(SET_INFLIGHT_FD, struct.pack("<QQHHI", 2 * 4096, 0, 2, 8, 0), need_reply=True,
          fds=[sealed_memfd(2)])
    mem = s.msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region(0, MEM_PAGES * 4096, UA, 0),
                need_reply=True, fds=[sealed_memfd(MEM_PAGES)])
    k0 = start_queue(s, 0, 0)
    io(s, mem, 0, k0)
    save("inflight", s)

    # Every request code once, empty, with NEED_REPLY, after REPLY_ACK: each must be answered.
    s = Seq()
    s.msg(SET_PROTOCOL_FEATURES, u64(PROTOCOL))
    # Codes 6, 11, 24, 28 and 41-44 expect a data reply: empty, they close the connection.
    for code in [c for c in range(0, 48) if c not in (6, 11, 24, 28, 41, 42, 43, 44)]:
        s.msg(code, need_reply=True)
        s.sync()
    save("every_code", s)

    # Kick and call fds that are not eventfds, a ring past memory, then a message cut short.
    s = Seq()
    negotiate(s, backend_req=False)
    s.msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region(0, 4096, UA, 0),
          need_reply=True, fds=[sealed_memfd(1)])
    s.msg(SET_VRING_NUM, state(0, 1024), need_reply=True)
    s.msg(SET_VRING_ADDR, vring_addr(0, UA), need_reply=True)
    s.msg(SET_VRING_CALL, u64(0), need_reply=True, fds=[b"\x05"])  # a pipe's write end
    s.msg(SET_VRING_KICK, u64(0), need_reply=True, fds=[b"\x04"])  # a pipe's read end
    s.msg(SET_VRING_KICK, u64(0), need_reply=True, fds=[EVENTFD])
    s.sync()
    s.b += struct.pack("<BBBHB", 0, SET_MEM_TABLE, 1, 72, 0) + bytes(10)
    save("hostile_fds_cut_message", s)


if __name__ == "__main__":
    main()
