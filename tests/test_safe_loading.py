"""Loading a file never runs code: every `torch.load` in packages/ and shared/ passes `weights_only=True`."""

import re

from _workspace import ROOT

CALL = re.compile(r"torch\.load\(")


def _calls(text: str):
    """Each `torch.load(` call's argument text (balanced parentheses)."""
    for m in CALL.finditer(text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield text.count("\n", 0, m.start()) + 1, text[m.end() : i - 1]


def test_every_torch_load_is_weights_only():
    offenders = []
    for path in [*ROOT.glob("packages/*/**/*.py"), *ROOT.glob("shared/**/*.py")]:
        if ".venv" in path.parts:
            continue
        for line, args in _calls(path.read_text()):
            if not re.search(r"weights_only\s*=\s*True", args):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_the_grep_finds_an_offender():
    sample = "x = torch.load(\n    path,\n    map_location='cpu')\ny = torch.load(p, weights_only=True)\n"
    found = [(line, "weights_only=True" in args) for line, args in _calls(sample)]
    assert found == [(1, False), (4, True)]
