"""The reference documents docs/rpc.md and docs/protocol.md against the code.

Each test reads the fixed tables of the code (error codes and their texts,
close codes, the backend API's methods and roles, policy fields, event kinds)
and checks the matching table of the document, both ways where the table is
meant to be complete: what the code has must be documented, and what the
document lists must still exist. Plain, synchronous, no node and no network.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from unittest import mock

import pytest

from engine import errors
from engine.backend_api import BACKEND, OPERATOR, BackendApi
from engine.config import Policy
from engine.errors import DESCRIPTIONS_DEVICE, DESCRIPTIONS_RPC, DeviceErrorCode, RpcErrorCode
from engine.events import EVENT_KINDS

DOCS = Path(__file__).resolve().parent.parent / "docs"
RPC_DOC = DOCS / "rpc.md"
PROTOCOL_DOC = DOCS / "protocol.md"

_HEADING = re.compile(r"^(#{1,6}) ")


def _read(path: Path) -> str:
    assert path.is_file(), f"{path} is missing"
    return path.read_text(encoding="utf-8")


def _section(text: str, heading: str, doc: str) -> str:
    """The text under the first heading that starts with `heading` (e.g.
    "## Errors"), up to the next heading of the same or a higher level.
    Lines inside fenced code blocks are not taken for headings."""
    lines = text.splitlines()
    level, start = 0, None
    fenced = False
    for index, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        match = _HEADING.match(line)
        if start is None:
            if match and line.startswith(heading):
                level, start = len(match.group(1)), index + 1
        elif match and len(match.group(1)) <= level:
            return "\n".join(lines[start:index])
    assert start is not None, f"{doc} has no section {heading!r}"
    return "\n".join(lines[start:])


def _tables(section: str) -> list[list[list[str]]]:
    """The markdown tables of a section: each a list of rows, each a list of
    cells (stripped, header row first, the |---| separator row left out)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in section.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _table(text: str, heading: str, first_header: str, doc: str) -> list[list[str]]:
    """The body rows of the table in section `heading` whose first header
    cell is `first_header`."""
    for table in _tables(_section(text, heading, doc)):
        if _plain(table[0][0]) == first_header:
            return table[1:]
    raise AssertionError(f"{doc}, section {heading!r}: no table whose first column is {first_header!r}")


def _plain(cell: str) -> str:
    """A cell without the backticks around code: "`push_limited`" -> "push_limited"."""
    return cell.replace("`", "").strip()


def _first_column(rows: list[list[str]]) -> dict[str, list[str]]:
    return {_plain(row[0]): row for row in rows}


# -- docs/rpc.md ---------------------------------------------------------------


@pytest.fixture(scope="module")
def rpc_doc() -> str:
    return _read(RPC_DOC)


@pytest.fixture(scope="module")
def api() -> BackendApi:
    # BackendApi builds its method table from its own bound methods; the node
    # is only stored for later calls, so a stand-in is enough to read the
    # table (names, roles) exactly as the RPC server sees it.
    return BackendApi(mock.MagicMock(name="node"))


def test_every_rpc_error_code_and_its_text_is_in_the_error_table(rpc_doc):
    rows = _first_column(_table(rpc_doc, "## Errors", "Code", "docs/rpc.md"))
    missing = [str(code) for code in RpcErrorCode if str(code) not in rows]
    assert not missing, f"docs/rpc.md error table has no row for the RpcErrorCode(s) {missing}"
    wrong = {
        str(code): (DESCRIPTIONS_RPC[code], _plain(rows[str(code)][1]))
        for code in RpcErrorCode
        if _plain(rows[str(code)][1]) != DESCRIPTIONS_RPC[code]
    }
    assert not wrong, (
        "docs/rpc.md error table: the message column differs from DESCRIPTIONS_RPC "
        f"(code: (expected, documented)): {wrong}")
    stale = sorted(set(rows) - {str(code) for code in RpcErrorCode})
    assert not stale, f"docs/rpc.md error table lists code(s) that RpcErrorCode no longer has: {stale}"


def test_every_rpc_error_code_has_a_description():
    missing = [str(code) for code in RpcErrorCode if code not in DESCRIPTIONS_RPC]
    assert not missing, f"engine/errors.py DESCRIPTIONS_RPC has no text for {missing}"


def test_every_method_of_the_backend_api_is_documented(rpc_doc, api):
    methods = _section(rpc_doc, "## Methods", "docs/rpc.md")
    headings = set(re.findall(r"^#{3,4} `([a-z_.]+)\(", methods, re.M))
    names = api.method_names
    assert "auth" in names and len(names) > 1, f"BackendApi.method_names looks wrong: {names}"
    missing = [name for name in names if name not in headings]
    assert not missing, f"docs/rpc.md has no '### `method(...)`' section under Methods for {missing}"
    stale = sorted(headings - set(names))
    assert not stale, f"docs/rpc.md documents method(s) that BackendApi no longer has: {stale}"


def test_the_roles_table_matches_each_methods_roles(rpc_doc, api):
    rows = _first_column(_table(rpc_doc, "### Roles", "Method", "docs/rpc.md"))
    specs = api._methods  # name -> MethodSpec(roles=...): what the server enforces
    missing = [name for name in specs if name not in rows]
    assert not missing, f"docs/rpc.md roles table has no row for {missing}"
    wrong = {}
    for name, spec in specs.items():
        documented = {role for role, cell in zip((BACKEND, OPERATOR), rows[name][1:3]) if _plain(cell) == "yes"}
        if documented != set(spec.roles):
            wrong[name] = {"code": sorted(spec.roles), "docs": sorted(documented)}
    assert not wrong, f"docs/rpc.md roles table differs from BackendApi's roles: {wrong}"
    stale = sorted(set(rows) - set(specs))
    assert not stale, f"docs/rpc.md roles table lists method(s) that BackendApi no longer has: {stale}"


def test_every_policy_field_is_in_the_policy_table(rpc_doc):
    rows = _first_column(_table(rpc_doc, "### `policy.set(", "Field", "docs/rpc.md"))
    fields = [f.name for f in dataclasses.fields(Policy)]
    missing = [name for name in fields if name not in rows]
    assert not missing, f"docs/rpc.md policy.set table has no row for the Policy field(s) {missing}"
    wrong_default = {
        name: (getattr(Policy(), name), _plain(rows[name][2]))
        for name in fields
        if _plain(rows[name][2]) != _default_text(getattr(Policy(), name))
    }
    assert not wrong_default, (
        f"docs/rpc.md policy.set table: the default differs from engine/config.py (field: (code, docs)): "
        f"{wrong_default}")
    stale = sorted(set(rows) - set(fields))
    assert not stale, f"docs/rpc.md policy.set table lists field(s) that Policy no longer has: {stale}"


def _default_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_every_event_kind_is_in_the_events_table(rpc_doc):
    rows = _first_column(_table(rpc_doc, "## Events", "kind", "docs/rpc.md"))
    missing = [kind for kind in EVENT_KINDS if kind not in rows]
    assert not missing, f"docs/rpc.md events table has no row for the event kind(s) {missing}"
    stale = sorted(set(rows) - set(EVENT_KINDS))
    assert not stale, f"docs/rpc.md events table lists kind(s) missing from engine.events.EVENT_KINDS: {stale}"


# -- docs/protocol.md ----------------------------------------------------------


@pytest.fixture(scope="module")
def protocol_doc() -> str:
    return _read(PROTOCOL_DOC)


def test_every_device_error_code_and_its_text_is_in_the_error_table(protocol_doc):
    rows = _first_column(_table(protocol_doc, "## 11. Error codes", "Code", "docs/protocol.md"))
    missing = [str(code) for code in DeviceErrorCode if str(code) not in rows]
    assert not missing, f"docs/protocol.md §11 error table has no row for the DeviceErrorCode(s) {missing}"
    wrong = {
        str(code): (DESCRIPTIONS_DEVICE[code], _plain(rows[str(code)][1]))
        for code in DeviceErrorCode
        if _plain(rows[str(code)][1]) != DESCRIPTIONS_DEVICE[code]
    }
    assert not wrong, (
        "docs/protocol.md §11 error table: the meaning column differs from DESCRIPTIONS_DEVICE "
        f"(code: (expected, documented)): {wrong}")
    stale = sorted(set(rows) - {str(code) for code in DeviceErrorCode})
    assert not stale, f"docs/protocol.md §11 lists code(s) that DeviceErrorCode no longer has: {stale}"


def test_every_close_code_is_in_the_close_code_table(protocol_doc):
    constants = {name: value for name, value in vars(errors).items()
                 if name.startswith("CLOSE_") and isinstance(value, int)}
    assert constants, "engine/errors.py has no CLOSE_* constants"
    rows = _first_column(_table(protocol_doc, "## 12. Close codes", "Code", "docs/protocol.md"))
    missing = {name: value for name, value in constants.items() if str(value) not in rows}
    assert not missing, f"docs/protocol.md §12 close-code table has no row for {missing}"
    misnamed = {name: _plain(rows[str(value)][1]) for name, value in constants.items()
                if _plain(rows[str(value)][1]) != name}
    assert not misnamed, f"docs/protocol.md §12 names these close codes differently (constant: documented): {misnamed}"
    stale = {code: _plain(row[1]) for code, row in rows.items()
             if _plain(row[1]).startswith("CLOSE_") and _plain(row[1]) not in constants}
    assert not stale, f"docs/protocol.md §12 lists constant(s) that engine/errors.py no longer has: {stale}"
