"""The text formats the probes read: /proc/PID/stat with hostile command names, kernel cpulists,
/proc/stat, and the ring-buffer record layout shared with the BPF object."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import pytest

from lbagent.hostinfo import NS_PER_TICK, parse_cpulist, parse_stat, state_and_cpu
from lbagent.live.probe.bpf import COMM_LEN, DEFAULT_OBJECT, MIRRORS, comm_key


def _stat(comm: str, state: str = "R", cpu: int = 3) -> str:
    # Fields 3..52 of /proc/PID/stat; 9 = flags, 14/15 = utime/stime, 22 = starttime, 39 = processor.
    fields = ["0"] * 50
    fields[0], fields[6], fields[11], fields[12], fields[19], fields[36] = state, "4194560", "7", "5", "1234", str(cpu)
    return f"4242 ({comm}) " + " ".join(fields) + "\n"


@pytest.mark.parametrize("comm", ["sh", "my prog", "a) R 1 (b", "((("])
def test_parse_stat_survives_any_command_name(comm):
    info = parse_stat(_stat(comm))
    assert (info.pid, info.comm, info.state, info.cpu) == (4242, comm, "R", 3)
    assert info.cputime_ns == 12 * NS_PER_TICK and info.start_ns == 1234 * NS_PER_TICK
    assert info.flags == 4194560


@pytest.mark.parametrize("comm", ["sh", "a) R 1 (b"])
def test_fast_scan_readsstate_and_cpu(tmp_path, comm):
    path = tmp_path / "stat"
    path.write_text(_stat(comm, state="S", cpu=7))
    assert state_and_cpu(str(path)) == (b"S", 7)
    assert state_and_cpu(str(tmp_path / "gone")) is None


@pytest.mark.parametrize("text, cpus", [("0", [0]), ("0-3\n", [0, 1, 2, 3]), ("0-1,4,6-7", [0, 1, 4, 6, 7])])
def test_parse_cpu_list(text, cpus):
    assert parse_cpulist(text) == frozenset(cpus)


def test_comm_key_matches_the_kernels_truncation():
    assert comm_key("a" * 20) == b"a" * (COMM_LEN - 1)
    assert comm_key("make") == b"make"


# ------------------------------------------------- the ctypes mirrors against the built object
BTF_KIND_STRUCT = 4


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


def _mirror(cls: type[ctypes.Structure]) -> tuple[int, list[tuple[str, int]]]:
    return ctypes.sizeof(cls), [(name, getattr(cls, name).offset) for name, *_ in cls._fields_]


def _built_object() -> Path:
    if not DEFAULT_OBJECT.exists():
        pytest.skip(f"{DEFAULT_OBJECT} not built (make bpf)")
    return DEFAULT_OBJECT


@pytest.fixture(scope="module")
def btf_layout():
    """(size, [(member, byte offset)]) of a struct in the object's BTF, as libbpf reads it."""
    obj = _built_object()
    try:  # our own handle: these prototypes must not touch the loader's (lbagent.live.probe.libbpf)
        lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    except OSError as exc:
        pytest.skip(f"no libbpf: {exc}")
    for name, restype, argtypes in (
        ("btf__parse_elf", ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
        ("btf__find_by_name_kind", ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]),
        ("btf__resolve_size", ctypes.c_int64, [ctypes.c_void_p, ctypes.c_uint32]),
        ("btf__type_by_id", ctypes.POINTER(_BtfType), [ctypes.c_void_p, ctypes.c_uint32]),
        ("btf__name_by_offset", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_uint32]),
        ("btf__free", None, [ctypes.c_void_p]),
    ):
        getattr(lib, name).restype, getattr(lib, name).argtypes = restype, argtypes
    btf = lib.btf__parse_elf(str(obj).encode(), None)
    assert btf, f"btf__parse_elf({obj}): {os.strerror(ctypes.get_errno())}"

    def layout(struct: str) -> tuple[int, list[tuple[str, int]]]:
        type_id = lib.btf__find_by_name_kind(btf, struct.encode(), BTF_KIND_STRUCT)
        assert type_id > 0, f"struct {struct} is not in the BTF of {obj}"
        t = lib.btf__type_by_id(btf, type_id).contents
        members = (_BtfMember * (t.info & 0xFFFF)).from_address(ctypes.addressof(t) + ctypes.sizeof(t))
        bit_offset = 0xFFFFFF if t.info >> 31 else 0xFFFFFFFF  # kind_flag: the top byte is a bitfield size
        return lib.btf__resolve_size(btf, type_id), [
            (lib.btf__name_by_offset(btf, m.name_off).decode(), (m.offset & bit_offset) // 8) for m in members
        ]

    yield layout
    lib.btf__free(btf)


@pytest.mark.kernel  # needs the built object and libbpf: CI must not skip it
@pytest.mark.parametrize("struct, mirror", sorted(MIRRORS.items()))
def test_loader_mirrors_match_the_objects_btf(btf_layout, struct, mirror):
    """Every member at the C offset, not only the total: a swapped pair keeps the size the loader
    checks at open (``check_layouts``), but would read one counter as the other."""
    assert _mirror(mirror) == btf_layout(struct)
