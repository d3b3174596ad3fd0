"""Every sweep grid in sweeps/ composes, point by point, into a config the trainer accepts."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from aotpt.cli import CONF_DIR, GROUPS
from aotpt.methods import method_config
from conftest import REPO

SWEEPS = REPO / "sweeps"


def _compose(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        return compose(name, overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", *overrides], return_hydra_config=True)


# Files with `hydra/sweeper: grids` (a union of cross products, e.g. paper_*.yaml) are checked job by job in
# tests/test_paper_sweeps.py, which covers every sweep file.
@pytest.mark.parametrize(
    "sweep",
    sorted(
        p.stem
        for p in SWEEPS.glob("*.yaml")
        if not p.stem.startswith("wandb_") and "hydra/sweeper: grids" not in p.read_text()
    ),
)
def test_every_grid_point_composes(sweep):
    params = dict(_compose(sweep, []).hydra.sweeper.params)
    # Group choices decide validity; numeric axes (lr, seed, rank) are checked once, at their first value.
    axes = {k: str(v).split(",") for k, v in params.items() if k in GROUPS}
    fixed = [f"{k}={str(v).split(',')[0]}" for k, v in params.items() if k not in GROUPS]
    for point in itertools.product(*axes.values()):
        cfg = _compose(sweep, [*fixed, *(f"{k}={v}" for k, v in zip(axes, point, strict=True))])
        method = method_config(cfg.method)
        assert ("reparam" in params) == (type(method).name == "aot"), "reparam must only be crossed with method=aot"
    GlobalHydra.instance().clear()
