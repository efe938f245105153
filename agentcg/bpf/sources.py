"""The BPF C sources shipped with the package, and compiling them with bcc.

The sources live in the repository's top-level bpf/ directory, which pyproject.toml
installs as the data-only package agentcg.bpf.csrc (wheels and editable installs
alike). bcc compiles a program with clang when it is loaded, which takes seconds (tens
of seconds under emulation): load a program once per process, never per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from agentcg.core.errors import AgentcgError, ErrorCode

PACKAGE = "agentcg.bpf.csrc"


def source_root() -> Traversable:
    """The installed bpf/ directory; AgentcgError if the package was installed without it."""
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        root = None
    if root is None or not root.joinpath("include").is_dir():
        raise AgentcgError(
            ErrorCode.UNAVAILABLE,
            f"the BPF C sources ({PACKAGE}) are not installed with agentcg; "
            "reinstall it from a complete checkout or wheel (pip install agentcg)",
        )
    return root


def read_source(name: str) -> str:
    """The text of bpf/<name>."""
    path = source_root().joinpath(name)
    if not path.is_file():
        raise AgentcgError(
            ErrorCode.UNAVAILABLE,
            f"the BPF C source {name} is missing from {PACKAGE}; reinstall agentcg",
        )
    return path.read_text()


def include_dir() -> Path:
    """bpf/include as a filesystem path, for clang's -I (sources must be plain files)."""
    include = source_root().joinpath("include")
    if not isinstance(include, Path):
        raise AgentcgError(
            ErrorCode.UNAVAILABLE,
            f"{PACKAGE} is not on the filesystem ({include}); install agentcg unzipped",
        )
    return include


def load_bcc(name: str, what: str, cflags: Sequence[str] = ()) -> Any:
    """bcc.BPF for bpf/<name>, compiled and loaded; ``what`` names it in errors and
    ``cflags`` are added to clang's (e.g. -D macros).

    Programs declared with TRACEPOINT_PROBE and friends attach themselves on load.
    """
    text = read_source(name)
    include = include_dir()
    try:
        from bcc import BPF
    except ImportError as e:
        raise AgentcgError(
            ErrorCode.UNAVAILABLE, f"bcc is not importable ({e}); install python3-bpfcc"
        ) from None
    try:
        # The kernel's own headers (asm/ibt.h) trip -Wignored-attributes under bcc's
        # clang; left on, every daemon start logs a screenful of warnings on stderr.
        return BPF(text=text.encode(), cflags=[f"-I{include}", "-Wno-ignored-attributes", *cflags])
    except Exception as e:  # bcc raises bare Exception on compile and load failures
        raise AgentcgError(
            ErrorCode.UNAVAILABLE,
            f"cannot load the {what} BPF program ({name}): {e}; "
            "check kernel headers at /lib/modules/$(uname -r)/build and CAP_BPF",
        ) from None
