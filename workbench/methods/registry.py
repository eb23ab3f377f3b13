"""The single list of fine-tuning methods. Adding a method = one module + one line here."""

from __future__ import annotations

from ..errors import MethodError
from . import adalora, bitfit, dora, freeze, full, ia3, loha, lokr, lora, lora_8bit, oft, prefix, prompt, qlora, rslora, vera
from .base import Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        full.METHOD,
        freeze.METHOD,
        bitfit.METHOD,
        lora.METHOD,
        rslora.METHOD,
        dora.METHOD,
        qlora.METHOD,
        lora_8bit.METHOD,
        ia3.METHOD,
        adalora.METHOD,
        prefix.METHOD,
        prompt.METHOD,
        loha.METHOD,
        lokr.METHOD,
        oft.METHOD,
        vera.METHOD,
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}") from None
