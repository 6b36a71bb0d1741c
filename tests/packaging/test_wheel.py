"""The built wheel carries what a non-editable install needs: presets, model configs, the tokenizer asset."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from onetrainer.util.config.presets import preset_names

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_contains_presets_and_package_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("onetrainer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in preset_names():
        assert f"onetrainer/presets/{preset}.yaml" in names
    assert "onetrainer/model/configs/sd15/unet/config.json" in names
    assert "onetrainer/util/tiny/assets/tiny-clip-merges.txt" in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "onetrainer = onetrainer.commands.app:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
