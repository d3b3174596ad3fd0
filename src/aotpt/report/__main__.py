"""`python -m aotpt.report runs_dir=logs/multiruns/paper_minilm out_dir=reports/paper_minilm`."""

import hydra
from omegaconf import DictConfig

from aotpt.cli import CONF_DIR, entry, one_line_errors
from aotpt.report.build import run
from aotpt.report.tables import terminal


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
@one_line_errors
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    print(terminal(report))
    print(f"report: {report.out_dir}")


if __name__ == "__main__":
    entry(main)
