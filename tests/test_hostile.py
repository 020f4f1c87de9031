"""Hostile input, table-driven: every case exits 2 with exactly one stderr line "vaelab: error: ...", no traceback,
every file and folder in the case's workspace as it was (sha256 of each file), and no marker file written by a
pickle or YAML payload.

Cases run in-process through `vaelab.cli.main.main`, except the optimizer-shape cases (run in a subprocess: a regression
there corrupts the heap rather than raising). Read-only directories: a 0555 directory, and the command in its own
process; root ignores permission bits, so as root that process runs through util-linux `setpriv` without
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (still uid 0, so it reads the tree it runs from wherever that is); as
another user chmod alone does it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_cases_cli import CASES as CLI_CASES
from hostile_cases_files import CASES as FILE_CASES
from hostile_helpers import (
    ABSURD,
    CONFIG,
    MARKER,
    SHORT,
    SMALL,
    Case,
    Payload,
    cache_members,
    cache_pickle,
    cmd,
    config_file,
    config_value,
    drop_key,
    extra_group,
    in_ws,
    invoke,
    meta_config,
    mnist_cache,
    mutate_state,
    mutate_weights,
    nan_moment,
    npy_renamed,
    npz_data,
    old_format_shrunk,
    on_run,
    partial_epoch,
    pickle_renamed,
    pickled_member,
    poison_weight,
    reshape_weight,
    savez,
    set_key,
    setting,
    sgd_key,
    shrink_moments,
    snapshot,
    stranded,
    string_lr,
    torchrun,
    train_new,
    two_optimizers,
    write,
    zip_members,
)

from vaelab.cli.main import main

LAUGHS = [b"a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    b"%c: &%c [%s]" % (c, c, b", ".join([b"*%c" % p] * 9)) for p, c in zip(b"abcdefgh", b"bcdefghi", strict=True)]
BOMB = b"literature:\n" + b"".join(b"  " + line + b"\n" for line in LAUGHS)     # 9^9 values once expanded
BOMB_FLOW = b"[" + b", ".join(line.split(b": ", 1)[1] for line in LAUGHS) + b"]"

# --------------------------------------------------------------------------------------------------- the table

CONFIG_CASES = [
    Case("latent-dim-0", setting("model.latent_dim=0"), "model.latent_dim = 0 must be an integer in 1..65536"),
    Case("latent-dim-negative", setting("model.latent_dim=-3"), "model.latent_dim = -3"),
    Case("latent-dim-absurd", setting("model.latent_dim=100000000"), "model.latent_dim = 100000000"),
    Case("hidden-zero", setting("model.hidden=[16, 0]"), "model.hidden[1] = 0"),
    Case("hidden-negative", setting("model.hidden=[-1]"), "model.hidden[0] = -1"),
    Case("hidden-float", setting("model.hidden=[1.5]"), "is not a int"),
    Case("hidden-not-list", setting("model.hidden=5"), "model.hidden = 5"),
    Case("batch-size-0", setting("train.batch_size=0"), "train.batch_size = 0 must be an integer >= 1"),
    Case("epochs-0", setting("train.epochs=0"), "train.epochs = 0"),
    Case("epochs-negative", setting("train.epochs=-2"), "train.epochs = -2"),
    Case("lr-zero", setting("train.lr=0"), "train.lr = 0.0 must be a finite number > 0"),
    Case("lr-negative", setting("train.lr=-1e-3"), "train.lr = -0.001"),
    Case("lr-nan", setting("train.lr=.nan"), "train.lr = nan"),
    Case("lr-inf", setting("train.lr=.inf"), "train.lr = inf"),
    Case("lr-string", setting("train.lr=fast"), "train.lr = 'fast' is not a float"),
    Case("adam-eps-zero", setting("train.adam_eps=0"), "train.adam_eps = 0.0"),
    Case("adam-eps-nan", setting("train.adam_eps=.nan"), "train.adam_eps = nan"),
    Case("grad-clip-negative", setting("train.grad_clip=-1"), "train.grad_clip = -1.0 must be a finite number > 0"),
    Case("grad-clip-zero", setting("train.grad_clip=0"), "or null for no clipping"),
    Case("grad-clip-inf", setting("train.grad_clip=.inf"), "train.grad_clip = inf"),
    Case("steps-per-epoch-0", setting("train.steps_per_epoch=0"), "train.steps_per_epoch = 0"),
    Case("seed-negative", setting("train.seed=-1"), "train.seed = -1 must be an integer in 0..9223372036854775807"),
    Case("seed-too-large", setting("train.seed=9223372036854775808"), "train.seed = 9223372036854775808"),
    Case("eval-seed-negative", setting("data.eval_seed=-5"), "data.eval_seed = -5"),
    Case("eval-batch-0", setting("eval.batch_size=0"), "eval.batch_size = 0"),
    Case("eval-iw-negative", setting("eval.iw_samples=-1"), "eval.iw_samples = -1"),
    Case("decoder-bias-unknown", setting("model.decoder_bias=mean"), "did you mean 'data_mean'"),
    Case("latent-kwarg-typo", train_new("--set", "model.latent=bernoulli", "--set", "estimator.name=disarm",
                                        "--set", "model.latent_kwargs={prior_prob: 0.3}"),
         "did you mean model.latent_kwargs.prior_probs"),
    Case("latent-kwarg-type", train_new("--set", "model.latent=bernoulli", "--set", "estimator.name=disarm",
                                        "--set", "model.latent_kwargs={learn_prior: 3}"),
         "model.latent_kwargs.learn_prior = 3 is not a bool"),
    Case("latent-kwarg-for-gaussian", setting("model.latent_kwargs={steps: 2}"), "valid keys for GaussianLatent"),
    Case("estimator-kwarg-typo", train_new("--set", "estimator.name=iwae", "--set", "estimator.kwargs={num_sample: 3}"),
         "did you mean estimator.kwargs.num_samples"),
    Case("estimator-kwarg-size-0", train_new("--set", "model.latent=bernoulli", "--set", "estimator.name=nvil",
                                             "--set", "estimator.kwargs={hidden: 0}"), "estimator.kwargs.hidden = 0"),
    Case("device-mps", setting("train.device=mps"), "train.device = 'mps' is not a device"),
    Case("device-meta", setting("train.device=meta"), "train.device = 'meta'"),
    Case("device-cuda-garbage", setting("train.device=cuda:x"), "train.device = 'cuda:x'"),
    Case("binarize-typo", setting("data.binarize=dynamc"), "did you mean 'dynamic'"),
    Case("activation-unknown", setting("model.activation=relu6"), "model.activation = 'relu6'"),
    Case("compile-mode-unknown", setting("train.compile_mode=fast"), "not a torch.compile mode"),
    Case("autocast-fp16", setting("train.autocast=fp16"), "train.autocast = 'fp16'"),
    Case("backward-unknown", setting("train.backward=fast"), "train.backward = 'fast' is not a way to differentiate"),
    Case("backward-manual-without-one", train_new("--set", "train.backward=manual", "--estimator", "iwae"),
         "train.backward = manual: estimator IWAE has no hand-written backward"),
    Case("name-escapes", setting("name=../escape"), "must be a plain name"),
    Case("kl-weight-negative", setting("train.kl_weight={kind: linear, warmup_steps: -5}"),
         "= -5 must be a finite number > 0"),
    Case("param-group-negative-lr", setting("train.param_groups={decoder: {lr: -1}}"), "must be a finite number > 0"),
    Case("lr-schedule-gamma", setting("train.lr_schedule={kind: exponential, gamma: 2}"),
         "= 2 must be a finite number in (0, 1]"),
    Case("nets-typo", setting("model.nets=mlpp"), "did you mean 'mlp'"),
    Case("set-value-not-yaml", setting("train.lr=[1e-3"), "the value is not valid YAML"),
    Case("set-value-unclosed-map", setting("train.kl_weight={kind: "), "the value is not valid YAML"),
    Case("set-not-key-value", setting("train.lr"), "is not key=value"),
    Case("config-root-list", config_file(b"- a\n- b\n"), "must hold a mapping"),
    Case("config-root-scalar", config_file(b"hello\n"), "not a str"),
    Case("config-not-utf8", config_file(b"name: caf\xe9\n"), "is not UTF-8 text (byte 0xe9"),
    Case("config-python-tag", config_file(
        lambda ws: f"name: !!python/object/apply:builtins.open ['{ws / MARKER}', 'w']\n".encode()),
         "never !!python tags"),
    Case("config-broken-yaml", config_file(b"model: [unclosed\n"), "is not valid YAML"),
    Case("config-unknown-key", config_file(b"trian: {epochs: 1}\n"), "did you mean train"),
    Case("config-alias-bomb", config_file(BOMB), "once its aliases (*name) are expanded: an alias bomb?"),
    Case("config-alias-bomb-in-description", config_file(b"description: " + BOMB_FLOW), "an alias bomb?"),
    Case("config-recursive-alias", config_file(b"literature: &a {x: *a}\n"), "a recursive structure"),
    Case("config-duplicate-key", config_file(b"train: {epochs: 1, epochs: 2}\n"), "the key 'epochs' appears twice"),
    Case("config-duplicate-section", config_file(b"train: {epochs: 1}\ntrain: {lr: 1}\n"),
         "the key 'train' appears twice in one mapping (keep one) at line 2"),
    Case("config-deep-list", config_file(b"description: " + b"[" * 20000 + b"]" * 20000), "nested more than 64"),
    Case("set-alias-bomb", setting("description=" + BOMB_FLOW.decode()), "an alias bomb?"),
    Case("set-duplicate-key", setting("train.kl_weight={kind: linear, kind: cyclic}"), "the key 'kind' appears twice"),
    Case("set-warmup-exponent", setting("train.kl_weight={kind: linear, warmup_steps: 5e2}"), "YAML reads 5e2 as text"),
]

DATA_CASES = [
    Case("npz-zero-width", npz_data(savez(x_train=np.zeros((20, 0), np.float32))), "with at least one pixel"),
    Case("npz-zero-width-3d", npz_data(savez(x_train=np.zeros((20, 4, 0), np.float32))), "with at least one pixel"),
    Case("npz-pickle-member", npz_data(pickled_member), "holds Python objects (a pickle), refused unread"),
    Case("npy-renamed-npz", npz_data(npy_renamed), "a single .npy array renamed .npz"),
    Case("pickle-renamed-npz", npz_data(pickle_renamed), "not a zip archive of arrays"),
    Case("npz-absurd-header", npz_data(zip_members({"x_train.npy": ABSURD})), "claims shape (1000000000000, 16)"),
    Case("npz-short-member", npz_data(zip_members({"x_train.npy": SHORT})), "the file is damaged"),
    Case("npz-member-not-array", npz_data(zip_members({"x_train": b"raw bytes"})), "is not a numpy array"),
    Case("npz-empty-file", npz_data(lambda p, ws: p.write_bytes(b"")), "not a zip archive"),
    Case("npz-text-file", npz_data(lambda p, ws: p.write_text("hello")), "not a zip archive"),
    Case("npz-structured-dtype", npz_data(savez(x_train=np.zeros(20, dtype=[("a", "f4"), ("b", "f4")]))),
         "has shape (20,)"),
    Case("npz-complex-images", npz_data(savez(x_train=np.zeros((20, 16), np.complex64))), "has dtype complex64"),
    Case("npz-labels-short", npz_data(savez(y_train=np.zeros(3, np.int64))), "labels must be 20 integers"),
    Case("npz-values-out-of-range", npz_data(savez(x_train=np.full((20, 16), 3.0, np.float32))), "scale images"),
    Case("npz-missing-key", npz_data(lambda p, ws: np.savez(p, x_train=np.zeros((3, 4)))), "required x_train"),
    Case("cache-pickle-member", mnist_cache(cache_pickle), "holds Python objects",
         env={"VAELAB_DATA": "WS/cache"}),
    Case("cache-member-not-array", mnist_cache(cache_members(x_valid=b"raw")), "is not a numpy array",
         env={"VAELAB_DATA": "WS/cache"}),
    Case("cache-absurd-header", mnist_cache(cache_members(x_test=ABSURD)), "claims shape",
         env={"VAELAB_DATA": "WS/cache"}),
    Case("cache-not-zip", mnist_cache(lambda p, ws: p.write_bytes(b"junk")), "delete it and run again",
         env={"VAELAB_DATA": "WS/cache"}),
]

RESUME = ("train", "--resume", "RUN", "--epochs", "2", "--quiet")
EVALUATE = ("evaluate", "RUN", "--iw-samples", "5", "--quiet", "--device", "cpu")

CHECKPOINT_CASES = [
    Case("optim-shapes", on_run(mutate_state(shrink_moments), *RESUME), "has exp_avg of shape (3,)",
         subprocess=True),
    Case("optim-shapes-old-format", on_run(mutate_state(old_format_shrunk), *RESUME), "exp_avg of shape (3,)",
         subprocess=True),
    Case("optim-extra-group", on_run(mutate_state(extra_group), *RESUME), "param groups"),
    Case("optim-sgd-state-in-adam", on_run(mutate_state(sgd_key), *RESUME), "optimizer does not keep"),
    Case("optim-nan-moment", on_run(mutate_state(nan_moment), *RESUME), "NaN or infinite values in exp_avg"),
    Case("optim-two-optimizers", on_run(mutate_state(two_optimizers), *RESUME), "does not match train.param_groups"),
    Case("optim-string-lr", on_run(mutate_state(string_lr), *RESUME), "param_groups lr = 'fast'"),
    Case("optim-not-a-dict", on_run(mutate_state(set_key("optim", [1, 2])), *RESUME), "'optim' of type list"),
    Case("state-pickle-payload", on_run(mutate_state(lambda s, ws: s.__setitem__("x", Payload(ws / MARKER))),
                                        *EVALUATE), "holds objects other than tensors"),
    Case("state-missing-epoch", on_run(mutate_state(drop_key("epoch")), *EVALUATE), "lacks 'epoch'"),
    Case("state-epoch-string", on_run(mutate_state(set_key("epoch", "1")), *EVALUATE), "'epoch' of type str"),
    Case("state-short-torch-rng", on_run(mutate_state(set_key("torch_rng", torch.zeros(10, dtype=torch.uint8))),
                                         *RESUME), "torch_rng that is not a random-generator state"),
    Case("state-float-data-rng", on_run(mutate_state(set_key("data_rng", torch.zeros(5056))), *RESUME),
         "data_rng that is not a random-generator state"),
    Case("state-history-not-list", on_run(mutate_state(set_key("history", {"a": 1})), *EVALUATE),
         "'history' of type dict"),
    Case("state-history-length", on_run(mutate_state(set_key("epoch", 5)), *EVALUATE), "is inconsistent"),
    Case("state-is-tensor", on_run(mutate_state(lambda s, ws: torch.zeros(3)), *EVALUATE), "holds a Tensor"),
    Case("state-garbage", on_run(write("checkpoint/state.pt", b"\x00garbage" * 20), *EVALUATE), "is damaged"),
    Case("state-missing", on_run(write("checkpoint/state.pt", b"<delete>"), *EVALUATE), "lacks state.pt"),
    Case("state-bad-partial", on_run(mutate_state(set_key("partial", {"step": -1})), *RESUME), "lacks partial"),
    Case("meta-config-broken-yaml", on_run(mutate_weights(meta_config("model: [unclosed")), *EVALUATE),
         "is not valid YAML"),
    Case("meta-config-python-tag", on_run(mutate_weights(meta_config(
        "name: !!python/object/apply:os.system ['touch PAYLOAD_RAN']")), *EVALUATE), "never !!python tags"),
    Case("meta-config-missing", on_run(mutate_weights(meta_config(None)), *EVALUATE), "carries no config"),
    Case("meta-config-out-of-range", on_run(mutate_weights(config_value("batch_size: 128", "batch_size: 0")),
                                            *EVALUATE), "train.batch_size = 0"),
    Case("meta-config-root-list", on_run(mutate_weights(meta_config("- 1\n- 2\n")), *EVALUATE),
         "must hold a mapping"),
    Case("meta-epoch-mismatch", on_run(mutate_weights(lambda t, m: m.__setitem__("epoch", "7")), *EVALUATE),
         "the weights beside it from epoch 7"),
    Case("weights-nan", on_run(mutate_weights(poison_weight(float("nan"))), *EVALUATE), "NaN or infinite values"),
    Case("weights-inf", on_run(mutate_weights(poison_weight(float("inf"))), *RESUME), "NaN or infinite values"),
    Case("weights-wrong-shape", on_run(mutate_weights(reshape_weight), *EVALUATE), "does not match its config"),
    Case("weights-foreign-format", on_run(mutate_weights(lambda t, m: m.__setitem__("format", "x")), *EVALUATE),
         "not a vaelab checkpoint"),
    Case("weights-garbage", on_run(write("checkpoint/model.safetensors", b"\x00garbage" * 10), *EVALUATE),
         "is damaged"),
]

ARGUMENT_CASES = [
    Case("sample-n-0", cmd("sample", "RUN", "--n", "0"), "--n 0: give a number from 1 to 10,000"),
    Case("sample-n-negative", cmd("sample", "RUN", "--n", "-5"), "--n -5"),
    Case("sample-n-absurd", cmd("sample", "RUN", "--n", "1000000000"), "(the limit of one grid)"),
    Case("sample-n-not-int", cmd("sample", "RUN", "--n", "abc"), "invalid int value: 'abc'"),
    Case("sample-seed-negative", cmd("sample", "RUN", "--seed", "-1"), "--seed -1"),
    Case("evaluate-iw-negative", cmd("evaluate", "RUN", "--iw-samples", "-1"), "--iw-samples -1"),
    Case("evaluate-iw-absurd", cmd("evaluate", "RUN", "--iw-samples", "1000000000000"), "from 0 to 1,000,000"),
    Case("evaluate-unknown-flag", cmd("evaluate", "RUN", "--bogus"), "unrecognized arguments: --bogus"),
    Case("gradvar-draws-0", cmd("gradvar", "RUN", "--draws", "0"), "--draws 0"),
    Case("gradvar-draws-absurd", cmd("gradvar", "RUN", "--draws", "1000000000"), "of draws (each one estimator call)"),
    Case("gradvar-batch-0", cmd("gradvar", "RUN", "--batch", "0"), "--batch 0"),
    Case("gradvar-batch-negative", cmd("gradvar", "RUN", "--batch", "-4"), "--batch -4"),
    Case("gradvar-batch-absurd", cmd("gradvar", "RUN", "--batch", "10000000"), "--batch 10000000"),
    Case("gradvar-warmup-negative", cmd("gradvar", "RUN", "--warmup", "-1"), "--warmup -1"),
    Case("sample-out-bad-extension", cmd("sample", "RUN", "--out", "WS/grid.bmpx"), "unknown image extension"),
    Case("sample-out-no-extension", cmd("sample", "RUN", "--out", "WS/grid"), "unknown image extension '(none)'"),
    Case("sample-out-directory", cmd("sample", "RUN", "--out", "WS/"), "is a directory"),
    Case("evaluate-device-mps", cmd("evaluate", "RUN", "--device", "mps"), "--device = 'mps' is not a device"),
    Case("sample-device-meta", cmd("sample", "RUN", "--device", "meta"), "--device = 'meta'"),
    Case("evaluate-device-cuda-garbage", cmd("evaluate", "RUN", "--device", "cuda:abc"), "'cuda:abc'"),
    Case("train-device-mps", train_new("--device", "mps"), "train.device = 'mps'"),
    Case("classifier-device-meta", cmd("classifier", "train", "--device", "meta", "--out", "WS/c.safetensors"),
         "--device = 'meta'"),
    Case("classifier-out-extension", cmd("classifier", "train", "--out", "WS/c.pt"), "ending in .safetensors"),
    Case("classifier-epochs-0", cmd("classifier", "train", "--epochs", "0", "--out", "WS/c.safetensors"),
         "--epochs 0"),
    Case("quality-n-1", cmd("quality", "RUN", "--n", "1"), "--n 1: give a number from 4"),
    Case("quality-k-0", cmd("quality", "RUN", "--k", "0"), "--k 0"),
    Case("quality-n-absurd", cmd("quality", "RUN", "--n", "100000000"), "of samples held in memory"),
    Case("fit-density-components-absurd", cmd("fit-density", "RUN", "--components", "100000", "--device", "cpu"),
         "more components than the"),
    Case("fit-density-components-0", cmd("fit-density", "RUN", "--components", "0"), "--components '0'"),
    Case("train-epochs-0", train_new("--epochs", "0"), "train.epochs = 0"),
    Case("resume-epochs-0", cmd("train", "--resume", "RUN", "--epochs", "0"), "--epochs = 0"),
    Case("resume-with-overrides", cmd("train", "--resume", "RUN", "--set", "train.lr=1"), "only --epochs may change"),
    Case("resume-below-stopped-epoch", on_run(mutate_state(partial_epoch), "train", "--resume", "RUN", "--epochs",
                                              "1"), "stopped inside epoch 2; give --epochs 2 or more"),
    Case("reproduce-epochs-0", cmd("reproduce", "--out", "WS/rep", "--epochs", "0"), "--epochs 0"),
    Case("reproduce-quality-0", cmd("reproduce", "--out", "WS/rep", "--quality-samples", "0"), "--quality-samples 0"),
    Case("reproduce-iw-negative", cmd("reproduce", "--out", "WS/rep", "--iw-samples", "-3"), "--iw-samples -3"),
    Case("torchrun-no-rank", train_new(), "RANK is not set", env=torchrun(RANK=None)),
    Case("torchrun-world-not-int", train_new(), "WORLD_SIZE='two' is not an integer", env=torchrun(WORLD_SIZE="two")),
    Case("torchrun-world-0", train_new(), "WORLD_SIZE=0 must be >= 1", env=torchrun(WORLD_SIZE="0")),
    Case("torchrun-rank-not-int", train_new(), "RANK='x' is not an integer", env=torchrun(RANK="x")),
    Case("torchrun-rank-out-of-range", train_new(), "RANK=5 must be in 0..1", env=torchrun(RANK="5")),
    Case("torchrun-local-rank-negative", train_new(), "LOCAL_RANK=-1", env=torchrun(LOCAL_RANK="-1")),
    Case("torchrun-no-master-addr", train_new(), "MASTER_ADDR is not set", env=torchrun(MASTER_ADDR=None)),
    Case("torchrun-master-port-not-int", train_new(), "MASTER_PORT='http'", env=torchrun(MASTER_PORT="http")),
    Case("torchrun-evaluate-no-rank", cmd(*EVALUATE), "RANK is not set", env=torchrun(RANK=None)),
]

FILESYSTEM_CASES = [
    Case("train-out-is-file", in_ws("f", b"x", "train", CONFIG, "--data", "digits", "--out", "WS/f", *SMALL),
         "is a file: choose a directory path"),
    Case("train-out-under-file", in_ws("f", b"x", "train", CONFIG, "--data", "digits", "--out", "WS/f/run", *SMALL),
         "which is a file"),
    Case("resume-a-file", in_ws("f", b"x", "train", "--resume", "WS/f"), "is a file"),
    Case("evaluate-a-file", in_ws("f", b"x", "evaluate", "WS/f"), "is a file, not a run directory"),
    Case("sample-out-under-file", in_ws("f", b"x", "sample", "RUN", "--out", "WS/f/grid.png"), "which is a file"),
    Case("gradvar-out-is-file", in_ws("f", b"x", "gradvar", "RUN", "--out", "WS/f"), "is a file"),
    Case("reproduce-out-is-file", in_ws("f", b"x", "reproduce", "--out", "WS/f"), "is a file"),
    Case("fit-density-on-file", in_ws("f", b"x", "fit-density", "WS/f"), "is a file"),
    Case("readonly-train-new", cmd("train", CONFIG, "--data", "digits", "--out", "WS/ro/run", *SMALL),
         "cannot write to", readonly="ro"),
    Case("readonly-resume", cmd(*RESUME), "cannot write to", readonly="run"),
    Case("readonly-evaluate", cmd(*EVALUATE), "cannot write to", readonly="run"),
    Case("readonly-sample", cmd("sample", "RUN", "--n", "4", "--device", "cpu"), "cannot write to", readonly="run"),
    Case("readonly-sample-out", cmd("sample", "RUN", "--out", "WS/ro/g.png"), "cannot write to", readonly="ro"),
    Case("readonly-fit-density", cmd("fit-density", "RUN", "--device", "cpu"), "cannot write to", readonly="run"),
    Case("readonly-quality", cmd("quality", "RUN", "--n", "10", "--device", "cpu"), "cannot write to",
         readonly="run"),
    Case("readonly-gradvar-out", cmd("gradvar", "RUN", "--out", "WS/ro/g", "--draws", "2"), "cannot write to",
         readonly="ro"),
]

LIFECYCLE_CASES = [
    Case("train-over-a-run", cmd("train", CONFIG, "--data", "digits", "--out", "RUN", *SMALL), "already holds a run"),
    Case("second-writer-resume", cmd(*RESUME), "is being written by another vaelab process", lock=True),
    Case("second-writer-restart", stranded, "is being written by another vaelab process", lock=True),
    Case("resume-empty-dir", cmd("train", "--resume", "WS/nothing"), "no run there to resume"),
    Case("evaluate-no-checkpoint", cmd("evaluate", "WS/nothing"), "no checkpoint in"),
]

CASES = (CONFIG_CASES + DATA_CASES + CHECKPOINT_CASES + ARGUMENT_CASES + FILESYSTEM_CASES + LIFECYCLE_CASES
         + CLI_CASES + FILE_CASES)


# ------------------------------------------------------------------------------------------------- the runner


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", CONFIG, "--data", "digits", "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture
def workspace() -> Path:
    """A fresh folder for one case."""
    path = Path(tempfile.mkdtemp(prefix="vaelab-hostile-"))
    path.chmod(0o755)
    yield path
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(path)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_in_one_line_and_damages_nothing(case, trained_run, workspace, capsys,
                                                                  monkeypatch):
    ws, run = workspace, workspace / "run"
    shutil.copytree(trained_run, run)
    for key, value in case.env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value.replace("WS/", f"{ws}/"))
    argv = case.make(ws, run)
    if case.readonly:
        (ws / case.readonly).mkdir(exist_ok=True)
    before = snapshot(ws)
    capsys.readouterr()
    code, err = invoke(case, argv, ws, run, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("vaelab: error: ") and "Traceback" not in err, err
    assert case.expect in lines[0], lines[0]
    assert snapshot(ws) == before
    assert not (ws / MARKER).exists() and not Path(MARKER).exists()


def test_the_table_is_large_and_covers_every_group():
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)
    assert all(len(group) >= 5 for group in (CONFIG_CASES, DATA_CASES, CHECKPOINT_CASES, ARGUMENT_CASES,
                                             FILESYSTEM_CASES, LIFECYCLE_CASES))


def test_an_array_larger_than_half_the_memory_is_refused_before_it_is_read(workspace, cli, monkeypatch):
    """The size check uses the header and the zip directory only: with 'memory' of 1 KiB, a 1.3 KiB member is
    refused although its bytes are all there."""
    monkeypatch.setattr("vaelab.data.npz._memory_bytes", lambda: 1024)
    np.savez(workspace / "d.npz", **{k: v for k, v in zip(("x_train", "y_train", "x_test", "y_test"), (
        np.zeros((20, 16), np.float32), np.zeros(20, np.int64), np.zeros((5, 16), np.float32),
        np.zeros(5, np.int64)), strict=True)})
    code, _, err = cli("train", CONFIG, "--data", workspace / "d.npz", "--out", workspace / "new", *SMALL)
    assert code == 2 and "more than half this machine's memory" in err and not (workspace / "new").exists()


def test_batch_smaller_than_the_processes_of_a_torchrun_job_is_refused(tmp_path):
    """Checked once the job's size is known, before data, model or files (a fake 4-process context)."""
    from conftest import tiny_config

    from vaelab.core.errors import VaelabError
    from vaelab.runtime.distributed import Context
    from vaelab.training.trainer import _train

    with pytest.raises(VaelabError, match="train.batch_size = 2 is smaller than the 4 processes"):
        _train(tiny_config("train.batch_size=2"), tmp_path / "run", Context(0, 4, torch.device("cpu")), None,
               {"epoch": 0, "history": []}, True, lambda: None)
    assert not (tmp_path / "run").exists()
