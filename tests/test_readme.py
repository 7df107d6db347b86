"""README.md's code runs as written.

Every ```python block of README.md runs in a fresh interpreter (OMP_NUM_THREADS=1, offline), exactly as a user
would paste it from the repository root. An HTML comment on the line right before a block's fence says how:

    <!-- readme-test: slow -->                     run only under `-m slow` (training, FID over many samples)
    <!-- readme-test: needs pipelines/xyz -->      skipped while that path is missing (a folder still training)

Working directory: a fresh temporary folder in which the repository's `pipelines/` and `configs/` are linked, so
the relative paths a README block reads (`"pipelines/dic-mnist"`) resolve as from the repository root, while any
file a block writes (a GIF, a saved pipeline) lands in the temporary folder and never in the shared working tree.
The block is written to `README.md.py` padded with blank lines, so a traceback's line numbers are README's.

The ```bash blocks are not run (they train for minutes); they are read for the `convdiff` commands and the
`configs/` / `scripts/` files they name, so a renamed command or recipe breaks this test instead of a reader.
"""

import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINKED = ("pipelines", "configs")  # what README blocks may read by relative path
MARKER = re.compile(r"<!--\s*readme-test:(.*?)-->")
FENCE = re.compile(r"^\s*```(\w*)\s*$")  # a fence, possibly indented (inside a list item)
BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # README line of the block's first code line
    code: str
    slow: bool = False
    needs: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"L{self.line}"


def parse_markers(text: str, line: int) -> tuple[bool, tuple[str, ...]]:
    slow, needs = False, []
    for directive in text.split(";"):
        words = directive.split()
        if words == ["slow"]:
            slow = True
        elif len(words) >= 2 and words[0] == "needs":
            needs += words[1:]
        else:
            raise ValueError(f"README.md line {line}: unknown readme-test marker {directive.strip()!r}; "
                             f"expected 'slow' or 'needs <path> ...'")
    return slow, tuple(needs)


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a README text, with the readme-test markers on the line before each fence."""
    lines = text.splitlines()
    blocks, pending, i = [], None, 0
    while i < len(lines):
        marker, fence = MARKER.fullmatch(lines[i].strip()), FENCE.match(lines[i])
        if marker:
            if pending is not None:
                raise ValueError(f"README.md line {i + 1}: one readme-test marker per block "
                                 f"(join directives with ';', e.g. 'slow; needs pipelines/x')")
            pending = (i + 1, *parse_markers(marker.group(1), i + 1))
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ValueError(f"README.md line {i + 1}: code block never closed")
            slow, needs = (pending[1], pending[2]) if pending else (False, ())
            if pending and pending[0] != i:
                raise ValueError(f"README.md line {pending[0]}: a readme-test marker must be on the line right "
                                 f"before the block's fence (line {i + 1})")
            if pending and fence.group(1) != "python":
                raise ValueError(f"README.md line {pending[0]}: readme-test markers apply to ```python blocks only")
            code = textwrap.dedent("\n".join(lines[i + 1:end]) + "\n")
            blocks.append(Block(fence.group(1), i + 2, code, slow, needs))
            pending, i = None, end
        elif pending is not None and lines[i].strip():
            raise ValueError(f"README.md line {pending[0]}: a readme-test marker must be on the line right before "
                             f"a ```python fence")
        i += 1
    if pending is not None:
        raise ValueError(f"README.md line {pending[0]}: readme-test marker with no block after it")
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.language == "python"]
BASH = [b for b in BLOCKS if b.language in ("bash", "sh", "shell")]


def run_block(block: Block, workdir: Path, root: Path = ROOT) -> subprocess.CompletedProcess:
    """Run one README block as `python README.md.py` in `workdir`, with `root`'s LINKED folders linked in."""
    for name in LINKED:
        if (root / name).exists():
            (workdir / name).symlink_to(root / name, target_is_directory=True)
    script = workdir / "README.md.py"
    script.write_text("\n" * (block.line - 1) + block.code, encoding="utf-8")
    tmp = workdir / ".tmp"
    tmp.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TMPDIR=str(tmp), MPLBACKEND="Agg", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, script.name], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)


def check_ran(block: Block, proc: subprocess.CompletedProcess):
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])[-4000:]
        pytest.fail(f"README.md block at line {block.line} exited with {proc.returncode} "
                    f"(traceback line numbers are README's; markers for slow blocks or blocks needing an unshipped "
                    f"folder: tests/test_readme.py):\n{tail}", pytrace=False)


def python_param(block: Block):
    marks = [pytest.mark.slow] if block.slow else []
    missing = [path for path in block.needs if not (ROOT / path).exists()]
    if missing:
        reason = f"README.md line {block.line}: needs {', '.join(missing)} (not shipped yet)"
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(block, marks=marks, id=block.id)


@pytest.mark.parametrize("block", [python_param(b) for b in PYTHON])
def test_readme_python_block_runs(block, tmp_path):
    check_ran(block, run_block(block, tmp_path))


def test_readme_has_the_shipped_model_blocks_and_they_read_no_run_folders():
    assert len(PYTHON) >= 4, "README.md lost its Python examples"
    assert any('"pipelines/dic-mnist"' in b.code and not (b.slow or b.needs) for b in PYTHON)
    for block in PYTHON:
        for path in re.findall(r"[\"'](pipelines/[\w.-]+)", block.code):
            assert (ROOT / path).is_dir() or path in block.needs, (
                f"README.md line {block.line} loads {path}, which is not shipped: ship it or mark the block "
                f"<!-- readme-test: needs {path} -->")
        if not block.slow:
            assert not re.search(r"[\"']outputs/", block.code), (
                f"README.md line {block.line} reads a folder only a training run creates (outputs/...): "
                f"load a shipped pipelines/ folder instead")


def bash_problems(blocks: list[Block], root: Path = ROOT) -> list[str]:
    """`convdiff <command>`s that do not exist and `configs/` / `scripts/` files that are missing."""
    from convdiff.cli import COMMANDS

    problems = []
    for block in blocks:
        for offset, line in enumerate(block.code.splitlines()):
            words = shlex.split(line.split("#")[0].rstrip("\\"))
            where = f"README.md line {block.line + offset}"
            for i, word in enumerate(words):
                if word == "convdiff" and i + 1 < len(words) and not words[i + 1].startswith("-"):
                    if words[i + 1] not in COMMANDS:
                        problems.append(f"{where}: no command 'convdiff {words[i + 1]}'")
                if re.fullmatch(r"(configs|scripts)/[\w./-]+\.(yaml|py|sh)", word) and not (root / word).is_file():
                    problems.append(f"{where}: {word} does not exist")
    return problems


def test_readme_bash_commands_name_existing_commands_and_files():
    assert BASH, "README.md lost its shell examples"
    assert bash_problems(BASH) == []


# ---- the test's own machinery ----------------------------------------------------------------------------

def test_markers_parse_and_misplaced_ones_are_refused():
    text = ("# t\n<!-- readme-test: slow -->\n```python\nx = 1\n```\n"
            "<!-- readme-test: needs pipelines/a pipelines/b -->\n```python\ny = 2\n```\n```bash\nls\n```\n")
    a, b, c = readme_blocks(text)
    assert (a.line, a.code, a.slow, a.needs) == (4, "x = 1\n", True, ())
    assert (b.line, b.slow, b.needs) == (8, False, ("pipelines/a", "pipelines/b"))
    assert c.language == "bash" and not c.slow
    assert readme_blocks("- item:\n\n  ```python\n  z = 3\n  ```\n")[0].code == "z = 3\n"
    assert readme_blocks("<!-- readme-test: slow; needs pipelines/a -->\n```python\n```\n")[0].needs == ("pipelines/a",)
    with pytest.raises(ValueError, match="unknown readme-test marker 'slwo'"):
        readme_blocks("<!-- readme-test: slwo -->\n```python\n```\n")
    with pytest.raises(ValueError, match="right before"):
        readme_blocks("<!-- readme-test: slow -->\n\ntext\n```python\n```\n")
    with pytest.raises(ValueError, match="no block after it"):
        readme_blocks("text\n<!-- readme-test: slow -->\n")


def test_a_failing_block_reports_its_readme_line_and_writes_only_in_its_folder(tmp_path):
    (block,) = readme_blocks("intro\n\n```python\nopen('written.txt', 'w').write('x')\nundefined_name\n```\n")
    proc = run_block(block, tmp_path)
    assert proc.returncode == 1 and 'README.md.py", line 5' in proc.stderr and "NameError" in proc.stderr
    assert (tmp_path / "written.txt").is_file() and not (ROOT / "written.txt").exists()
    assert (tmp_path / "pipelines" / "dic-mnist" / "model_index.json").is_file()
    with pytest.raises(pytest.fail.Exception, match="block at line 4 exited with 1"):
        check_ran(block, proc)


def test_bash_check_reports_unknown_commands_and_missing_files():
    text = "```bash\nconvdiff smaple --config configs/nope.yaml \\\n    scripts/train.py  # convdiff nope\n```\n"
    blocks = readme_blocks(text)
    assert bash_problems(blocks) == ["README.md line 2: no command 'convdiff smaple'",
                                     "README.md line 2: configs/nope.yaml does not exist"]
