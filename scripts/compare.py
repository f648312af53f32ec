"""Compare runs, sweeps and searches.  python scripts/compare.py <sweep dir> [more dirs] [--no-ngram]

Writes report.md, report.json and PNG figures into the first directory and prints the tables.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))

from tangshi.errors import TangshiError, reported
from tangshi.report import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep, search or run directories (searched recursively)")
    parser.add_argument("--no-ngram", action="store_true", help="leave out the Kneser-Ney floor (needs the corpus)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ["TANGSHI_ROOT"]) / "data")
    args = parser.parse_args()
    with reported():
        missing = [d for d in args.dirs if not d.is_dir()]
        if missing:
            raise TangshiError(f"not a directory: {missing[0]}")
        _, report = compare(args.dirs, None if args.no_ngram else args.data_dir)
    print(report.read_text(encoding="utf-8").split("\n![")[0].rstrip())
    print(f"\nwrote {report}")


if __name__ == "__main__":
    main()
