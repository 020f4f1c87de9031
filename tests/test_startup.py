"""Start-up without torch (issue 25): `vaelab --help`, `--version`, `list` and argument errors answer without
importing torch, and the lazy package still offers every public name. Which modules a command imported is read
from a fresh interpreter's sys.modules; nothing here measures time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import vaelab
from vaelab.cli import listing as cli_list
from vaelab.cli import main as cli

PROBE = """
import json, sys
import vaelab.cli.main
try:
    code = vaelab.cli.main.main({argv!r})
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "torch": "torch" in sys.modules}}))
"""


def run_fresh(argv: list[str]) -> tuple[dict, str, str]:
    """`vaelab.cli.main.main(argv)` in a new interpreter: ({code, torch imported?}, stdout before that line, stderr)."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=120, check=False)
    *out, last = proc.stdout.strip().splitlines()
    return json.loads(last), "\n".join(out), proc.stderr


QUICK_HELP = (["--help"], ["--version"], ["list"], ["train", "--help"], ["sweep", "--help"], ["compare", "--help"],
              ["stack", "--help"])


@pytest.mark.parametrize("argv", [*QUICK_HELP, ["train", "--epochs", "x"], ["bogus"], ["sample"]])
def test_the_quick_answers_do_not_import_torch(argv):
    result, out, err = run_fresh(argv)
    assert result["torch"] is False, f"vaelab {' '.join(argv)} imported torch"
    if argv in QUICK_HELP:
        assert result["code"] in (0, None) and out, err
    else:
        assert result["code"] == 2 and err.startswith("vaelab: error:") and len(err.strip().splitlines()) == 1


def test_import_vaelab_alone_does_not_import_torch():
    code = "import sys, vaelab; print(vaelab.__version__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == [vaelab.__version__, "False"]


def test_a_real_command_still_imports_what_it_needs(tmp_path):
    result, _, err = run_fresh(["train", "gaussian_vae", "--data", "digits", "--epochs", "1", "--quiet",
                                "--set", "train.steps_per_epoch=2", "--out", str(tmp_path / "run")])
    assert result["code"] in (0, None) and result["torch"] is True, err
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()


def test_every_public_name_loads_and_dir_shows_them():
    from vaelab import api
    from vaelab.config import schema as config
    from vaelab.estimators import pathwise as estimators
    from vaelab.models import latents

    for name in vaelab.__all__:
        assert getattr(vaelab, name) is not None
    assert vaelab.fit is api.fit and vaelab.Config is config.Config
    assert vaelab.ESTIMATORS is estimators.ESTIMATORS and vaelab.LATENTS is latents.LATENTS
    assert set(vaelab.__all__) <= set(dir(vaelab))
    namespace: dict = {}
    exec("from vaelab import *", namespace)
    assert set(vaelab.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no_such_name"):
        vaelab.no_such_name  # noqa: B018


def test_the_list_table_matches_the_live_registries():
    """`vaelab list` prints from config/names.py's static tables (tests/test_config_leaf.py checks those against the
    live registries): the same text as from the live registries, and the same presets as config.presets()."""
    live = cli_list.live_tables()
    assert cli_list.listing(*live) == cli_list.listing(), (
        "the registries changed: paste the output of `python -m vaelab.config.names` over the tables in "
        "src/vaelab/config/names.py")
    from vaelab.config.schema import presets

    assert f"presets (vaelab train NAME): {', '.join(presets())}\n" in cli_list.listing()


def test_list_prints_the_registries(cli):
    code, out, _ = cli("list")
    from vaelab.estimators.pathwise import ESTIMATORS
    from vaelab.models.latents import LATENTS

    assert code == 0
    for name in [*LATENTS, *ESTIMATORS]:
        assert f"\n  {name} " in out
    assert "fits: bernoulli\n" in out          # DisARM fits factorised Bernoulli codes only
    assert "literature/iwae_vae_1layer" in out


def test_the_help_stand_ins_say_what_the_real_parsers_say():
    for command in cli.ORCHESTRATION_HELP:
        assert cli.parser().format_help() == cli.parser(command).format_help()


def test_command_of_skips_the_top_level_options():
    assert cli.command_of(["--version"]) is None
    assert cli.command_of(["-h", "sweep", "x"]) == "sweep"
    assert cli.command_of(["train", "sweep"]) == "train"
