"""``gankd-export`` and ``gankd-bench`` entry points (the export issue builds them)."""

import sys

_NOT_YET = "{prog}: not built yet: the exporter and benchmark arrive with the export issue; " \
           "this release imports and inspects teachers (gankd-distill)"


def export_main() -> int:
    print(_NOT_YET.format(prog="gankd-export"), file=sys.stderr)
    return 2


def bench_main() -> int:
    print(_NOT_YET.format(prog="gankd-bench"), file=sys.stderr)
    return 2
