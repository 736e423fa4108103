"""``python -m olmac.formal BUILD_DIR``: every proof and mutant, a line each (``make formal``)."""

import sys

from .proofs import run_all


def main(argv):
    if len(argv) != 1:
        sys.exit("usage: python -m olmac.formal BUILD_DIR")
    ok = True
    for good, line in run_all(argv[0]):
        print(line, flush=True)
        ok &= good
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
