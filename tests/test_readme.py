"""The README's Python examples run as written (those that need no network)."""

import re
from pathlib import Path


README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
OFFLINE = [b for b in BLOCKS if '"mnist"' not in b and '"imagenet2012"' not in b]  # these need a download


def test_readme_has_offline_examples():
  assert len(OFFLINE) >= 2


def test_readme_examples_run_in_order(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  for block in OFFLINE:
    exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  state = namespace["state"]
  assert int(state.seed) == 42 and (tmp_path / "state.npz").exists()
