"""The network core: runs an integer program (docs/program.md §9–§13) layer by layer on one
MAC array, with on-chip program, weight, parameter and activation memories.

The program is a list of :class:`OpDescriptor` words (docs/network.md §15 gives the op
set, the loop order and the memory layout; a compiler, ``olmac.compiler``, produces
them with the memory images). The core runs them in order and starts again at op 0 after
an op marked ``final``, so a program that begins with a ``LOAD`` and ends with a ``STORE``
classifies one image per pass.

:class:`NetworkCore` (``core``) wires the parts: the :class:`Sequencer`, ``LOAD``/``STORE``
and the background loader (``transfers``), the beat and output walks (``walks``), the
reducer, the requantizer's parameter feed and the write-back (``compute``), the memories
in a wide or a narrow variant (``memories``), the activation-outlier store (``outliers``)
and the lookup tables (``tables``).
"""

from .codes import CodebookPath, code_tiles, codebook_word_entries
from .compute import CopyPart, ParamFeed, Reducer, StorePart, WriteBack
from .core import NetworkCore
from .layouts import (ACT_SHIFT_BITS, CHUNK_BITS, MAX_DIM, MAX_KERNEL, MAX_PASSES,
                      MEMORY_STYLES, REQUANTIZERS, STORAGE_BITS, ChannelWord,
                      CodebookMode, ControlSignature, LoadBeat, LoadTarget, OpDescriptor,
                      OpKind, SideRequest, SideWords, TABLE_ENTRY_BITS, VectorBeat, WeightWord,
                      row_slices)
from .memories import NarrowMemories, WideMemories
from .outliers import ActOutlierStore
from .packed import PackedMemory
from .sequencer import Sequencer
from .tables import TablePart
from .transfers import Loader, Prefetcher, Storer
from .walks import BeatWalk, OutputWalk

__all__ = ["NetworkCore", "OpKind", "OpDescriptor", "ChannelWord", "LoadTarget", "LoadBeat", "row_slices",
           "ControlSignature", "VectorBeat", "SideRequest", "SideWords", "WeightWord",
           "STORAGE_BITS", "MAX_DIM", "MAX_KERNEL", "MAX_PASSES", "ACT_SHIFT_BITS", "CHUNK_BITS", "REQUANTIZERS", "MEMORY_STYLES",
           "Sequencer", "Loader", "Prefetcher", "Storer", "BeatWalk", "OutputWalk", "Reducer",
           "ParamFeed",
           "WriteBack", "CopyPart", "StorePart", "WideMemories", "NarrowMemories", "ActOutlierStore",
           "PackedMemory", "TablePart", "TABLE_ENTRY_BITS", "CodebookPath", "CodebookMode",
           "code_tiles", "codebook_word_entries"]
