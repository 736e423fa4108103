"""``olmac layers``: the layers ``olmac quantize`` lowers and what each runs as
(:func:`olmac.golden.program.lowering.supported_layers`, docs/program.md §17)."""


def arguments(parser):
    parser.set_defaults(run=run)


def run(args):
    from olmac.golden.program.lowering import supported_layers
    print(supported_layers())
