"""The canonical Lua scripts of the protocol (copies of clients/vectors/scripts/, checked
byte for byte by the tests)."""

from importlib import resources

NAMES = ("stats", "submit_dedup", "retry", "result")


def source(name: str) -> str:
    return resources.files("workpool").joinpath("scripts", f"{name}.lua").read_text(encoding="utf-8")


SOURCES = {n: source(n) for n in NAMES}
