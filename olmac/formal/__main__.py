"""``python -m olmac.formal BUILD_DIR``: every proof and mutant, a line each (``make formal``),
then how many ran, how many did not end as expected and the wall-clock time of them all."""

import sys
import time

from .proofs import run_all


def main(argv):
    if len(argv) != 1:
        sys.exit("usage: python -m olmac.formal BUILD_DIR")
    start = time.monotonic()
    runs = unexpected = 0
    for good, line in run_all(argv[0]):
        print(line, flush=True)
        runs += 1
        unexpected += not good
    print(f"{runs} runs, {unexpected} not as expected, {time.monotonic() - start:.0f} s",
          flush=True)
    sys.exit(0 if unexpected == 0 else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
