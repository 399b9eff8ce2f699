"""`vzmigrate`: OpenVZ's command, arriving with the VE runtime (not implemented yet)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("vzmigrate: not implemented yet (use vzcpt for plain process trees)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
