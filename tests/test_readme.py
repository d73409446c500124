"""The README's code: every Python block runs on its own, in a fresh namespace.

Blocks that need a download say so on their first line (``# Needs ...``) and are
not run (tests never download); every block that loads a TFDS dataset other than
the embedded ``digits`` must say so, unless it reads it through ``tfds.testing.mock_data``.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
NEEDS = "# Needs "
RUN = [b for b in BLOCKS if not b.startswith(NEEDS)]
_DATASETS = re.compile(r"""tfds_jax\.(?:load|stream|from_tfds|prepare)\(\s*["']([\w/:.]+)["']""")


def test_blocks_that_need_a_download_say_what_they_need():
  for block in BLOCKS:
    names = {n.split(":")[0].split("/")[0] for n in _DATASETS.findall(block)}
    if names - {"digits"} and "tfds.testing.mock_data(" not in block:  # mock_data reads nothing
      assert block.startswith(NEEDS), f"a block loading {sorted(names)} must start with '{NEEDS}...':\n{block}"
  assert len(RUN) >= 6 and len(BLOCKS) - len(RUN) >= 2


@pytest.mark.parametrize("block", RUN, ids=[f"block{i}" for i in range(len(RUN))])
def test_block_runs_on_its_own(block, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.setenv("TFDS_JAX_CACHE_DIR", str(tmp_path / "cache"))
  namespace = {"__name__": "__readme__"}
  exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used


def test_set_up_has_exactly_the_two_commands_and_ci_runs_the_test_command():
  setup = README.split("## Set-up", 1)[1].split("\n## ", 1)[0].split("### ", 1)[0]
  commands = re.findall(r"```sh\n(.*?)\n```", setup, re.S)
  assert len(commands) == 2, commands
  demo, tests = commands
  assert demo.startswith("python3 -m pip install --quiet uv==") and demo.endswith("tfds-jax demo")
  assert "--locked" in tests and "--all-extras" in tests and tests.endswith("pytest")  # Beam tests included
  ci = (ROOT / ".ci" / "run").read_text()
  assert ci.strip().splitlines()[-1] == tests
