"""The README's promises a new user acts on: the two set-up commands, the install notes, the pictures."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_two_setup_commands():
    assert README.startswith("# ctlesion\n\n```bash\n")
    commands = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert commands == ["pip install -e . && ctlesion detect sample_data/abdomen_ct_dicom --out results/results.json",
                        'pip install -e ".[dev]" && pytest']


def test_readme_says_install_size_cpu_wheels_and_first_run_cost():
    install = README[README.index("**Install size and first run.**"):]
    install = install[:install.index("\n\n")]
    assert re.search(r"\d+(\.\d+)? GB", install), "the installed size"
    assert "https://download.pytorch.org/whl/cpu" in install, "the PyTorch CPU index"
    assert "first `detect`" in install and re.search(r"\d+ min \d+ s", install), "the first-run cost"


def test_readme_pictures_exist():
    pictures = re.findall(r'src="([^"]+\.png)"', README) + re.findall(r"\]\(([^)]+\.png)\)", README)
    assert "docs/images/sample_lesion01.png" in pictures and "docs/images/sample_lesions.png" in pictures
    for picture in pictures:
        assert (ROOT / picture).is_file(), picture
