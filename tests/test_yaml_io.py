"""vaelab's one YAML reader (issue 27, item 3): bounded (size, depth, nodes once aliases are expanded), duplicate
keys refused, the only caller of yaml.safe_load; and the files read through it (sweep specs, sweep.yaml, a run's
config.yaml in compare) refused in one line or, for sweep.yaml, rebuilt."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from vaelab.core import yaml_io
from vaelab.core.errors import VaelabError

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))

REFUSED = [
    ("billion-laughs", LAUGHS, "more than 250,000 values once its aliases (*name) are expanded"),
    ("recursive-alias", "a: &x [1, *x]\n", "a recursive structure at line 1"),
    ("duplicate-key", "a: 1\nb: 2\na: 3\n", "the key 'a' appears twice in one mapping (keep one) at line 3"),
    ("duplicate-nested", "train: {lr: 1, lr: 2}\n", "the key 'lr' appears twice"),
    ("duplicate-int-key", "{1: a, 1: b}", "the key 1 appears twice"),
    ("deep-flow", "[" * 20000 + "]" * 20000, f"nested more than {yaml_io.MAX_DEPTH} levels deep"),
    ("deep-block", "".join("  " * i + "- \n" for i in range(100)), "nested more than"),
]

ACCEPTED = [
    ("plain", "a: 1\nb: [1, 2.5, x]\nc: {d: null}\n", {"a": 1, "b": [1, 2.5, "x"], "c": {"d": None}}),
    ("few-aliases", "x: &x [1, 2]\ny: [*x, *x]\n", {"x": [1, 2], "y": [[1, 2], [1, 2]]}),
    ("merge-key-override", "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n",
     {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}}),
    ("empty", "", None),
    ("at-the-depth-limit", "[" * (yaml_io.MAX_DEPTH - 1) + "]" * (yaml_io.MAX_DEPTH - 1), None),
]


@pytest.mark.parametrize(("text", "fragment"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_hostile_documents_are_refused_in_one_line(text, fragment):
    with pytest.raises(yaml_io.Refused) as err:
        yaml_io.safe_load(text)
    assert isinstance(err.value, yaml.YAMLError) and fragment in yaml_io.problem(err.value)
    with pytest.raises(VaelabError, match="^doc x is refused") as err:
        yaml_io.load(text, "doc x", "fix it")
    assert "\n" not in str(err.value) and str(err.value).endswith(": fix it")


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_ordinary_documents_load_as_yaml_safe_load_reads_them(text, expected):
    assert yaml_io.safe_load(text) == yaml.safe_load(text)
    if expected is not None:
        assert yaml_io.safe_load(text) == expected


def test_a_document_larger_than_the_cap_is_refused_unparsed(monkeypatch):
    monkeypatch.setattr(yaml_io, "MAX_CHARS", 10)
    with pytest.raises(yaml_io.Refused, match="11 characters, more than the 10 vaelab reads"):
        yaml_io.safe_load("a: 12345678")


def test_tags_and_syntax_errors_keep_their_messages():
    with pytest.raises(VaelabError, match=r"uses a YAML tag vaelab does not load .*never !!python tags\): fix"):
        yaml_io.load("x: !!python/object/apply:os.system ['true']", "doc", "fix")
    with pytest.raises(VaelabError, match=r"doc is not valid YAML \(expected ',' or '\]'"):
        yaml_io.load("a: [1", "doc", "fix")


@pytest.mark.parametrize(("content", "fragment"), [
    (b"- 1\n", "must hold a mapping (key: value lines), not a list"),
    (b"caf\xe9: 1\n", "is not UTF-8 text (byte 0xe9 at offset 3)"),
    (b"a: [1\n", "is not valid YAML"),
    (LAUGHS.encode(), "an alias bomb?"),
    (b"a: 1\na: 2\n", "appears twice"),
], ids=["list", "not-utf8", "broken", "bomb", "duplicate"])
def test_read_mapping_names_the_file_and_the_fix(tmp_path, content, fragment):
    (tmp_path / "f.yaml").write_bytes(content)
    with pytest.raises(VaelabError) as err:
        yaml_io.read_mapping(tmp_path / "f.yaml", "the fix", "file F")
    assert str(err.value).startswith("file F ") and fragment in str(err.value) and str(err.value).endswith("the fix")
    with pytest.raises(VaelabError, match="cannot read m .No such file"):
        yaml_io.read_mapping(tmp_path / "missing.yaml", "x", "m")


def test_yaml_io_is_the_only_caller_of_safe_load():
    """Every yaml.safe_load / yaml.load call in src/vaelab is in yaml_io.py."""
    callers = set()
    for path in (Path(__file__).resolve().parents[1] / "src" / "vaelab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("safe_load", "load", "full_load", "unsafe_load") \
                    and isinstance(node.value, ast.Name) and node.value.id == "yaml":
                callers.add(path.name)
    assert callers <= {"yaml_io.py"}, callers


SPECS = [
    ("spec-bomb", LAUGHS.replace("a: &a", "set: {}\nbase: gaussian_vae\na: &a"), "an alias bomb?"),
    ("spec-duplicate-key", "base: gaussian_vae\nseeds: 2\nseeds: 3\n", "the key 'seeds' appears twice"),
    ("spec-a-list", "- base\n", "must hold a mapping"),
    ("spec-not-utf8", b"base: caf\xe9\n", "is not UTF-8 text"),
    ("base-config-damaged", "base: WS/base.yaml\n", "base config"),
]


@pytest.mark.parametrize(("spec", "fragment"), [c[1:] for c in SPECS], ids=[c[0] for c in SPECS])
def test_a_bad_sweep_spec_is_refused_in_one_line(tmp_path, cli, spec, fragment):
    (tmp_path / "base.yaml").write_text("train: {epochs: 1}\ntrain: {epochs: 2}\n")
    raw = spec if isinstance(spec, bytes) else spec.replace("WS/", f"{tmp_path}/").encode()
    (tmp_path / "s.yaml").write_bytes(raw)
    code, out, err = cli("sweep", tmp_path / "s.yaml", "--out", tmp_path / "out", "--list")
    assert code == 2 and err.startswith("vaelab: error: ") and err.count("\n") == 1 and fragment in err, err


@pytest.mark.parametrize("damage", [b"\x00garbage", b"runs: [1, 2]\n", b"- a\n", LAUGHS.encode(),
                                    b"runs: {seed=0: 5}\n"], ids=["binary", "runs-list", "root-list", "bomb",
                                                                  "entry-scalar"])
def test_a_damaged_sweep_yaml_is_listed_from_scratch(tmp_path, cli, damage):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "gaussian_vae", "seeds": [0],
                                                     "set": {"data.source": "digits"}}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sweep.yaml").write_bytes(damage)
    code, out, err = cli("sweep", tmp_path / "s.yaml", "--out", tmp_path / "out", "--list")
    assert code == 0 and out.split() == ["0", "new", "seed=0"], err


@pytest.mark.parametrize(("content", "fragment"), [
    (b"", None), (b"- 1\n", "must hold a mapping"), (b"model: [\n", "is not valid YAML"),
    (b"x: !!python/object/apply:os.system ['true']\n", "never !!python tags"), (b"\xff\xfe\n", "is not UTF-8"),
    (LAUGHS.encode(), "an alias bomb?")], ids=["empty", "list", "broken", "tagged", "not-utf8", "bomb"])
def test_compare_names_a_damaged_config_yaml(tmp_path, cli, content, fragment):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_elbo": -100.0, "seconds": 1.0}\n')
    (run / "config.yaml").write_bytes(content)
    code, out, err = cli("compare", tmp_path / "runs", "--out", tmp_path / "cmp")
    if fragment is None:
        assert code == 0, err
    else:
        assert code == 2 and err.count("\n") == 1 and fragment in err and str(run / "config.yaml") in err, err
        assert "delete it to compare the run without it" in err


# ------------------------------------------------------------------ other files read back (issue 27, item 4)

ROW = b'{"epoch": 1, "train_elbo": -100.0, "seconds": 1.0}\n'
READ_BACK = [
    ("metrics-torn-last-line", "metrics.jsonl", ROW + b'{"epoch": 2, "train_el', None),
    ("metrics-a-list", "metrics.jsonl", ROW + b"[1, 2]\n", "metrics.jsonl line 2 is not a JSON object"),
    ("metrics-broken-middle", "metrics.jsonl", b'{"epoch": 1, "tr\n' + ROW, "metrics.jsonl line 1 is not a JSON"),
    ("metrics-not-utf8", "metrics.jsonl", b"\xff\xfe" + ROW, "metrics.jsonl (UnicodeDecodeError)"),
    ("grad-stats-a-number", "grad_stats.jsonl", b"5\n", "grad_stats.jsonl line 1 is not a JSON object"),
    ("eval-string-number", "eval.json", b'{"elbo": "-100.5"}', "eval.json has elbo = '-100.5', not a number"),
    ("eval-bool", "eval.json", b'{"elbo": -100.0, "epochs_trained": true}', "has epochs_trained = True"),
    ("eval-garbage", "eval.json", b"\x00garbage", None),        # unreadable: reported as not evaluated
]


@pytest.mark.parametrize(("name", "content", "fragment"), [c[1:] for c in READ_BACK], ids=[c[0] for c in READ_BACK])
def test_compare_names_a_damaged_file_it_reads_back(tmp_path, cli, name, content, fragment):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train: {epochs: 1}\n")
    (run / "metrics.jsonl").write_bytes(ROW)
    (run / name).write_bytes(content)
    code, out, err = cli("compare", tmp_path / "runs", "--out", tmp_path / "cmp")
    if fragment is None:
        assert code == 0, err
    else:
        assert code == 2 and err.count("\n") == 1 and fragment in err and str(run) in err, err


def test_a_torn_grad_stats_line_does_not_stop_a_resume(tmp_path, capsys):
    """grad_stats.jsonl is appended in place: a crash can leave its last line unfinished; --resume drops it."""
    from hostile_helpers import CONFIG, SMALL

    from vaelab.cli.main import main

    out = tmp_path / "run"
    assert main(["train", CONFIG, "--data", "digits", "--out", str(out), *SMALL, "--set", "train.grad_stats_every=5",
                 "--set", "train.steps_per_epoch=10", "--set", "train.grad_stats_draws=2"]) == 0
    path = out / "grad_stats.jsonl"
    rows = path.read_text().splitlines()
    assert len(rows) == 2
    path.write_text(rows[0] + "\n" + rows[1][: len(rows[1]) // 2])
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0, capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [5, 15, 20]           # the torn step-10 row is gone; epoch 2 appended 15 and 20
