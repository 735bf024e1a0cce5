"""``tl-report DIR [DIR ...] [--out OUT] [select_by=METRIC]``: compare every run under the directories in one table.

``select_by=val/acc_best`` (or ``--select-by``) keeps, per setting, the tuned hyperparameters with the
best mean validation score: strategies are then compared each at its own best learning rate."""
from __future__ import annotations

import argparse
import sys

from transferlab.cli import user_errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tl-report", description="Aggregate transferlab runs (mean ± std over seeds) into "
        "report.md, report.csv and report.png.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run, sweep or outputs directories to search")
    parser.add_argument("--out", help="where to write the report (default: the first DIR)")
    parser.add_argument("--select-by", metavar="METRIC", help="per setting, keep the tuned hyperparameters "
                        "(learning rates, weight decay, ...) with the best mean of this validation metric, "
                        "e.g. val/acc_best; also written select_by=METRIC")
    argv = sys.argv[1:] if argv is None else list(argv)
    # Hydra-style key=value, as the other commands take it
    argv = [f"--select-by={a.split('=', 1)[1]}" if a.startswith("select_by=") else a for a in argv]
    args = parser.parse_args(argv)
    with user_errors():
        from transferlab.reports import write_report  # after argparse, so --help needs no matplotlib

        report = write_report(args.dirs, args.out, select_by=args.select_by)
    print(report.markdown)
    for path in report.paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
