"""User errors end in one message: train.py, predict and convert print ``error: ...``
and exit 2 with no traceback; a bug keeps its traceback. Each error is checked in the process (the tools'
`exit_on_user_error` around the call) and each command once in its own process. Shipped configs run on
1, 2, 4 and 8 devices (evaluation rounds its batch to the devices)."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import QUICK_NARROW, ROOT, cli_args, env_with_devices, make_image_folder, override, tiny_config
from fixtures.make_checkpoints import HERE as FIXTURES

from resnet_jax import convert, errors, parallel, predict
from resnet_jax.evaluate import evaluate_checkpoint
from resnet_jax.restore import read_metadata
from resnet_jax.training.checkpoint import Checkpointer
from resnet_jax.training.loop import train_and_evaluate


def one_message(cmd, expected, devices=1):
    """Runs `cmd`; it must exit 2, its stderr end with one ``error: ...`` message
    holding `expected` (a list of bad files may follow on its own lines), and hold no traceback."""
    out = subprocess.run(cmd, env=env_with_devices(devices), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    message = out.stderr[out.stderr.rindex("error: ") :]
    assert out.stderr.count("error: ") == 1 and expected in message, out.stderr[-2000:]
    return out


def one_line(capsys, run, expected):
    """In the process: `run()` inside the tools' `exit_on_user_error` exits 2 with one ``error: ...`` line on
    stderr holding `expected` (a list of bad files may follow on its own lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        with errors.exit_on_user_error():
            run()
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    message = err[err.rindex("error: ") :]
    assert err.count("error: ") == 1 and expected in message, err[-2000:]
    return err


def quick(folder, **overrides):
    """The quick recipe shrunk to the fixture folder, as `conftest.cli_args` gives it to train.py."""
    c = load_config(QUICK_NARROW)
    c.data.path, c.data.image_size, c.batch_size, c.eval_batch_size, c.eval_flip = str(folder), 16, 16, 16, False
    return override(c, **overrides)


@pytest.fixture(scope="module")
def trained_r20(tmp_path_factory):
    """A cifar_resnet20 workdir trained 3 steps on a fixture folder (on 8 devices)."""
    folder = make_image_folder(tmp_path_factory.mktemp("images"))
    workdir = tmp_path_factory.mktemp("r20")
    train_and_evaluate(tiny_config(folder, num_train_steps=3), str(workdir))
    return folder, str(workdir)


@pytest.mark.slow
def test_train_user_errors_are_one_line(trained_r20, tmp_path, capsys):
    folder, workdir = trained_r20

    def train(config_folder, run_dir, **overrides):
        return lambda: train_and_evaluate(quick(config_folder, **overrides), str(run_dir))

    one_line(capsys, train(folder, tmp_path / "a", model="resnet_nope"), "unknown model 'resnet_nope'")
    one_line(capsys, train(tmp_path / "missing", tmp_path / "b"), "does not exist")
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "train" / "cat" / "notes.txt").write_text("not an image")
    one_line(capsys, train(empty, tmp_path / "c"), "no images")
    bad = tmp_path / "bad_images"
    make_image_folder(bad, train_per_class=2, test_per_class=1)
    jpeg = bad / "train" / "circle" / "broken.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)  # a truncated JPEG
    one_line(capsys, train(bad, tmp_path / "d"), "broken.jpg")
    one_line(capsys, train(folder, tmp_path / "e", batch_size=12), "does not divide over 8 devices")
    one_line(capsys, train(folder, workdir, model="cifar_plain20"), "was trained with model=")
    one_line(capsys, lambda: evaluate_checkpoint(quick(folder), str(tmp_path / "g"), "latest"),
             "holds no checkpoints/ folder")  # fmt: skip
    one_line(capsys, train(folder, tmp_path / "h", init_from=str(tmp_path / "g")), "holds no checkpoints/")
    deeper = {"model": "cifar_resnet56", "model_kwargs.stage_sizes": (9, 9, 9), "init_from": workdir}  # 27 blocks
    one_line(capsys, train(folder, tmp_path / "i", **deeper), "fits this model in too few places")


def test_train_py_prints_a_user_error_as_one_line_in_its_own_process(image_folder, tmp_path):
    one_message(cli_args(image_folder, tmp_path, "--config.model=resnet_nope"), "unknown model 'resnet_nope'")


def test_an_unknown_config_field_is_one_message(image_folder, tmp_path):
    cmd = cli_args(image_folder, tmp_path, "--config.no_such_field=1")
    out = subprocess.run(cmd, env=env_with_devices(1), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "error: the config has no field 'no_such_field' (--config.no_such_field); the fields are those of "
        "resnet_jax/config.py and the config file"
    )


# train.py's flags, defined as it defines them, parsed by `errors.run_app` (no training imports: a second a case).
FLAGS_OF_TRAIN_PY = f"""
import sys
from absl import flags
from ml_collections import config_flags
from resnet_jax.errors import run_app
config_flags.DEFINE_config_file("config", None, "", lock_config=True)
flags.DEFINE_string("workdir", None, "")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "")
flags.mark_flags_as_required(["config", "workdir"])
sys.argv = ["train.py", "--config", {QUICK_NARROW!r}, *sys.argv[1:]]
run_app(lambda argv: print("parsed"), config_file=True)
"""


@pytest.mark.parametrize("args, line", [
    (["--workdir=w", "--config.num_epochs=abc"],
     "error: --config.num_epochs=abc: invalid literal for int() with base 10: 'abc'"),
    (["--config.num_epochs=3"], "error: --workdir is required"),
    (["--workdir=w", "--mode=foo"], "error: --mode=foo: value should be one of <train|eval>"),
    (["--workdir=w", "--config.num_epoch=1"],
     "error: the config has no field 'num_epoch' (--config.num_epoch); did you mean 'num_epochs'? The fields are "
     "those of resnet_jax/config.py and the config file"),
    (["--workdir=w", "--workdr=1"], "error: Unknown command line flag 'workdr'. Did you mean: workdir ?"),
], ids=["type", "required", "enum", "did-you-mean", "unknown-flag"])  # fmt: skip
def test_a_flag_absl_cannot_parse_is_one_line_and_status_2(args, line):
    out = subprocess.run([sys.executable, "-c", FLAGS_OF_TRAIN_PY, *args], env=env_with_devices(1),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (out.returncode, out.stderr, out.stdout) == (2, line + "\n", ""), out.stderr[-3000:]


def test_predict_and_convert_user_errors_are_one_line(trained_r20, tmp_path, capsys):
    folder, workdir = trained_r20
    good = glob.glob(f"{folder}/test/*/*.png")[:2]
    one_line(capsys, lambda: predict.main(["--workdir", str(tmp_path / "nowhere"), *good]),
             "holds no checkpoints/ folder")  # fmt: skip
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    broken, missing = str(tmp_path / "broken.png"), str(tmp_path / "missing.jpg")
    err = one_line(capsys, lambda: predict.main(["--workdir", workdir, good[0], broken, good[1], missing]),
                   "2 of 4 files cannot be read, so nothing was predicted: ")  # every unreadable file, in one line
    assert err.count("\n") == 1 and f"{broken}: not a readable image" in err and f"{missing}: not a readable" in err
    assert good[0] not in err and good[1] not in err and capsys.readouterr().out == ""
    step_999 = ["--workdir", workdir, "--step", "999", *good]
    one_line(capsys, lambda: predict.main(step_999), "no checkpoint of step")
    one_line(capsys, lambda: predict.main(["--workdir", workdir, "--top", "0", *good]), "--top=0: print at least one")
    one_line(capsys, lambda: predict.main(["--workdir", workdir, "--top", "x", *good]),
             "argument --top: invalid int value: 'x'")  # fmt: skip

    def convert_main(*args):
        return lambda: convert.main(["torchvision", "resnet18", *map(str, args)])

    one_line(capsys, convert_main(tmp_path / "none.safetensors", tmp_path / "o1"), "does not exist")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    one_line(capsys, convert_main(tmp_path / "junk.safetensors", tmp_path / "o2"), "not a readable .safetensors")
    safetensors = pytest.importorskip("safetensors.numpy")
    safetensors.save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, str(tmp_path / "part.safetensors"))
    err = one_line(capsys, convert_main(tmp_path / "part.safetensors", tmp_path / "o3"), "does not fit resnet18")
    assert "missing layer1/0/bn1" in err or "missing" in err
    one_line(capsys, lambda: convert.main(["torchvision", "cifar_resnet20", str(tmp_path / "part.safetensors"),
                                           str(tmp_path / "o4")]), "no torchvision counterpart")  # fmt: skip


class _State(dict):
    """A saved state as a dict, with the `.step` that `Checkpointer.save` reads."""

    @property
    def step(self):
        return self["step"]


def test_step_best_before_any_evaluation_is_one_line_naming_the_steps(image_folder, tmp_path, capsys):
    """Checkpoints of steps 3 and 6, neither evaluated (saved by a stop in the middle of an evaluation, or
    by checkpoint_every_steps before the first): "best" is an error naming them, not quietly the latest."""
    workdir = str(tmp_path / "run")
    with open(os.path.join(FIXTURES, "one_seed", "checkpoints", "6", "metadata", "metadata")) as f:
        metadata = json.load(f)
    ckpt = Checkpointer(workdir, async_save=False)
    for step in (3, 6):
        ckpt.save(_State(step=np.asarray(step, np.int32), params={"w": np.ones(3, np.float32)}), metadata)
    ckpt.close()
    message = (f'step "best" needs an evaluated checkpoint, and none of {workdir}/checkpoints holds an evaluation '
               '(its steps: [3, 6]); name one of them, or "latest"')  # fmt: skip
    with pytest.raises(errors.NotFoundError) as raised:
        read_metadata(workdir, "best")
    assert str(raised.value) == message and read_metadata(workdir)["step"] == 6
    good = glob.glob(f"{image_folder}/test/*/*.png")[:1]
    err = one_line(capsys, lambda: predict.main(["--workdir", workdir, "--step", "best", *good]), message)
    assert err == f"error: {message}\n"


def test_predict_and_convert_print_a_user_error_as_one_line_in_their_own_processes(image_folder, tmp_path):
    image = glob.glob(f"{image_folder}/test/*/*.png")[0]
    predict_cmd = [sys.executable, "-m", "resnet_jax.predict", "--workdir", str(tmp_path / "nowhere"), image]
    one_message(predict_cmd, "holds no checkpoints/ folder")
    convert_cmd = [sys.executable, "-m", "resnet_jax.convert", "torchvision", "resnet18",
                   str(tmp_path / "none.safetensors"), str(tmp_path / "o1")]  # fmt: skip
    one_message(convert_cmd, "does not exist")


def test_a_bug_keeps_its_traceback(capsys):
    with pytest.raises(SystemExit) as stop:
        with errors.exit_on_user_error():
            raise errors.ConfigError("batch_size=12 does not divide")
    assert stop.value.code == 2 and capsys.readouterr().err == "error: batch_size=12 does not divide\n"
    with pytest.raises(KeyError):
        with errors.exit_on_user_error():
            raise KeyError("an internal bug")


def load_config(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))), ids=os.path.basename)
def test_every_shipped_config_fits_1_2_4_and_8_devices(path, capsys):
    config = load_config(path)
    for n in (1, 2, 4, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        parallel.check_batch_size(config.batch_size, mesh)  # the training batch divides as it is
        fitted = parallel.fit_eval_batch_size(config.eval_batch_size, mesh)
        assert fitted % n == 0 and config.eval_batch_size <= fitted < config.eval_batch_size + n
    if config.eval_batch_size % 8:
        assert f"evaluating in batches of {-(-config.eval_batch_size // 8) * 8}" in capsys.readouterr().out


def test_eval_mode_of_the_quick_recipe_runs_on_8_devices(trained_r20):
    folder, workdir = trained_r20
    cmd = cli_args(folder, workdir, "--mode=eval")
    cmd.remove("--config.eval_batch_size=16")  # the recipe's 500, which 8 devices do not divide
    out = subprocess.run(cmd, env=env_with_devices(8), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "eval_batch_size=500 does not divide over 8 devices: evaluating in batches of 504" in out.stdout
    assert '"count": 15' in out.stdout  # every test image once
