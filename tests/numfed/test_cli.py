"""The ``numfed`` command line: help, ``pki init``, clean errors, and command registration."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from numfed import cli
from numfed.errors import FailedPrecondition
from numfed.identity import PeerId, Role
from numfed.pki import PkiLayout

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_pki(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: numfed" in out
    assert "pki" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "required" in capsys.readouterr().err


def test_pki_init_writes_the_pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "pki"
    assert cli.main(["pki", "init", str(target)]) == 0
    layout = PkiLayout(target)
    assert layout.ca_path.exists()
    assert len(layout.members()) == 1 + 3 + 8
    weibo = PeerId(Role.PLATFORM, "weibo")
    assert layout.cert_path(weibo).exists() and layout.key_path(weibo).exists()
    assert (target / "carrier/cmcc/signing.key.pem").exists()
    out = capsys.readouterr().out
    assert "spiffe://numfed/platform/weibo" in out
    assert "carrier/cmcc/{cert,key,signing.key}.pem" in out
    assert "root/root-{1,2,3}.key.pem" in out


def test_pki_init_takes_members_and_validity(tmp_path: Path) -> None:
    target = tmp_path / "pki"
    argv = ["pki", "init", str(target), "--carriers", "cmcc", "--platforms", "weibo,xiaomi"]
    assert cli.main([*argv, "--days", "2"]) == 0
    assert PkiLayout(target).members() == [
        PeerId(Role.GATEWAY, "main"),
        PeerId(Role.CARRIER, "cmcc"),
        PeerId(Role.PLATFORM, "weibo"),
        PeerId(Role.PLATFORM, "xiaomi"),
    ]


def test_pki_init_refuses_to_overwrite_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "pki"
    assert cli.main(["pki", "init", str(target), "--carriers", "", "--platforms", ""]) == 0
    before = (target / "ca.pem").read_bytes()
    capsys.readouterr()
    assert cli.main(["pki", "init", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numfed: error: PKI_EXISTS: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert (target / "ca.pem").read_bytes() == before


@pytest.mark.parametrize(
    "extra",
    [["--carriers", "China-Mobile"], ["--platforms", "weibo,weibo"], ["--days", "0"]],
    ids=["bad-id", "duplicate", "zero-days"],
)
def test_pki_init_bad_arguments_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    assert cli.main(["pki", "init", str(tmp_path / "pki"), *extra]) == 2
    assert capsys.readouterr().err.startswith("numfed: error: ")
    assert list(tmp_path.iterdir()) == []


def _configure_echo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("word")


def _run_echo(args: argparse.Namespace) -> int:
    if args.word == "fail":
        raise FailedPrecondition("NOT_READY", "echo is not ready")
    print(f"echo {args.word}")
    return 7


ECHO = cli.Command("echo", "print a word (test command)", _configure_echo, _run_echo)


def test_a_command_module_registers_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, f"{__name__}:ECHO"))
    assert cli.main(["--help"]) == 0
    assert "print a word (test command)" in capsys.readouterr().out
    assert cli.main(["echo", "hi"]) == 7
    assert capsys.readouterr().out == "echo hi\n"
    assert cli.main(["echo", "fail"]) == 2
    assert capsys.readouterr().err == "numfed: error: NOT_READY: echo is not ready\n"


def test_python_dash_m_numfed_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "numfed", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pki" in done.stdout
    assert done.stdout.startswith("usage: numfed")
