"""``olmac explore``: a design-space sweep on Dask, its table and its Pareto fronts
(:func:`olmac.explore.explore`, docs/explore.md)."""

import sys

from .common import UsageError


def arguments(parser):
    parser.add_argument("spec", help="the sweep, a TOML file (docs/explore.md)")
    parser.add_argument("--scheduler", help="tcp://HOST:PORT of a running Dask scheduler "
                                            "(default: a LocalCluster on this machine)")
    parser.add_argument("--workers", type=int,
                        help="worker processes of the LocalCluster (default: one per core)")
    parser.add_argument("--out", help="where the table and report go (default: "
                                      "build/explore/<spec name>)")
    parser.set_defaults(run=run)


def run(args):
    from olmac.explore import SpecError, explore, load_spec
    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        raise UsageError(str(error)) from None
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    try:
        result = explore(spec, scheduler=args.scheduler, workers=args.workers,
                         out_dir=args.out)
    except OSError as error:
        if args.scheduler is None:
            raise
        raise UsageError(f"--scheduler {args.scheduler}: {error}") from None
    except KeyboardInterrupt:
        print("olmac explore: interrupted; the table and report hold the points done",
              file=sys.stderr)
        return 130
    print(f"olmac explore: {len(result.rows)} points ({result.computed} computed, "
          f"{result.cached} from the cache, {result.failed} failed); table and report in "
          f"{result.out_dir}")
    return 1 if result.failed else None
