"""``tl-report DIR [DIR ...] [--out OUT]``: compare every run under the directories in one table."""
from __future__ import annotations

import argparse

from transferlab.cli import user_errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tl-report", description="Aggregate transferlab runs (mean ± std over seeds) into "
        "report.md, report.csv and report.png.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run, sweep or outputs directories to search")
    parser.add_argument("--out", help="where to write the report (default: the first DIR)")
    args = parser.parse_args(argv)
    with user_errors():
        from transferlab.report import write_report  # after argparse, so --help needs no matplotlib

        report = write_report(args.dirs, args.out)
    print(report.markdown)
    for path in report.paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
