"""A thin ctypes binding to the system's ``libbpf.so.1``: just what lbagent's probe needs.

Why ctypes and not bcc or a PyPI wrapper: bcc needs kernel headers that locked-down hosts lack, and
the wrappers are immature; libbpf itself is the reference CO-RE loader and ships with every distro.
Every failure becomes a :class:`LibbpfError` carrying the call, the errno text and libbpf's own last
log line (the verifier's reason on a failed load), so the caller can print one clear line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

_void_p = ctypes.c_void_p
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
"""``int (*)(void *ctx, void *data, size_t size)``: the ring buffer's per-record callback."""

BPF_ANY = 0
BPF_NOEXIST = 1
BTF_KIND_STRUCT = 4


class LibbpfError(OSError):
    """A libbpf call failed; ``str()`` is one line: call, errno text, libbpf's last word."""

    def __init__(self, call: str, err: int, log: str = ""):
        err = abs(err)
        detail = f"{call}: {_strerror(err)} ({errno_mod.errorcode.get(err, err)})"
        if log:
            detail += f"; {log}"
        super().__init__(err, detail)
        self.call = call

    def __str__(self) -> str:
        return self.args[1]


# ---- the library and its log -------------------------------------------------------------------

_log: deque[str] = deque(maxlen=64)
_log_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


@_PRINT_FN
def _print(level: int, fmt: bytes, va_list: int) -> int:
    """libbpf's printf-style logger: render with vsnprintf and keep the tail for error messages."""
    buf = ctypes.create_string_buffer(1024)
    _libc.vsnprintf(buf, len(buf), fmt, va_list)
    with _log_lock:
        text = buf.value.decode(errors="replace")
        _log.extend(line if line.startswith("libbpf: ") else f"libbpf: {line}" for line in text.splitlines() if line.strip())
    return 0


def _strerror(err: int) -> str:
    """errno text; libbpf's own codes (4000 and up, e.g. "Invalid ELF format") through libbpf."""
    if err >= 4000 and _lib is not None:
        buf = ctypes.create_string_buffer(256)
        if _lib.libbpf_strerror(err, buf, len(buf)) == 0:
            return buf.value.decode(errors="replace")
    return os.strerror(err)


def _signature(lib: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


def library() -> ctypes.CDLL:
    """Load ``libbpf.so.1`` once; raise :class:`LibbpfError` (ENOENT) when the system lacks it."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise LibbpfError(f"load {name}", errno_mod.ENOENT, str(exc)) from None
    c_int, c_uint, c_size = ctypes.c_int, ctypes.c_uint, ctypes.c_size_t
    _signature(lib, "libbpf_set_print", _void_p, _PRINT_FN)
    _signature(lib, "libbpf_strerror", c_int, c_int, ctypes.c_char_p, c_size)
    _signature(lib, "bpf_object__open_file", _void_p, ctypes.c_char_p, _void_p)
    _signature(lib, "bpf_object__load", c_int, _void_p)
    _signature(lib, "bpf_object__close", None, _void_p)
    _signature(lib, "bpf_object__next_map", _void_p, _void_p, _void_p)
    _signature(lib, "bpf_object__next_program", _void_p, _void_p, _void_p)
    _signature(lib, "bpf_map__name", ctypes.c_char_p, _void_p)
    _signature(lib, "bpf_map__fd", c_int, _void_p)
    _signature(lib, "bpf_map__value_size", c_uint, _void_p)
    _signature(lib, "bpf_map__set_max_entries", c_int, _void_p, c_uint)
    _signature(lib, "bpf_map__set_initial_value", c_int, _void_p, _void_p, c_size)
    _signature(lib, "bpf_program__name", ctypes.c_char_p, _void_p)
    _signature(lib, "bpf_program__attach", _void_p, _void_p)
    _signature(lib, "bpf_program__autoload", ctypes.c_bool, _void_p)
    _signature(lib, "bpf_program__set_autoload", c_int, _void_p, ctypes.c_bool)
    _signature(lib, "bpf_link__destroy", c_int, _void_p)
    _signature(lib, "bpf_link__fd", c_int, _void_p)
    _signature(lib, "bpf_iter_create", c_int, c_int)
    _signature(lib, "bpf_object__btf", _void_p, _void_p)
    _signature(lib, "btf__find_by_name_kind", ctypes.c_int32, _void_p, ctypes.c_char_p, ctypes.c_uint32)
    _signature(lib, "btf__resolve_size", ctypes.c_int64, _void_p, ctypes.c_uint32)
    _signature(lib, "bpf_map_update_elem", c_int, c_int, _void_p, _void_p, ctypes.c_uint64)
    _signature(lib, "bpf_map_lookup_elem", c_int, c_int, _void_p, _void_p)
    _signature(lib, "ring_buffer__new", _void_p, c_int, SAMPLE_FN, _void_p, _void_p)
    _signature(lib, "ring_buffer__poll", c_int, _void_p, c_int)
    _signature(lib, "ring_buffer__free", None, _void_p)
    lib.libbpf_set_print(_print)
    _lib = lib
    return lib


def _last_log() -> str:
    """libbpf's last word on a failure, taken (and cleared) from its log. After a rejected program
    that is the verifier's reason, the line before its statistics, not "failed to load object"."""
    with _log_lock:
        lines = list(_log)
        _log.clear()
    ends = [i for i, line in enumerate(lines) if "-- END PROG LOAD LOG --" in line]
    if not ends:
        return lines[-1] if lines else ""
    reason = [line for line in lines[: ends[-1]] if not line.startswith("libbpf: processed ")]
    prog = next((line for line in lines[ends[-1] + 1 :] if "failed to load" in line), lines[-1])
    return f"{prog}; verifier: {reason[-1].removeprefix('libbpf: ')}" if reason else prog


def _check_ptr(call: str, ptr: int | None) -> int:
    if not ptr:
        raise LibbpfError(call, ctypes.get_errno() or errno_mod.EINVAL, _last_log())
    return ptr


def _check_rc(call: str, rc: int) -> int:
    if rc < 0:
        raise LibbpfError(call, rc, _last_log())
    return rc


# ---- objects, maps, programs ---------------------------------------------------------------------


class Map:
    """A map of a loaded (or opened) object; key and value are ctypes objects of the right size."""

    def __init__(self, ptr: int):
        self._ptr = ptr
        self.name = library().bpf_map__name(ptr).decode()

    @property
    def fd(self) -> int:
        return _check_rc(f"bpf_map__fd({self.name})", library().bpf_map__fd(self._ptr))

    @property
    def value_size(self) -> int:
        return library().bpf_map__value_size(self._ptr)

    def set_max_entries(self, n: int) -> None:
        _check_rc(f"bpf_map__set_max_entries({self.name})", library().bpf_map__set_max_entries(self._ptr, n))

    def set_initial_value(self, value: ctypes.Structure) -> None:
        """Only before load: how ``const volatile`` (.rodata) configuration reaches the program."""
        rc = library().bpf_map__set_initial_value(self._ptr, ctypes.byref(value), ctypes.sizeof(value))
        _check_rc(f"bpf_map__set_initial_value({self.name})", rc)

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        rc = library().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), flags)
        _check_rc(f"bpf_map_update_elem({self.name})", rc)

    def lookup(self, key, value) -> bool:
        """Fill ``value``; False when the key is absent."""
        rc = library().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value))
        if rc < 0 and -rc == errno_mod.ENOENT:
            return False
        _check_rc(f"bpf_map_lookup_elem({self.name})", rc)
        return True


class BpfObject:
    """An opened BPF object file: configure its maps, then :meth:`load` and :meth:`attach_all`.

    :meth:`close` detaches every link and frees the object; it is idempotent, and a context manager.
    """

    def __init__(self, path: str | Path):
        lib = library()
        self.path = str(path)
        self._obj: int | None = _check_ptr(
            f"bpf_object__open_file({self.path})", lib.bpf_object__open_file(self.path.encode(), None)
        )
        self._links: dict[str, int] = {}
        """Program name -> its link, in attach order."""

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handle(self) -> int:
        """The open object: after close() libbpf would be handed a NULL pointer."""
        if self._obj is None:
            raise LibbpfError(f"{self.path}: BPF object already closed", errno_mod.EBADF)
        return self._obj

    def _iterate(self, next_fn: Callable[[int, int | None], int | None]) -> Iterator[int]:
        obj = self._handle()
        ptr = next_fn(obj, None)
        while ptr:
            yield ptr
            ptr = next_fn(obj, ptr)

    def map(self, name: str) -> Map:
        """A map by name; global-variable maps by their section suffix (``.bss``, ``.rodata``)."""
        for ptr in self._iterate(library().bpf_object__next_map):
            found = Map(ptr)
            if found.name == name or (name.startswith(".") and found.name.endswith(name)):
                return found
        raise LibbpfError(f"map {name!r} in {self.path}", errno_mod.ENOENT)

    def struct_size(self, name: str) -> int | None:
        """The size of ``struct name`` in the object's own BTF (as compiled), None when absent."""
        lib = library()
        btf = lib.bpf_object__btf(self._handle())
        if not btf:
            return None
        type_id = lib.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
        if type_id < 0:
            return None
        return _check_rc(f"btf__resolve_size({name})", lib.btf__resolve_size(btf, type_id))

    def _program(self, name: str) -> int:
        lib = library()
        for prog in self._iterate(lib.bpf_object__next_program):
            if lib.bpf_program__name(prog).decode() == name:
                return prog
        raise LibbpfError(f"program {name!r} in {self.path}", errno_mod.ENOENT)

    def set_autoload(self, name: str, autoload: bool) -> None:
        """Only before load: a program left out is neither loaded (nor verified) nor attached."""
        rc = library().bpf_program__set_autoload(self._program(name), autoload)
        _check_rc(f"bpf_program__set_autoload({name})", rc)

    def load(self) -> None:
        _check_rc(f"bpf_object__load({os.path.basename(self.path)})", library().bpf_object__load(self._handle()))

    def attach_all(self) -> list[str]:
        """Attach every loaded program by its SEC() name (an ``iter/`` one becomes an iterator link,
        see :meth:`iterate`); on any failure detach what was attached. Returns the names attached."""
        lib = library()
        try:
            for prog in self._iterate(lib.bpf_object__next_program):
                if not lib.bpf_program__autoload(prog):
                    continue
                name = lib.bpf_program__name(prog).decode()
                self._links[name] = _check_ptr(f"bpf_program__attach({name})", lib.bpf_program__attach(prog))
        except LibbpfError:
            self.detach()
            raise
        return list(self._links)

    def iterate(self, name: str) -> bytes:
        """Run the attached iterator program ``name`` once: everything it wrote, read to EOF."""
        lib = library()
        link = self._links.get(name)
        if link is None:
            raise LibbpfError(f"iterator {name!r} of {self.path} is not attached", errno_mod.ENOENT)
        fd = _check_rc(f"bpf_iter_create({name})", lib.bpf_iter_create(_check_rc("bpf_link__fd", lib.bpf_link__fd(link))))
        chunks = []
        try:
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks)

    def detach(self) -> None:
        lib = library()
        while self._links:
            lib.bpf_link__destroy(self._links.popitem()[1])

    def close(self) -> None:
        if self._obj is None:
            return
        self.detach()
        library().bpf_object__close(self._obj)
        self._obj = None


class RingBuffer:
    """A consumer of one ``BPF_MAP_TYPE_RINGBUF``: ``poll`` calls ``on_record(bytes)`` per record."""

    def __init__(self, ring: Map, on_record: Callable[[bytes], None]):
        def trampoline(_ctx: int, data: int, size: int) -> int:
            on_record(ctypes.string_at(data, size))
            return 0

        self._callback = SAMPLE_FN(trampoline)  # kept alive as long as libbpf may call it
        self._rb: int | None = _check_ptr(
            f"ring_buffer__new({ring.name})", library().ring_buffer__new(ring.fd, self._callback, None, None)
        )

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for records and consume them; returns how many."""
        rc = library().ring_buffer__poll(self._rb, max(0, int(timeout * 1000)))
        if rc < 0 and -rc == errno_mod.EINTR:
            return 0
        return _check_rc("ring_buffer__poll", rc)

    def close(self) -> None:
        if self._rb is not None:
            library().ring_buffer__free(self._rb)
            self._rb = None
