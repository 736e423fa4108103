"""``olmac cache``: the size of the build cache of compiled Verilator models, or ``clean``
to empty it (:mod:`olmac.sim.cache`; ``$OLMAC_CACHE`` moves it)."""


def arguments(parser):
    parser.add_argument("action", nargs="?", choices=("info", "clean"), default="info",
                        help="show the cache's size, or remove every model in it")
    parser.set_defaults(run=run)


def run(args):
    from olmac.sim.cache import cache_dir, cache_size, clean_cache
    if args.action == "clean":
        models, size = clean_cache()
        print(f"olmac: removed {models} models ({size / 2**20:.1f} MiB) from {cache_dir()}")
    else:
        models, size = cache_size()
        print(f"olmac: {models} models ({size / 2**20:.1f} MiB) in {cache_dir()}")
