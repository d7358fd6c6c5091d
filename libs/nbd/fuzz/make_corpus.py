#!/usr/bin/env python3
"""Writes the seed corpus for fuzz-nbd_protocol: client byte streams (client flags, options, requests).

Run from the repository root: python3 libs/nbd/fuzz/make_corpus.py  (rewrites fuzz/corpus/nbd_protocol/seed-*)."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fuzz", "corpus", "nbd_protocol")
OPT_MAGIC = 0x49484156454F5054
REQ_MAGIC = 0x25609513
FIXED, NOZ = 1, 2


def flags(f=FIXED | NOZ):
    return struct.pack(">I", f)


def opt(option, data=b"", magic=OPT_MAGIC, length=None):
    return struct.pack(">QII", magic, option, len(data) if length is None else length) + data


def go_data(name, infos=()):
    n = name.encode()
    return struct.pack(">I", len(n)) + n + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def go(name, infos=()):
    return opt(7, go_data(name, infos))


def req(cmd, off, length, cookie=1, fl=0, payload=b"", magic=REQ_MAGIC):
    return struct.pack(">IHHQQI", magic, fl, cmd, cookie, off, length) + payload


DISC = req(2, 0, 0, cookie=99)
seeds = {
    "go-read-disc": flags() + go("ro") + req(0, 0, 4096) + DISC,
    "go-default-read": flags() + go("") + req(0, 512, 512) + DISC,
    "go-blocksize-name": flags() + go("ro", (3, 1, 2)) + req(0, 0, 1) + DISC,
    "list": flags() + opt(3) + DISC,
    "list-with-data": flags() + opt(3, b"x") + opt(2),
    "abort": flags() + opt(2),
    "abort-with-data": flags() + opt(2, b"zz"),
    "info-then-go": flags() + opt(6, go_data("rw", (3,))) + go("rw") + req(0, 0, 100) + DISC,
    "info-unknown": flags() + opt(6, go_data("nope")) + opt(2),
    "go-throwing-resolver": flags() + go("throw") + go("ro") + DISC,
    "unknown-option": flags() + opt(0x4242, b"\0" * 8) + go("ro") + DISC,
    "structured-reply": flags() + opt(8) + go("ro") + DISC,
    "starttls": flags() + opt(5) + go("ro") + DISC,
    "oversize-option": flags() + opt(7, b"", length=0x7FFFFFFF),
    "option-64k": flags() + opt(0x99, b"A" * 65536) + go("ro") + DISC,
    "go-bad-namelen": flags() + opt(7, struct.pack(">I", 5000) + b"ro" + b"\0\0"),
    "go-bad-infocount": flags() + opt(7, struct.pack(">I", 2) + b"ro" + struct.pack(">H", 9)) + opt(2),
    "go-short": flags() + opt(7, b"\0\0") + opt(2),
    "bad-option-magic": flags() + opt(7, go_data("ro"), magic=0x1122334455667788),
    "bad-client-flags": flags(0x80) + go("ro"),
    "non-fixed-client": flags(NOZ) + go("ro"),
    "export-name": flags() + opt(1, b"ro") + req(0, 0, 512) + DISC,
    "export-name-zeroes": flags(FIXED) + opt(1, b"rw") + req(1, 0, 4, payload=b"abcd") + DISC,
    "export-name-unknown": flags() + opt(1, b"missing"),
    "read-past-end": flags() + go("ro") + req(0, 256 * 1024 - 10, 20) + req(0, 2**64 - 5, 10) + DISC,
    "read-zero-length": flags() + go("ro") + req(0, 0, 0) + DISC,
    "read-oversize": flags() + go("ro") + req(0, 0, 0xFFFFFFFF) + DISC,
    "write-ro-eperm": flags() + go("ro") + req(1, 0, 4, payload=b"\1\2\3\4") + DISC,
    "write-rw": flags() + go("rw") + req(1, 100, 5000, payload=b"\xab" * 5000) + req(0, 0, 8192) + DISC,
    "write-fua-flush": flags() + go("rw") + req(1, 4096, 4096, fl=1, payload=b"\xcd" * 4096) + req(3, 0, 0) + DISC,
    "write-truncated": flags() + go("rw") + req(1, 0, 4096, payload=b"\x01" * 100),
    "write-oversize": flags() + go("rw") + req(1, 0, 0x10000000),
    "write-past-end": flags() + go("rw") + req(1, 256 * 1024 - 2, 4, payload=b"zzzz") + DISC,
    "write-cache-enospc": flags() + go("rw") + b"".join(req(1, i * 65536, 65536, cookie=i, payload=bytes([i]) * 65536) for i in range(3)) + DISC,
    "write-zeroes": flags() + go("rw") + req(6, 1000, 9000) + req(6, 0, 0) + req(0, 0, 12000) + DISC,
    "trim-unsupported": flags() + go("rw") + req(4, 0, 4096) + DISC,
    "unknown-command": flags() + go("ro") + req(77, 0, 0) + DISC,
    "bad-flags": flags() + go("ro") + req(0, 0, 512, fl=0x8000) + DISC,
    "bad-request-magic": flags() + go("ro") + req(0, 0, 512, magic=0xBADC0DE5),
    "flush-with-length": flags() + go("rw") + req(3, 5, 5) + DISC,
    "many-options": flags() + opt(0x55) * 70,
    "truncated-header": flags() + go("ro") + req(0, 0, 512)[:13],
    "empty": b"",
    "flags-only": flags(),
    "pipelined-reads": flags() + go("ro") + b"".join(req(0, i * 4096, 4096, cookie=i) for i in range(16)) + DISC,
}

os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, "seed-" + name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {os.path.normpath(OUT)}")
