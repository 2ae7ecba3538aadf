"""What a weight-only quantization is (scheme, group size, whether the LM head is included, whether activations
are rounded to int8 too), checked, and how it is written in config.json.

config.json of a quantized checkpoint carries

    "quantization_config": {"method": "gpt_fast_weight_only", "bits": 8, "group_size": null, "lm_head": true}

("int4-a8" and "int8-a8" add "activation_bits": 8; int8-a8's group_size is its activations' group.)
The key is transformers' name for a quantization entry, but on purpose without transformers' `quant_method`
field: transformers refuses such a config with an error ("... has no `quant_method` attribute") instead of
loading the checkpoint with its quantized weights silently replaced by random ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

METHOD = "gpt_fast_weight_only"
CONFIG_KEY = "quantization_config"
SCHEMES = {"int8": 8, "int4": 4, "int4-a8": 4, "int8-a8": 8}  # scheme name -> weight bits
# int4-a8 / int8-a8: int4 / int8 weights, and each call's activations rounded to int8 per group of group_size input
# features with their own scale (ops/reference.round_activations), so that the CPU kernel multiplies bytes (VNNI)
ACTIVATION_BITS = {"int4-a8": 8, "int8-a8": 8}
DEFAULT_GROUP_SIZE = 32  # int4's group of consecutive input features sharing a scale and a zero
METHODS = ("rtn", "gptq")  # how the codes are chosen (round to nearest; GPTQ from calibration): same stored format


@dataclass(frozen=True)
class QuantizationConfig:
    bits: int  # 8 or 4
    # int4: input features per scale/zero group (and per activation group with int4-a8); int8: None (one scale per
    # output channel); int8-a8: input features per activation group
    group_size: int | None
    lm_head: bool = True  # the (tied) LM head quantized too
    activation_bits: int | None = None  # 8: activations rounded to int8 per group (int4-a8, int8-a8); None: as they are

    @property
    def scheme(self) -> str:
        return f"int{self.bits}" + (f"-a{self.activation_bits}" if self.activation_bits else "")

    def to_dict(self) -> dict:
        entry = {"method": METHOD, **asdict(self)}
        if self.activation_bits is None:  # the weight-only entry as before
            del entry["activation_bits"]
        return entry

    @classmethod
    def from_dict(cls, data, where: str = "quantization_config") -> "QuantizationConfig":
        """The config.json entry back; any other method or a malformed field is a ValueError naming `where`."""
        if not isinstance(data, dict) or data.get("method") != METHOD:
            raise ValueError(f"{where}: gpt_fast loads only its own quantized checkpoints "
                             f"(method {METHOD!r}), got {data!r}")
        unknown = sorted(set(data) - {"method", "bits", "group_size", "lm_head", "activation_bits"})
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}")
        bits, activation_bits = data.get("bits"), data.get("activation_bits")
        scheme = next((name for name, b in SCHEMES.items() if b == bits and not isinstance(bits, bool)
                       and ACTIVATION_BITS.get(name) == activation_bits), None)
        if scheme is None:
            if bits not in SCHEMES.values() or isinstance(bits, bool):
                raise ValueError(f"{where}: field 'bits' must be one of {sorted(set(SCHEMES.values()))}, got {bits!r}")
            raise ValueError(f"{where}: field 'activation_bits' must be absent (or null), or 8, got "
                             f"{activation_bits!r} with bits {bits!r}")
        if not isinstance(data.get("lm_head", True), bool):
            raise ValueError(f"{where}: field 'lm_head' must be true or false, got {data['lm_head']!r}")
        return make_config(scheme, data.get("group_size"), data.get("lm_head", True), where=where)


def make_config(scheme: str, group_size: int | None = DEFAULT_GROUP_SIZE, lm_head: bool = True,
                where: str = "quantize") -> QuantizationConfig:
    """The checked QuantizationConfig for scheme "int8", "int4", "int4-a8" or "int8-a8". group_size matters for int4
    (weights and, with int4-a8, activations) and int8-a8 (activations); int8 has one scale per output channel and
    ignores it. Whether it divides every layer's input width is checked against the model (check_group_size)."""
    if scheme not in SCHEMES:
        raise ValueError(f"{where}: unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    bits = SCHEMES[scheme]
    if scheme == "int8":
        return QuantizationConfig(8, None, bool(lm_head))
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0 or group_size % 2:
        raise ValueError(f"{where}: {scheme} needs group_size, a positive even int (32 or 64 in practice), "
                         f"got {group_size!r}")
    return QuantizationConfig(bits, group_size, bool(lm_head), ACTIVATION_BITS.get(scheme))


def check_group_size(config: QuantizationConfig, in_features: dict[str, int]) -> None:
    """int4 and int8-a8: the group size must divide the input width of every layer to quantize ({layer name: K})."""
    if config.group_size is None:
        return
    bad = sorted({k for k in in_features.values() if k % config.group_size})
    if bad:
        raise ValueError(f"{config.scheme} group_size {config.group_size} does not divide the input width of every "
                         f"layer to quantize (widths {bad}); pick a group size dividing "
                         f"{sorted(set(in_features.values()))}")
