"""No shared module names a model family: a family is its own files plus one registration.

A module is a family's own when its path (relative to `onetrainer/`) contains a registered family's
name, the part of it before a "-" (`flux` for `flux-dev` and `flux-schnell`, as a module name cannot
hold a "-"), or `stable_diffusion`, or lies under `util/tiny/` (the tiny builders of every family). Every other
module must not write, as a whole word in any case, a registered family's name, `stable_diffusion` /
`StableDiffusion`, or the names of the families announced next: those are about to be registered, and a
shared module that names one now would need an edit when it is. Titles such as "SD 1.x" are fine: they
are how users know a family, and no code can branch on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from onetrainer.util.family import family_names

PACKAGE = Path(__file__).resolve().parents[1] / "onetrainer"
COMING = ("sdxl", "flux", "sd3", "sd35", "chroma", "qwen")
"""Families announced after 1.x/2.x: SDXL, FLUX.1, SD 3 / 3.5, Chroma, Qwen-Image."""
ALWAYS = ("stable_diffusion", "StableDiffusion")
OWN_FOLDERS = ("util/tiny/",)


def _names() -> list[str]:
    return sorted({*family_names(), *COMING, *ALWAYS})


def _own_names() -> list[str]:
    """What a family's own file paths may contain: its name, or its name's stem before a "-"."""
    return sorted({*family_names(), *(name.split("-")[0] for name in family_names()), *ALWAYS})


def _is_family_file(relative: str, names: list[str]) -> bool:
    lowered = relative.lower()
    return lowered.startswith(OWN_FOLDERS) or any(name.lower() in lowered for name in names)


CAMEL_PREFIX = re.compile(r"(?<![A-Za-z0-9])StableDiffusion(?=[A-Z])")
"""`StableDiffusionHooks`, `StableDiffusionPipeline`: class names built on the family's name."""


def _finder(names: list[str]) -> Callable[[str], list[str]]:
    """Whole words in any case, "_" counting as a separator (`sdxl` in `is_sdxl_like`, not in `sdxlish`),
    plus class names that start with `StableDiffusion`."""
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    words = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)
    return lambda line: words.findall(line) + CAMEL_PREFIX.findall(line)


def _offences(names: list[str]) -> list[str]:
    find = _finder(names)
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if _is_family_file(relative, _own_names()):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            found = find(line)
            if found:
                offences.append(f"onetrainer/{relative}:{number}: {', '.join(sorted(set(found)))}: {line.strip()}")
    return offences


def test_no_shared_module_names_a_family() -> None:
    offences = _offences(_names())
    assert not offences, "shared modules name a family:\n" + "\n".join(offences)


def test_the_check_finds_names_in_any_case_as_whole_words() -> None:
    find = _finder(_names())
    assert find('model_type = "SD15"') == ["SD15"]
    assert find("from ..model_loader.stable_diffusion import x") == ["stable_diffusion"]
    assert find("hooks = StableDiffusionHooks()") == ["StableDiffusion"]
    assert find("for 1.x (sd15) and sdxl-lora, tiny:sd2-v") == ["sd15", "sdxl", "sd2"]
    assert find("def is_sdxl_like(): ...") == ["sdxl"]
    assert find("SD 1.x and SD 2.x models, a stablediffusionish sd150 fluxion sdxlish") == []


def test_a_familys_own_files_are_exempt() -> None:
    names = _own_names()
    assert _is_family_file("model/stable_diffusion.py", names)
    assert _is_family_file("util/keymaps/stable_diffusion_single_file.py", names)
    assert _is_family_file("util/tiny/models.py", names)
    assert not _is_family_file("util/config/family.py", names)
    assert not _is_family_file("model_setup/diffusion.py", names)
    assert _is_family_file("model_setup/flux.py", names) == any(name.startswith("flux-") for name in family_names())
