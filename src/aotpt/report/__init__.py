"""Paper tables and figures from run folders: `python -m aotpt.report runs_dir=... out_dir=...`.

runs.py reads every results.json and says which runs may be used and why
not; select.py picks the best grid point per backbone x setup x task by mean
dev score over seeds and builds the benchmark scores; coverage.py matches runs
to a sweep's jobs; baseline.py scores the majority class; tables.py,
figures.py and page.py write markdown, CSV, LaTeX, PNG and the page;
build.py ties them together (`run(cfg)`).
"""

from aotpt.report.build import Report, build, outputs, run, stale, write
from aotpt.report.tables import terminal

__all__ = ["Report", "build", "outputs", "run", "stale", "terminal", "write"]
