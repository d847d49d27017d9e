"""README.md and docs/*.md run as written.

Every fenced block of the pages is read here, in the order a reader meets it:

- A ```python block runs: the blocks of one page in turn, in one namespace (a
  page builds on its earlier blocks), in a folder that holds what the pages'
  commands would have made by then: ``runs/quick`` (the README's first run,
  here a copy of the trained fixture run, tests/fixtures/ckpt_860d72c) and the
  images ``cat.jpg`` and ``dog.png`` of its predict command.
- A ```bash block parses (``bash -n``: a ``<placeholder>`` does not), and each
  ``python`` command in it names a file, module, flag and config field that
  exist; a ``train.py`` command's config, with its ``--config.*`` overrides,
  passes the trainer's config check. The inline ``python ...`` commands of the
  prose are held to the same, bar parsing.
- A workdir a command reads (predict, export, ``--mode=eval``, plot,
  ``init_from``, ``restore(...)``) is one that a command earlier on the same page
  writes (train.py, reproduce, convert), so no page relies on a name it never
  defines.
- A block that needs what a fresh checkout and the README's install do not
  give (a data folder, a GPU, hours) says so in the line before it:
  ``<!-- requires: <what, and why> -->``. A marked python block is compiled,
  not run; a bash block names such a thing when it names a path outside the
  checkout (``/...``, ``~``, ``../``).

Beside the blocks: every file of the checkout, ``resnet_jax`` module or name,
and config field a page names exists, and the README's one-command install
holds the extra of every config's input pipeline.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import class_image
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(f"docs/{p}" for p in os.listdir(os.path.join(ROOT, "docs")) if p.endswith(".md"))
FIXTURE_RUN = os.path.join(ROOT, "tests", "fixtures", "ckpt_860d72c", "one_seed")
REQUIRES = re.compile(r"^<!-- requires: (.+?) -->$")
OUTSIDE = re.compile(r"(^|[=\s])(/|~|\.\./)")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page: its language, first line (1-based) and text, and
    the ``requires:`` marker on the line before it (None: it needs nothing beyond the install)."""

    page: str
    line: int
    lang: str
    text: str
    requires: str | None


@functools.cache
def blocks(page: str) -> tuple[Block, ...]:
    """Every fenced block of `page` (a path relative to the checkout), in order."""
    lines = open(os.path.join(ROOT, page)).read().splitlines()
    found, i, before = [], 0, ""
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            lang, start = line[3:].strip(), i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
            marker = REQUIRES.match(before.strip())
            found.append(Block(page, start + 1, lang, "\n".join(lines[start:end]) + "\n",
                               marker.group(1) if marker else None))  # fmt: skip
            i, before = end + 1, ""
            continue
        if line.strip():
            before = line
        i += 1
    return tuple(found)


def commands(text: str) -> list[list[str]]:
    """The simple commands of a shell text (continuations joined, comments dropped,
    split at ``&&``, ``||``, ``;`` and ``|``), each as its words."""
    out, current = [], []
    for line in text.replace("\\\n", " ").splitlines():
        for w in shlex.split(line, comments=True) + [";"]:
            if w in ("&&", "||", ";", "|"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(w)
    return out


def inline_commands(page: str) -> list[str]:
    """The ``python ...`` commands written inline in `page`'s prose (outside its fenced
    blocks) or as an indented block."""
    text = open(os.path.join(ROOT, page)).read()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`(python [^`]+)`", prose)
    spans += [m.strip() for m in re.findall(r"^    (python .+)$", prose, flags=re.M)]
    return spans


def python_commands(words: list[str]) -> list[str] | None:
    """`words` from its ``python`` on (after environment assignments such as
    ``XLA_FLAGS=...``), or None where the command is not a Python one."""
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if words and words[0] in ("python", "python3"):
        return words
    return None


def source_of(words: list[str]) -> tuple[list[str], list[str]]:
    """The files that define a ``python ...`` command's flags, and its arguments."""
    if words[1] == "-m":
        spec = importlib.util.find_spec(words[2])
        assert spec is not None and spec.origin, f"no module {words[2]}"
        if spec.submodule_search_locations:  # a package: its __main__ and the modules beside it
            folder = spec.submodule_search_locations[0]
            return [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py")], words[3:]
        return [spec.origin], words[3:]
    path = os.path.join(ROOT, words[1])
    assert os.path.isfile(path), f"{words[1]} does not exist"
    return [path], words[2:]


def flag_names(args: list[str]) -> list[str]:
    """The ``--name`` flags among `args`, without their values (``--config.*`` left out)."""
    names = []
    for a in args:
        a = a.strip("[]")
        if a.startswith("--") and not a.startswith("--config."):
            names.append(a[2:].split("=")[0])
    return names


def defines(sources: list[str], name: str) -> bool:
    """Whether one of `sources` defines flag `name` (argparse's ``"--name"``, absl's ``DEFINE_*("name"``)."""
    text = "".join(open(s).read() for s in sources)
    return bool(re.search(rf"""["']--{re.escape(name)}["']|DEFINE_\w+\(\s*["']{re.escape(name)}["']""", text))


def check_config(words: list[str]) -> None:
    """A train.py or reproduce command's ``--config`` file and ``--config.*`` overrides
    parse as the command parses them; a train.py config then passes `config_check.check`."""
    from absl import flags
    from ml_collections import config_flags

    from resnet_jax.config import default_config
    from resnet_jax.training import config_check

    argv = ["prog"] + [w for w in words if w.startswith("--config.")]
    if "--config" in words:  # the file, as train.py reads it
        argv[1:1] = ["--config", os.path.join(ROOT, words[words.index("--config") + 1])]
    values = flags.FlagValues()
    if "train.py" in words[1]:
        config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True, sys_argv=argv)
    else:
        config_flags.DEFINE_config_dict("config", default_config(), flag_values=values, sys_argv=argv)
    values(argv)
    if "train.py" in words[1]:
        config_check.check(values.config)


def check_command(words: list[str], where: str) -> None:
    """`words` (a ``python ...`` command) names an existing file or module, flags it defines
    and, for train.py and reproduce, config fields that parse; ``python -c`` code compiles."""
    if words[1] == "-c":
        compile(words[2], where, "exec")
        return
    try:
        sources, args = source_of(words)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e}") from None
    for name in flag_names(args):
        assert defines(sources, name), f"{where}: {' '.join(words[:3])} has no flag --{name}"
    for a in args:
        if a.endswith(".py") and "/" in a and not a.startswith("--"):
            assert os.path.isfile(os.path.join(ROOT, a.split("=")[-1])), f"{where}: {a} does not exist"
    if words[1] == "train.py" or words[1:3] == ["-m", "resnet_jax.reproduce"]:
        try:
            check_config(words)
        except Exception as e:  # noqa: BLE001 - the parser's or the check's own message
            raise AssertionError(f"{where}: {' '.join(words)}: {type(e).__name__}: {e}") from None


def workdirs(words: list[str]) -> tuple[list[str], list[str]]:
    """The workdirs a ``python ...`` command writes and those it reads."""

    def value(flag: str) -> str | None:
        for i, w in enumerate(words):
            if w == flag and i + 1 < len(words):
                return words[i + 1]
            if w.startswith(flag + "="):
                return w.split("=", 1)[1]
        return None

    writes, reads = [], []
    init = value("--config.init_from")
    if init:
        reads.append(init)
    module = words[2] if words[1] == "-m" else words[1]
    if module == "train.py":
        (reads if value("--mode") == "eval" else writes).append(value("--workdir"))
    elif module in ("resnet_jax.reproduce",):
        writes.append(value("--workdir"))
    elif module in ("resnet_jax.predict", "resnet_jax.export"):
        reads.append(value("--workdir"))
    elif module == "resnet_jax.convert":
        writes.append([w for w in words[3:] if not w.startswith("-")][3])
    elif module in ("resnet_jax.plot", "resnet_jax.training.population_report"):
        reads += [w for w in words[3:] if not w.startswith("-") and w != value("--out")]
    return [w for w in writes if w], [r for r in reads if r]


def pages_with(lang: str) -> list[str]:
    return [p for p in PAGES if any(b.lang == lang for b in blocks(p))]


@pytest.fixture
def doc_folder(tmp_path, monkeypatch):
    """A folder as the pages' commands leave it: ``runs/quick`` (a trained run with a
    best checkpoint) and two images, ``cat.jpg`` and ``dog.png``."""
    shutil.copytree(FIXTURE_RUN, tmp_path / "runs" / "quick")
    rng = np.random.default_rng(0)
    Image.fromarray(class_image(0, rng, 40)).save(tmp_path / "cat.jpg")
    Image.fromarray(class_image(1, rng, 24)).convert("RGBA").save(tmp_path / "dog.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_python_blocks_run_as_written(doc_folder):
    """Every page's python blocks, in one process (the pages' networks share their compiled operations)."""
    for page in pages_with("python"):
        namespace = {"__name__": "__main__"}
        for b in blocks(page):
            if b.lang == "python":
                code = compile(b.text, f"{page}, the block at line {b.line}", "exec")
                if b.requires is None:
                    exec(code, namespace)


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # how ml_collections reads a config file
@pytest.mark.parametrize("page", PAGES)
def test_shell_blocks_parse_and_name_what_exists(page):
    written = []
    for b in blocks(page):
        if b.lang not in ("bash", "python"):
            assert b.lang in ("", "text"), f"{page}:{b.line}: a block of {b.lang!r}, which no test reads"
            continue
        where = f"{page}:{b.line}"
        if b.lang == "python":
            for kind, path in re.findall(r"(restore|export)\(\s*\"([^\"]+)\"", b.text):
                assert any(path == w or path.startswith(w + "/") for w in written), (
                    f"{where}: {kind}({path!r}) reads a workdir no command earlier on the page writes"
                )
            continue
        done = subprocess.run(["bash", "-n"], input=b.text, capture_output=True, text=True)
        assert done.returncode == 0, f"{where}: not valid bash: {done.stderr}"
        if OUTSIDE.search(re.sub(r"#.*", "", b.text)):
            assert b.requires, f"{where}: names a path outside the checkout but has no <!-- requires: ... -->"
        for words in commands(b.text):
            words = python_commands(words)
            if words is None:
                continue
            check_command(words, where)
            writes, reads = workdirs(words)
            for r in reads:
                assert any(r == w or r.startswith(w + "/") for w in written), (
                    f"{where}: {' '.join(words[:3])} reads {r}, which no command earlier on the page writes"
                )
            written += writes
    for text in inline_commands(page):
        words = python_commands(shlex.split(text))
        if words is not None:
            assert not re.search(r"<[^>]*>", text), f"{page}: `{text}` holds a <placeholder>, which does not paste"
            check_command(words, f"{page}: `{text}`")


def named_paths(text: str) -> list[str]:
    """The checkout's files a page names (``resnet_jax/...``, ``tests/...``, ``bench/...``, ``configs/...``),
    left out: those inside a quoted message or a pattern (``configs/x.py`` in an example error, ``{18,34}``)."""
    spans = re.findall(r"`([^`]+)`", text)
    prose = re.sub(r"`[^`]+`", " ", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    candidates = [s for s in spans if re.fullmatch(r"[\w./-]+", s)] + prose.split()
    found = [re.match(r"(?:resnet_jax|tests|bench|configs)/[\w./-]*\w", c.strip("()[],;:")) for c in candidates]
    return sorted({m.group(0) for m in found if m})


def exists(path: str) -> bool:
    """Whether `path` is a file or folder of the checkout, or ``module.py``'s name
    written as ``module.name`` (``tests/conftest.cli_args``)."""
    if os.path.exists(os.path.join(ROOT, path)):
        return True
    module, _, name = path.rpartition(".")
    source = os.path.join(ROOT, module + ".py")
    return bool(module) and os.path.isfile(source) and re.search(rf"^(def|class) {name}\b|^{name} =",
                                                                 open(source).read(), re.M) is not None  # fmt: skip


def resolves(dotted: str) -> bool:
    """Whether ``resnet_jax.a.b...`` names a module, or a module's attribute, that exists."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            if importlib.util.find_spec(".".join(parts[:i])) is None:
                continue
        except ModuleNotFoundError:  # a name inside a module, not a module
            continue
        obj = importlib.import_module(".".join(parts[:i]))
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("page", PAGES)
def test_pages_name_files_modules_and_config_fields_that_exist(page):
    from resnet_jax.config import default_config

    text = open(os.path.join(ROOT, page)).read()
    missing = [p for p in named_paths(text) if not exists(p)]
    assert not missing, f"{page} names files that do not exist: {missing}"
    unresolved = [d for d in sorted(set(re.findall(r"`(resnet_jax(?:\.\w+)+)", text))) if not resolves(d)]
    assert not unresolved, f"{page} names modules or functions that do not exist: {unresolved}"
    config, unknown = default_config(), []
    for field in sorted(set(re.findall(r"(?:--config|`config)\.([a-z_][\w.]*\w)", text)) - {"json"}):
        node = config
        for key in field.split("."):
            if key not in node:
                unknown.append(field)
                break
            node = node[key]
    assert not unknown, f"{page} names config fields that do not exist: {unknown}"


def test_the_readme_install_has_what_every_config_needs():
    """README's one-command install holds the extra of every config's input pipeline
    (grain: configs/imagefolder.py and finetune.py; tfds: the ImageNet configs)."""
    install = next(b.text for b in blocks("README.md") if b.lang == "bash")
    extras = set(re.search(r'pip install -e "\.\[([\w,]+)\]"', install).group(1).split(","))
    needs = {"grain": "grain", "tfds": "data", "device": None}
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "configs", name))
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
            config = loaded.get_config()
            extra = needs[config.data.pipeline]
            assert extra is None or extra in extras, f"configs/{name} needs the {extra} extra; README installs {extras}"
