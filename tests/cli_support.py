"""What the CLI tests share: a command that must fail as an input error."""

from __future__ import annotations

from draft_core.cli import main


def run_error(capsys, *argv: str) -> str:
    """main(argv) must exit 2 with one `error: ...` paragraph on stderr, nothing on stdout and no
    traceback; returns the message (without `error: `)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert out == "", (out, err)
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err[len("error: ") :].strip()
