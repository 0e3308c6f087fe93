#!/usr/bin/env python3
"""relay_lines.py save PROG_ID LINES.json
   relay_lines.py map LINES.json XLATED_LINUM SAMPLES

Attributes perf samples taken inside a JIT-compiled BPF program to its source lines.

The kernel reports, for every BTF line-info record of a loaded program, the address
its JIT code starts at (`jited_line_info`, BPF_OBJ_GET_INFO_BY_FD); bpftool's
`prog dump xlated id N linum` names the source line of every instruction. Together
they map a sampled instruction pointer to a line, without a JIT disassembler (the
Debian bpftool has no libbfd).

`save` reads the JIT line table of program PROG_ID while it is loaded. `map` then
needs XLATED_LINUM, the output of `bpftool prog dump xlated id PROG_ID linum` (taken
while the program was loaded), and SAMPLES, `perf script -F ip,sym` lines. It prints
the share of samples per source line, highest first.
"""
import bisect
import collections
import ctypes
import json
import re
import struct
import sys

SYS_BPF = 321  # x86_64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
INFO_SIZE = 240
libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(SYS_BPF, cmd, buf, 128)
    if fd < 0:
        err = ctypes.get_errno()
        sys.exit(f"relay_lines: bpf command {cmd} failed: errno {err}")
    return fd


def prog_info(fd, request):
    raw = ctypes.create_string_buffer(bytes(request), INFO_SIZE)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, INFO_SIZE, ctypes.addressof(raw)))
    return raw


def jit_lines(prog_id):
    """[(jit address, xlated insn offset)] sorted by address, and the program's range."""
    fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("I", prog_id))
    info = prog_info(fd, bytearray(INFO_SIZE))
    # Offsets of struct bpf_prog_info fields (include/uapi/linux/bpf.h).
    jited_len, = struct.unpack_from("I", info, 16)
    nr_ksyms, = struct.unpack_from("I", info, 104)
    nr_lines, = struct.unpack_from("I", info, 148)
    nr_jlines, = struct.unpack_from("I", info, 168)
    line_rec, jline_rec = struct.unpack_from("II", info, 172)
    if nr_lines == 0 or nr_jlines != nr_lines:
        sys.exit("relay_lines: the program has no JIT line info (loaded without BTF?)")
    lines = ctypes.create_string_buffer(nr_lines * line_rec)
    jlines = ctypes.create_string_buffer(nr_jlines * jline_rec)
    ksyms = ctypes.create_string_buffer(nr_ksyms * 8)
    req = bytearray(INFO_SIZE)
    struct.pack_into("IQ", req, 104, nr_ksyms, 0)
    struct.pack_into("Q", req, 112, ctypes.addressof(ksyms))
    struct.pack_into("II", req, 148, nr_lines, 0)
    struct.pack_into("Q", req, 152, ctypes.addressof(lines))
    struct.pack_into("Q", req, 160, ctypes.addressof(jlines))
    struct.pack_into("III", req, 168, nr_jlines, line_rec, jline_rec)
    prog_info(fd, req)
    start = struct.unpack_from("Q", ksyms, 0)[0]
    pairs = sorted(
        (struct.unpack_from("Q", jlines, k * jline_rec)[0],
         struct.unpack_from("I", lines, k * line_rec)[0])
        for k in range(nr_lines)
    )
    return pairs, start, start + jited_len


def xlated_sources(path):
    """xlated insn offset -> 'file:line  source text'."""
    src, cur = {}, "?"
    for line in open(path):
        m = re.match(r"^; (.*) \[file:(\S+) line_num:(\d+)", line.strip())
        if m:
            cur = f"{'/'.join(m.group(2).split('/')[-3:])}:{m.group(3)}  {m.group(1)[:64]}"
            continue
        m = re.match(r"^\s*(\d+):", line)
        if m:
            src[int(m.group(1))] = cur
    return src


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "save":
        pairs, start, end = jit_lines(int(sys.argv[2]))
        with open(sys.argv[3], "w") as f:
            json.dump({"pairs": pairs, "start": start, "end": end}, f)
        return
    if len(sys.argv) != 5 or sys.argv[1] != "map":
        sys.exit(__doc__)
    saved = json.load(open(sys.argv[2]))
    pairs, start, end = saved["pairs"], saved["start"], saved["end"]
    src = xlated_sources(sys.argv[3])
    addrs = [a for a, _ in pairs]
    counts, total = collections.Counter(), 0
    for line in open(sys.argv[4]):
        try:
            ip = int(line.split()[0], 16)
        except (IndexError, ValueError):
            continue
        k = bisect.bisect_right(addrs, ip) - 1
        if not (start <= ip < end) or k < 0:
            continue
        total += 1
        counts[src.get(pairs[k][1], "?")] += 1
    print(f"{total} samples in the program")
    for where, n in counts.most_common(30):
        print(f"{100 * n / max(total, 1):5.1f}%  {where}")


if __name__ == "__main__":
    main()
