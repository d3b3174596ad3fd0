"""Hydra sweeper plugin of aotpt: `override hydra/sweeper: grids` (see `aotpt.sweeps`)."""
