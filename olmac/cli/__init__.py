"""``olmac``: the command line.

``olmac gemm`` computes ``Y = A·W`` (optionally requantized, docs/semantics.md §3) on the
golden model or on the generated RTL under Verilator; ``olmac gemm-demo`` runs a random
GEMM through the RTL and checks it against golden. ``olmac quantize`` lowers a PyTorch model
to an integer program artifact (``olmac layers`` lists the layers it lowers), ``olmac run`` runs one on the golden model or the network
core's RTL, and ``olmac demo`` does it all for a demo network on the digits test split
(docs/network.md). ``olmac build`` builds a MAC array bitstream for a board, ``olmac board``
builds the network board or runs it over its UART, and ``olmac explore`` sweeps a design
space on Dask. ``olmac cache`` shows or empties the cache of compiled Verilator models.

Each subcommand is a module of this package that parses its arguments and calls a library
function (:func:`olmac.gemm.run`, :func:`olmac.network.run_demo`, ...).
"""

import olmac
from .common import Command, Formatter, Parser, UsageError

__all__ = ["main"]

#: The subcommands: their names, modules and one-line help.
COMMANDS = (
    ("gemm", "gemm", "Y = A·W on the golden model or the RTL"),
    ("quantize", "quantize", "a PyTorch model to an integer program artifact "
                             "(docs/program.md)"),
    ("layers", "layers", "the layers olmac quantize lowers, and what each runs as"),
    ("run", "run", "an integer program on integer pixels, golden model or RTL (Verilator)"),
    ("demo", "demo", "a demo network on the digits test split through the RTL, checked "
                     "image by image against golden"),
    ("gemm-demo", "gemm_demo", "a random GEMM through the RTL, checked against golden"),
    ("build", "build", "a BRAM-fed MAC array bitstream for a board"),
    ("board", "board", "build the network board, or run it over its UART"),
    ("explore", "explore", "a design-space sweep on Dask, its table and its Pareto fronts "
                           "(docs/explore.md)"),
    ("cache", "cache", "the size of the cache of compiled Verilator models, or clean it"),
)


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``). Returns on success; exits
    with status 2 and a one-line ``olmac: error: ...`` on bad input, or with the status a
    subcommand reports (1: a mismatch or a failed build)."""
    parser = Parser(prog="olmac", description=olmac.__doc__.splitlines()[0],
                    formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"olmac {olmac.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Command)
    for name, module, help in COMMANDS:
        commands.add_parser(name, help=help, description=help, module=module)
    args = parser.parse_args(argv)
    try:
        status = args.run(args)
    except UsageError as error:
        parser.exit(2, f"olmac: error: {error}\n")
    if status:
        raise SystemExit(status)
