#!/usr/bin/env python3
"""Writes the seed corpus of the `parse` fuzz target into fuzz/corpus/parse/.

Each seed is a valid (or deliberately borderline) ring with virtio-blk requests, in the input
format that fuzz_targets/parse.rs documents: a 24-byte header, then an image copied into the
guest memory regions in order. Run from anywhere: python3 fuzz/seeds/parse_seeds.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", "parse")

T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
NEXT, WRITE, INDIRECT = 1, 2, 4
R, W = 0, WRITE

RING = 8
DESC, AVAIL, USED = 0x0, 0x100, 0x200  # gpa inside region 0
HDR, DATA, STATUS = 0x400, 0x1000, 0x3000


def header(regions=1, pages=(4,), gaps=(0,), event_idx=False, read_only=False, discard=True,
           write_zeroes=True, bs4k=False, iov=None, ring=RING, next_avail=0,
           capacity_sectors=1 << 20, notify=False):
    flags = (regions - 1) | (4 if event_idx else 0) | (8 if read_only else 0) \
        | (0x10 if discard else 0) | (0x20 if write_zeroes else 0) | (0x40 if bs4k else 0) \
        | (0x80 if iov is not None else 0)
    log2 = ring.bit_length() - 1
    packed_pages = 0
    for i, p in enumerate(pages):
        packed_pages |= (p - 1) << (3 * i)
    packed_gaps = 0
    for i, g in enumerate(gaps):
        packed_gaps |= g << (2 * i)
    cap = capacity_sectors | (0x80000000 if notify else 0)
    return struct.pack("<BBHBBHIIII", flags, log2, packed_pages, packed_gaps, iov or 0,
                       next_avail, DESC, AVAIL, USED, cap)


class Image:
    def __init__(self, size):
        self.b = bytearray(size)

    def put(self, at, data):
        self.b[at:at + len(data)] = data

    def desc(self, table, i, addr, length, flags, nxt=0):
        self.put(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def chain(self, table, first, descs):
        """descs: [(addr, len, flags)]; laid at first, first+1, ... with NEXT links."""
        for k, (addr, length, flags) in enumerate(descs):
            last = k == len(descs) - 1
            self.desc(table, first + k, addr, length, flags | (0 if last else NEXT), first + k + 1)

    def avail(self, heads, idx=None):
        self.put(AVAIL, struct.pack("<HH", 0, len(heads) if idx is None else idx))
        for k, h in enumerate(heads):
            self.put(AVAIL + 4 + 2 * k, struct.pack("<H", h))

    def req(self, at, rtype, sector):
        self.put(at, struct.pack("<IIQ", rtype, 0, sector))


def seed(name, hdr, img):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "wb") as f:
        # Trailing zeros need not be in the image: the rest of guest memory is zero.
        f.write(hdr + bytes(img.b).rstrip(b"\0"))


def main():
    # One request of each type.
    for name, rtype, data in [
        ("read", T_IN, [(DATA, 4096, W)]),
        ("write_two_segments", T_OUT, [(DATA, 512, R), (DATA + 0x800, 1024, R)]),
        ("flush", T_FLUSH, []),
        ("get_id", T_GET_ID, [(DATA, 20, W)]),
        ("discard", T_DISCARD, [(DATA, 16, R)]),
        ("write_zeroes", T_WRITE_ZEROES, [(DATA, 16, R)]),
        ("unknown_type", 0x77, []),
    ]:
        img = Image(0x4000)
        img.req(HDR, rtype, 8)
        if rtype in (T_DISCARD, T_WRITE_ZEROES):
            img.put(DATA, struct.pack("<QII", 16, 8, 1 if rtype == T_WRITE_ZEROES else 0))
        img.chain(DESC, 0, [(HDR, 16, R)] + data + [(STATUS, 1, W)])
        img.avail([0])
        seed(name, header(), img)

    # Header split over descriptors, header and data in one descriptor, status in the data.
    img = Image(0x4000)
    img.req(HDR, T_IN, 0)
    img.chain(DESC, 0, [(HDR, 8, R), (HDR + 8, 8, R), (DATA, 512, W), (STATUS, 1, W)])
    img.chain(DESC, 4, [(HDR, 1, R), (HDR + 1, 15, R), (DATA + 512, 512, W), (STATUS + 1, 1, W)])
    img.avail([0, 4])
    seed("header_split", header(), img)
    img = Image(0x4000)
    img.req(HDR, T_OUT, 0)
    img.chain(DESC, 0, [(HDR, 16 + 512, R), (DATA, 513, W)])
    img.avail([0])
    seed("any_layout_write", header(), img)
    img = Image(0x4000)
    img.req(HDR, T_IN, 0)
    img.chain(DESC, 0, [(HDR, 16, R), (DATA, 513, W)])
    img.avail([0])
    seed("any_layout_read", header(), img)

    # Several requests in one pass, with a wrapped avail index and EVENT_IDX.
    img = Image(0x4000)
    for k, rtype in enumerate([T_IN, T_OUT, T_FLUSH, T_GET_ID]):
        img.req(HDR + 16 * k, rtype, k * 8)
        data = [] if rtype == T_FLUSH else [(DATA + 0x200 * k, 20 if rtype == T_GET_ID else 512,
                                            R if rtype == T_OUT else W)]
        img.chain(DESC, 2 * k, [(HDR + 16 * k, 16, R)] + data + [(STATUS + k, 1, W)])
    img.put(AVAIL, struct.pack("<HH", 0, 0xfffe + 4 & 0xffff))
    for k in range(4):
        img.put(AVAIL + 4 + 2 * ((0xfffe + k) % RING), struct.pack("<H", 2 * k))
    img.put(AVAIL + 4 + 2 * RING, struct.pack("<H", 0xffff))  # used_event
    seed("four_requests_event_idx", header(event_idx=True, next_avail=0xfffe, notify=True), img)

    # An indirect table holding a read of two segments.
    img = Image(0x4000)
    img.req(HDR, T_IN, 16)
    table = 0x800
    img.chain(table, 0, [(HDR, 16, R), (DATA, 512, W), (DATA + 0x400, 512, W), (STATUS, 1, W)])
    img.desc(DESC, 0, table, 64, INDIRECT)
    img.avail([0])
    seed("indirect", header(), img)

    # Data across two regions adjacent in guest addresses (two host mappings), a third region
    # one page further, and a 4 KiB-block disk.
    img = Image(3 * 0x2000)
    img.req(HDR, T_IN, 8)
    img.chain(DESC, 0, [(HDR, 16, R), (0x2000 - 0x800, 0x1000, W), (0x4000 + 0x1000, 1, W)])
    img.avail([0])
    seed("read_across_regions",
         header(regions=3, pages=(2, 2, 2), gaps=(0, 0, 1), bs4k=True), img)

    # Regions near the top of the guest address space (the ring in region 0).
    img = Image(0x4000)
    top = (1 << 64) - (4 - 1) * (8 * 4096 + 4096) - 4096
    img.req(HDR, T_OUT, 0)
    img.chain(DESC, 0, [(HDR, 16, R), (top + 0x1000 - 512, 512, R), (STATUS, 1, W)])
    img.avail([0])
    seed("top_of_address_space", header(regions=2, pages=(4, 2), gaps=(0, 3)), img)

    # Malformed: a loop, a next index past the ring, a head past the ring, a read-only status.
    img = Image(0x4000)
    img.req(HDR, T_IN, 0)
    img.desc(DESC, 0, HDR, 16, R | NEXT, 1)
    img.desc(DESC, 1, DATA, 512, W | NEXT, 0)
    img.desc(DESC, 2, HDR, 16, R | NEXT, 200)
    img.chain(DESC, 3, [(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)])
    img.avail([0, 2, 9, 3])
    seed("malformed", header(), img)

    # A short iovec array: a read of three segments into two iovecs.
    img = Image(0x4000)
    img.req(HDR, T_IN, 0)
    img.chain(DESC, 0, [(HDR, 16, R), (DATA, 512, W), (DATA + 0x400, 512, W),
                        (DATA + 0x800, 512, W), (STATUS, 1, W)])
    img.avail([0])
    seed("short_iovec_array", header(iov=2), img)


if __name__ == "__main__":
    main()
