"""Every ``raise_alarm``/``clear_alarm`` call in the source names a catalogue alarm, with its
catalogue severity and its key fields: a mismatch would raise at run time, in the code path
that detected the problem."""

from __future__ import annotations

import ast
from pathlib import Path

from ucpush.alarms import CATALOGUE

SRC = Path(__file__).parents[2] / "src" / "ucpush"


def _constants(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def _calls() -> list[tuple[str, ast.Call, str]]:
    """(function, call, alarm name) for calls whose alarm name is a literal or a constant."""
    found = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        constants = _constants(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name not in ("raise_alarm", "clear_alarm"):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                alarm = first.value
            elif isinstance(first, ast.Name) and first.id in constants:
                alarm = constants[first.id]
            else:
                continue  # a parameter (e.g. a helper forwarding its argument)
            found.append((name, node, f"{path.relative_to(SRC)}:{node.lineno} {alarm}"))
    return found


def test_raise_sites_match_the_catalogue() -> None:
    calls = _calls()
    assert len(calls) >= 5  # the scan finds the known sites
    for function, call, where in calls:
        alarm = where.rsplit(" ", 1)[1]
        assert alarm in CATALOGUE, f"{where}: unknown alarm"
        definition = CATALOGUE[alarm]
        if function == "raise_alarm" and len(call.args) > 1:
            severity = call.args[1]
            if isinstance(severity, ast.Constant):
                assert severity.value == definition.severity, f"{where}: severity"
        keywords = {k.arg for k in call.keywords}
        if None not in keywords:  # no **details
            missing = set(definition.key) - keywords
            assert not missing, f"{where}: missing key field(s) {missing}"
            if function == "clear_alarm":
                assert keywords <= set(definition.key), f"{where}: not key fields"
