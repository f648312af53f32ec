"""Compare runs across cells.  python scripts/compare.py <sweep dir> [more dirs]

Writes report.md, report.json and PNG curves into the first directory and prints the table.
"""

import argparse
from pathlib import Path

from tangshi.compare import compare
from tangshi.errors import TangshiError, reported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories (searched recursively)")
    args = parser.parse_args()
    with reported():
        missing = [d for d in args.dirs if not d.is_dir()]
        if missing:
            raise TangshiError(f"not a directory: {missing[0]}")
        _, report = compare(args.dirs)
    print(report.read_text(encoding="utf-8").split("\n![")[0].rstrip())
    print(f"\nwrote {report}")


if __name__ == "__main__":
    main()
