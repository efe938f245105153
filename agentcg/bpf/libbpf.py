"""The few libbpf calls agentcg needs, through ctypes (libbpf.so.1, version 1.4 or later).

bcc cannot load struct_ops programs, so the sched_ext scheduler is loaded with libbpf
itself: open an object file, fill its read-only knobs, pick which maps to create, load,
attach, pin. Map reads and writes afterwards are libbpf's thin bpf(2) wrappers on the
file descriptors of pinned maps. libbpf's own messages (the verifier log on a failed
load) are kept and quoted in the error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections import deque
from functools import cache
from typing import Any

from agentcg.core.errors import AgentcgError

log = logging.getLogger("agentcg.bpf")

MIN_VERSION = (1, 4)  # struct_ops links with autocreate and initial values of struct_ops maps
_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)  # LIBBPF_WARN, _INFO, _DEBUG
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_messages: deque[str] = deque(maxlen=40)  # libbpf's latest warnings, for error messages
_VP, _CP, _INT, _U64 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint64
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_major_version": (ctypes.c_uint32, []),
    "libbpf_minor_version": (ctypes.c_uint32, []),
    "libbpf_num_possible_cpus": (_INT, []),
    "libbpf_set_print": (_VP, [_PRINT_FN]),
    "bpf_object__open_file": (_VP, [_CP, _VP]),
    "bpf_object__load": (_INT, [_VP]),
    "bpf_object__close": (None, [_VP]),
    "bpf_object__find_map_by_name": (_VP, [_VP, _CP]),
    "bpf_map__initial_value": (_VP, [_VP, ctypes.POINTER(ctypes.c_size_t)]),
    "bpf_map__set_autocreate": (_INT, [_VP, ctypes.c_bool]),
    "bpf_map__set_pin_path": (_INT, [_VP, _CP]),
    "bpf_map__attach_struct_ops": (_VP, [_VP]),
    "bpf_link__pin": (_INT, [_VP, _CP]),
    "bpf_link__destroy": (_INT, [_VP]),
    "bpf_obj_get": (_INT, [_CP]),
    "bpf_map_lookup_elem": (_INT, [_INT, _VP, _VP]),
    "bpf_map_update_elem": (_INT, [_INT, _VP, _VP, _U64]),
    "bpf_map_delete_elem": (_INT, [_INT, _VP]),
}


def _on_print(level: int, fmt: bytes | None, args: int | None) -> int:
    buf = ctypes.create_string_buffer(1024)
    _libc().vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip()
    if level == 0 and text:
        _messages.append(text)
    log.log(_LEVELS[min(max(level, 0), 2)], "libbpf: %s", text)
    return 0


_print_callback = _PRINT_FN(_on_print)  # referenced for as long as libbpf may call it


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None)
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    return libc


@cache
def lib() -> ctypes.CDLL:
    """libbpf.so.1, checked to be new enough, its messages routed to our log."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        so = ctypes.CDLL(name, use_errno=True)
        for fn, (restype, argtypes) in _SIGNATURES.items():
            f = getattr(so, fn)
            f.restype, f.argtypes = restype, argtypes
    except (OSError, AttributeError) as e:
        raise AgentcgError(
            "unavailable", f"cannot use libbpf ({e}); install libbpf1 >= 1.4 (scripts/setup.sh)"
        ) from None
    version = (so.libbpf_major_version(), so.libbpf_minor_version())
    if version < MIN_VERSION:
        raise AgentcgError(
            "unavailable",
            f"libbpf {version[0]}.{version[1]} is too old for sched_ext struct_ops; "
            "install libbpf1 >= 1.4 (bookworm-backports; scripts/setup.sh does)",
        )
    so.libbpf_set_print(_print_callback)
    return so


def version() -> str:
    so = lib()
    return f"{so.libbpf_major_version()}.{so.libbpf_minor_version()}"


def _fail(what: str, err: int) -> AgentcgError:
    detail = "; ".join(list(_messages)[-6:])
    _messages.clear()
    reason = os.strerror(abs(err)) if err else "unknown error"
    return AgentcgError(
        "unavailable", f"{what}: {reason}" + (f" (libbpf: {detail})" if detail else "")
    )


def _check(what: str, rc: int) -> None:
    if rc < 0:
        raise _fail(what, rc)


class BpfObject:
    """One opened BPF object file; close() (or a with block) frees what is not pinned."""

    def __init__(self, path: str) -> None:
        _messages.clear()
        self._obj = lib().bpf_object__open_file(path.encode(), None)
        if not self._obj:
            raise _fail(f"cannot open BPF object {path}", ctypes.get_errno())
        self.path = path

    def _map(self, name: str) -> int:
        m = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise AgentcgError("internal", f"{self.path} has no map {name!r}; rebuild it")
        return int(m)

    def set_initial_value(self, map_name: str, data: ctypes.Structure) -> None:
        """Overwrite a data map (".rodata") before load; sizes must match exactly."""
        size = ctypes.c_size_t(0)
        ptr = lib().bpf_map__initial_value(self._map(map_name), ctypes.byref(size))
        if not ptr or size.value != ctypes.sizeof(data):
            raise AgentcgError(
                "internal",
                f"{self.path}: {map_name} holds {size.value} bytes, expected "
                f"{ctypes.sizeof(data)}; rebuild the object and the loader together",
            )
        ctypes.memmove(ptr, ctypes.addressof(data), size.value)

    def set_autocreate(self, map_name: str, create: bool) -> None:
        _check(
            f"{map_name}: autocreate", lib().bpf_map__set_autocreate(self._map(map_name), create)
        )

    def set_pin_path(self, map_name: str, path: str) -> None:
        _check(
            f"{map_name}: pin path", lib().bpf_map__set_pin_path(self._map(map_name), path.encode())
        )

    def load(self) -> None:
        _check(f"cannot load {self.path}", lib().bpf_object__load(self._obj))

    def attach_and_pin(self, struct_ops_map: str, link_path: str) -> None:
        """Register a struct_ops map and pin its link, which then alone keeps it
        registered: this process may exit, and unlinking the pin unregisters it."""
        so = lib()
        link = so.bpf_map__attach_struct_ops(self._map(struct_ops_map))
        if not link:
            raise _fail(f"cannot attach {struct_ops_map}", ctypes.get_errno())
        rc = so.bpf_link__pin(link, link_path.encode())
        # Closes our fd: a pinned link stays registered, an unpinned one goes away.
        so.bpf_link__destroy(link)
        _check(f"cannot pin the link at {link_path}", rc)

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class PinnedMap:
    """A pinned map, read and written through its fd. Per-CPU maps hold one value per
    possible CPU, each padded to 8 bytes."""

    def __init__(self, path: str, value_size: int, percpu: bool = False) -> None:
        fd = lib().bpf_obj_get(path.encode())
        if fd < 0:
            raise _fail(f"cannot open pinned map {path}", fd)
        self.fd, self.path = fd, path
        self.ncpus = lib().libbpf_num_possible_cpus() if percpu else 1
        self.stride = (value_size + 7) // 8 * 8 if percpu else value_size

    def lookup(self, key: ctypes._SimpleCData[Any]) -> bytes | None:
        buf = ctypes.create_string_buffer(self.stride * self.ncpus)
        rc = lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), buf)
        if rc == -2:  # ENOENT
            return None
        _check(f"lookup in {self.path}", rc)
        return buf.raw

    def update(self, key: ctypes._SimpleCData[Any], value: ctypes.Structure) -> None:
        _check(
            f"update of {self.path}",
            lib().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), 0),
        )

    def insert(self, key: ctypes._SimpleCData[Any], value: ctypes.Structure) -> bool:
        """Add an entry unless the key has one (BPF_NOEXIST); whether it was added."""
        rc = lib().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), 1)
        if rc == -17:  # EEXIST
            return False
        _check(f"insert into {self.path}", rc)
        return True

    def delete(self, key: ctypes._SimpleCData[Any]) -> None:
        rc = lib().bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if rc != -2:
            _check(f"delete from {self.path}", rc)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
