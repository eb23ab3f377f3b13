"""GPU cards as the planning screens show them: a name, the size it is sold as, and the
memory it really has.

A card sold as "80 GB" does not hold 80 GiB: the H100 80 GB has 81,559 MiB = 79.6 GiB.
:data:`CARDS` is the one table of the cards the screens offer. ``total_mib`` is the card's
total memory as ``nvidia-smi --query-gpu=memory.total --format=csv`` reports it (MiB =
2**20 bytes) for the common board of each model; what ``torch.cuda.mem_get_info`` sees as
total is the same figure. At run time the CUDA context and the driver take a few hundred
MiB of it, and the caching allocator reserves more than the tensors it holds: a card fits a
plan when the plan's peak *as nvidia-smi would show it* (:func:`on_device`: the allocated
peak x the allocator's reserve ratio + the CUDA context, ``memory/constants.json``,
uncalibrated until the GPU check has measured them) is at most the card's total.

Every figure here is in binary units: bytes, MiB, GiB (2**30 bytes). "GB" appears only in
a card's marketing name. A fit is decided in bytes (peak bytes <= total bytes), never by
comparing rounded figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import SettingsError

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class GpuCard:
    name: str  # as sold, e.g. "H100 80 GB"
    marketing_gb: int
    total_mib: int  # nvidia-smi memory.total

    @property
    def total_bytes(self) -> int:
        return self.total_mib * MIB

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def usable(self) -> str:
        """Its memory in GiB, rounded down to 0.1 GiB (never more than the card has)."""
        return gib_down(self.total_bytes)

    @property
    def label(self) -> str:
        """How a menu shows it: ``H100 80 GB (79.6 GiB usable)`` (a size typed in GiB: ``GPU of 24 GiB``)."""
        return f"{self.name} ({self.usable} usable)" if self.marketing_gb else self.name

    def fits(self, peak_bytes: int) -> bool:
        """Whether a plan of allocated peak ``peak_bytes`` fits, as nvidia-smi would show it."""
        return on_device(peak_bytes)[0] <= self.total_bytes

    @property
    def peak_limit_bytes(self) -> int:
        """The largest allocated peak that fits (the limit searches for what fits use)."""
        return allocatable(self.total_bytes)


#: smallest first; total memory in MiB as nvidia-smi reports it
CARDS: tuple[GpuCard, ...] = (
    GpuCard("RTX 4060 8 GB", 8, 8188),
    GpuCard("T4 16 GB", 16, 15360),
    GpuCard("L4 24 GB", 24, 23034),
    GpuCard("RTX 4090 24 GB", 24, 24564),
    GpuCard("A100 40 GB", 40, 40960),
    GpuCard("L40S 48 GB", 48, 46068),
    GpuCard("H100 80 GB", 80, 81559),
    GpuCard("A100 80 GB", 80, 81920),
    GpuCard("H200 141 GB", 141, 143771),
)
BY_NAME = {c.name: c for c in CARDS}
LARGEST = max(CARDS, key=lambda c: c.total_bytes)

def _runtime() -> tuple[float, int]:
    """(the caching allocator's reserve ratio, the CUDA context's bytes) from constants.json."""
    c = json.loads((Path(__file__).parent / "memory" / "constants.json").read_text())["cuda"]
    return float(c["reserved_over_allocated"]), int(c["cuda_context_bytes"])


def on_device(peak_bytes: int) -> tuple[int, str]:
    """(bytes, formula): what nvidia-smi would show for a plan of allocated peak
    ``peak_bytes``: reserved by the caching allocator (the peak x its reserve ratio) + the
    CUDA context with its kernels, neither counted by ``max_memory_allocated``."""
    ratio, context = _runtime()
    reserved = math.ceil(peak_bytes * ratio)
    return reserved + context, (f"{peak_bytes / GIB:.2f} GiB allocated peak x {ratio:g} (caching allocator, "
                                f"uncalibrated) + {context / GIB:.2f} GiB CUDA context (uncalibrated) = "
                                f"{(reserved + context) / GIB:.2f} GiB")


def allocatable(device_bytes: int, contexts: int = 1) -> int:
    """The largest allocated peak that ``device_bytes`` of GPU memory hold once ``contexts``
    CUDA contexts are taken from them (0: they are taken already, as in free memory a
    process reads after its own context exists), the inverse of :func:`on_device`."""
    ratio, context = _runtime()
    return max(0, math.floor((device_bytes - contexts * context) / ratio))


RUNTIME_NOTE = (f"Card sizes are the total memory nvidia-smi reports; a fit counts what nvidia-smi would show: the "
                f"predicted peak x {_runtime()[0]:g} for the caching allocator + {_runtime()[1] / GIB:.1f} GiB CUDA "
                "context (both uncalibrated until measured on a GPU).")


def gib_down(n_bytes: int, digits: int = 1) -> str:
    """``n_bytes`` in GiB, rounded down to ``digits`` decimals: a capacity never shown larger than it is."""
    scale = 10**digits
    return f"{math.floor(n_bytes / GIB * scale + 1e-9) / scale:.{digits}f} GiB"


def gpu_card(choice: str | float | int | GpuCard | None) -> GpuCard:
    """The card a menu or an API call names: a card name (``"H100 80 GB"``), its menu label,
    or a number of GiB (``80`` = a GPU of 80 GiB, named so), else a message listing the cards."""
    if isinstance(choice, GpuCard):
        return choice
    if isinstance(choice, str):
        text = choice.strip()
        for card in CARDS:
            if text in (card.name, card.label):
                return card
        try:
            choice = float(text.removesuffix("GiB").strip())
        except ValueError:
            raise SettingsError(f"**GPU** {choice!r} is not a card listed here: choose one of "
                                f"{', '.join(c.name for c in CARDS)}, or give a size in GiB") from None
    if isinstance(choice, bool) or not isinstance(choice, (int, float)) or not 0 < choice <= 100_000:
        raise SettingsError(f"**GPU** memory must be a card listed here or a number of GiB from 0 to 100,000; "
                            f"got {choice!r}")
    gib = float(choice)
    return GpuCard(f"GPU of {gib:g} GiB", 0, round(gib * 1024))


def menu_choices() -> list[tuple[str, str]]:
    """(label, name) of every card, for a dropdown: it shows the label, the API gets the name."""
    return [(c.label, c.name) for c in CARDS]
