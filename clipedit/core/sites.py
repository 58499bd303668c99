"""Rewrite sites: a Linear or Conv2d reached by dotted name, and the block that gives its values.

A site's *contribution* is its output, or the eval-mode BatchNorm right after it. The block adds the
contribution to a residual (``pre = contribution + residual``) and may apply an activation. Which
modules play which part is data (``BLOCK_SPECS``), keyed by the block's class name.

One site is not a module: ``<attention>.v_proj``, the value projection of an attention that packs it
with the queries and keys — an ``nn.MultiheadAttention`` (:class:`AttentionValueSite`) or a timm
attention's ``qkv`` Linear (:class:`QKVValueSite`). The site hooks the attention itself, reads its
value input, and rewrites the value rows of the packed weight. Attentions that call ``v_proj`` as a
module (Hugging Face ``CLIPAttention``/``SiglipAttention``) are plain sites.

Families (the block classes ``BLOCK_SPECS`` knows): open_clip's ViT and ModifiedResNet, timm's ViT
``Block`` (SigLIP/SigLIP 2, MobileCLIP-B, ViTamin's transformer stages), ``EvaBlock`` (EVA01/02, PE-Core),
``ConvNeXtBlock``, ResNet/EfficientNet blocks of timm and torchvision, and Hugging Face
``CLIPEncoderLayer`` / ``SiglipEncoderLayer``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipedit.core.nethook import get_module
from clipedit.errors import SiteError


@dataclass(frozen=True)
class BlockSpec:
    """Where a site sits in a residual block (names relative to the block).

    Attributes:
        site: the rewritten module.
        norm: eval-mode BatchNorm applied to the site's output, if any.
        residual: ``output`` — the block's output is the pre-activation, residual = output - contribution;
            ``shortcut`` — output = act(contribution + shortcut), the shortcut read from ``shortcut_module``
            (or the block's input when that module is None).
        shortcut_module: module whose output is the shortcut (e.g. ``downsample``).
        scale: a per-channel scale of the site's output before the residual add (LayerScale): a module with
            a ``gamma`` (timm ``ls2``, open_clip ``ls_2``) or a parameter (ConvNeXt ``gamma``, EVA ``gamma_2``);
            absent, ``None`` or ``nn.Identity`` in a given block means no scale.
        channels_first_block: the block's input and output are (B, C, H, W) while the site is a Linear on
            channels-last (B, H, W, C) features (ConvNeXt's MLP).
    """

    site: str
    norm: Optional[str] = None
    residual: str = "output"
    shortcut_module: Optional[str] = None
    scale: Optional[str] = None
    channels_first_block: bool = False


# Block class name -> specs of the sites it holds.
BLOCK_SPECS: dict[str, tuple[BlockSpec, ...]] = {
    # open_clip ViT: y = x + ls_1(attn(ln_1(x))); out = y + ls_2(mlp(ln_2(y))). attn.v_proj: the values
    # every token (the class token too) reads from the others (AttentionValueSite; its target is its own).
    "ResidualAttentionBlock": (BlockSpec(site="attn.v_proj", residual="none"),
                               BlockSpec(site="mlp.c_proj", scale="ls_2")),
    # timm ViT (open_clip TimmModel towers: SigLIP, SigLIP 2, MobileCLIP-B, ViTamin): the same layout,
    # y = x + ls1(attn(norm1(x))); out = y + ls2(mlp(norm2(y))); attn.v_proj = the value rows of attn.qkv.
    "Block": (BlockSpec(site="attn.v_proj", residual="none"), BlockSpec(site="mlp.fc2", scale="ls2")),
    # timm EVA (EVA01/02, PE-Core): out = y + gamma_2 * mlp(norm2(y)) (Mlp or SwiGLU, both end in fc2)
    "EvaBlock": (BlockSpec(site="attn.v_proj", residual="none"), BlockSpec(site="mlp.fc2", scale="gamma_2")),
    # timm ConvNeXt: out = x + gamma * mlp(norm(dwconv(x))) with the MLP on channels-last features
    "ConvNeXtBlock": (BlockSpec(site="mlp.fc2", scale="gamma", channels_first_block=True),),
    # Hugging Face CLIP / SigLIP: y = x + self_attn(layer_norm1(x)); out = y + mlp(layer_norm2(y));
    # self_attn.v_proj is a module there (a plain value site: its target is the blank exemplar's value).
    "CLIPEncoderLayer": (BlockSpec(site="self_attn.v_proj", residual="none"), BlockSpec(site="mlp.fc2")),
    "SiglipEncoderLayer": (BlockSpec(site="self_attn.v_proj", residual="none"), BlockSpec(site="mlp.fc2")),
    # ResNet bottlenecks (open_clip ModifiedResNet, timm, torchvision): out = act(bn3(conv3(h)) + shortcut)
    "Bottleneck": (BlockSpec(site="conv3", norm="bn3", residual="shortcut", shortcut_module="downsample"),),
    # ResNet-18/34 basic blocks (timm, torchvision): out = act(bn2(conv2(h)) + shortcut)
    "BasicBlock": (BlockSpec(site="conv2", norm="bn2", residual="shortcut", shortcut_module="downsample"),),
    # timm EfficientNet blocks: out = bn(conv(h)) (+ input when has_skip), no activation after
    "InvertedResidual": (BlockSpec(site="conv_pwl", norm="bn3"),),
    "DepthwiseSeparableConv": (BlockSpec(site="conv_pw", norm="bn2"),),
}


# Modules that pass a child Linear's weight to F.multi_head_attention_forward instead of calling it.
DIRECT_WEIGHT_PARENTS = {"MultiheadAttention": "nn.MultiheadAttention (e.g. a ViT block's attn.out_proj; its value "
                                               "projection can be rewritten as attn.v_proj)",
                         "AttentionPool2d": "the ResNet's attention pooling (attnpool.q_proj/k_proj/v_proj/c_proj)"}
SUPPORTED_SITES = ("Linear or Conv2d layers that the image forward pass calls, e.g. a ViT block's mlp.c_proj "
                   "or a ResNet bottleneck's conv3, and an attention's value projection (a ViT block's attn.v_proj)")
VALUE_PROJECTION = "v_proj"  # the name an attention's value projection goes by (torch's, unpacked)


@dataclass
class Site:
    """A resolved site: names (relative to the model) and the modules they point to."""

    layer: str
    module: nn.Module
    norm_name: Optional[str]
    block_name: Optional[str]
    residual: str  # "output" | "shortcut" | "none"
    shortcut_name: Optional[str]  # module giving the shortcut; None with residual "shortcut" = block input
    batch_first: bool = True
    scale_name: Optional[str] = None  # LayerScale module or parameter scaling the output (BlockSpec.scale)
    channels_first_block: bool = False  # the block's tensors are (B, C, H, W), the site's channels-last
    prefix_tokens: Optional[int] = None  # tokens before the patch grid (class, register); None: inferred

    @property
    def weight(self) -> torch.Tensor:
        """The weight an edit changes (for :class:`AttentionValueSite` a view of part of a parameter)."""
        return self.module.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.module.bias

    @property
    def hook_name(self) -> str:
        """The module whose forward hook sees the site's input and output."""
        return self.layer

    @property
    def token_layout(self) -> bool:
        """Locations are tokens of a sequence (a Linear), not positions of a conv's grid."""
        return isinstance(self.module, nn.Linear)

    @property
    def key_dim(self) -> int:
        w = self.weight
        return w.shape[1] if self.token_layout else w[0].numel()

    def weight_matrix(self, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weight as an (out, key_dim) matrix (a conv's kernel flattened as ``F.unfold`` orders keys)."""
        w = self.weight if weight is None else weight
        return w.reshape(w.shape[0], -1)

    def trace_layers(self) -> list[str]:
        names = [self.hook_name, self.norm_name, self.block_name, self.shortcut_name]
        return [n for n in names if n]

    def input_of(self, trace) -> Optional[torch.Tensor]:
        """The site's input from a ``Trace`` of :attr:`hook_name` (run with ``retain_input``)."""
        return trace.input

    def output_of(self, trace) -> torch.Tensor:
        """The site's output from a ``Trace`` of :attr:`hook_name`."""
        return trace.output

    # -- keys and locations -------------------------------------------------------------------
    def keys(self, site_input: torch.Tensor) -> torch.Tensor:
        """Site inputs as keys, (batch, locations, key_dim)."""
        if site_input is None:
            raise SiteError(f"{self.layer} is never called by the image forward pass (a text-tower layer?); "
                            f"supported sites are {SUPPORTED_SITES}")
        m = self.module
        if self.token_layout:
            x = site_input if self.batch_first else site_input.transpose(0, 1)
            return x.reshape(x.shape[0], -1, x.shape[-1])
        if m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), "valid"):
            return site_input.flatten(2).transpose(1, 2)
        cols = F.unfold(site_input, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
        return cols.transpose(1, 2)

    def grid_hw(self, site_output: torch.Tensor) -> Optional[tuple[int, int]]:
        """The spatial grid of the site's output (None for a token sequence)."""
        if not self.token_layout:
            return tuple(site_output.shape[-2:])
        return tuple(site_output.shape[1:3]) if site_output.dim() == 4 else None

    def site_layout(self, block_tensor: torch.Tensor) -> torch.Tensor:
        """A block input/output in the site's layout (channels-last for :attr:`channels_first_block`)."""
        return block_tensor.permute(0, 2, 3, 1) if self.channels_first_block else block_tensor

    def locations(self, tensor: torch.Tensor) -> torch.Tensor:
        """A site-output-shaped tensor (output, contribution, pre-activation) as (batch, locations, channels)."""
        if self.token_layout:
            x = tensor if self.batch_first else tensor.transpose(0, 1)
            return x.reshape(x.shape[0], -1, x.shape[-1])
        return tensor.flatten(2).transpose(1, 2)

    def location_weights(self, pixel_mask: torch.Tensor, n_locations: int,
                         out_hw: Optional[tuple[int, int]] = None, threshold: float = 0.0) -> torch.Tensor:
        """Which locations the label covers: (batch, locations) in {0, 1}.

        Args:
            pixel_mask: (batch, H, W) in [0, 1] at the model's input resolution.
            n_locations: locations per image (tokens for a ViT, positions for a conv).
            out_hw: the conv output grid; None for token sites (grid inferred, prefix tokens excluded).
            threshold: a location counts when the covered fraction exceeds it.
        """
        mask = pixel_mask.float().unsqueeze(1)
        if out_hw is None:  # tokens: [prefix tokens] + row-major patch grid
            prefix = self.prefix_tokens
            if prefix is None or math.isqrt(n_locations - prefix) ** 2 != n_locations - prefix:
                prefix = _inferred_prefix(n_locations)
            grid = math.isqrt(n_locations - prefix)
            frac = F.adaptive_avg_pool2d(mask, (grid, grid)).flatten(1)
            frac = torch.cat([frac.new_zeros(frac.shape[0], prefix), frac], dim=1)
        else:
            frac = F.adaptive_avg_pool2d(mask, out_hw).flatten(1)
        return (frac > threshold).to(pixel_mask.dtype if pixel_mask.is_floating_point() else torch.float32)

    # -- the affine map from site output to contribution ---------------------------------------
    def norm_affine(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) of the eval-mode norm or LayerScale after the site (ones, zeros without)."""
        w = self.weight
        out_ch = w.shape[0]
        if self.norm_name is None:
            ones = torch.ones(out_ch, dtype=w.dtype, device=w.device)
            if self.scale_name is not None:
                return _layer_scale(model, self.scale_name).detach().to(w.dtype), torch.zeros_like(ones)
            return ones, torch.zeros_like(ones)
        bn = get_module(model, self.norm_name)
        inv_std = 1 / torch.sqrt(bn.running_var + bn.eps)
        scale = bn.weight * inv_std if bn.weight is not None else inv_std
        shift = (bn.bias if bn.bias is not None else 0) - bn.running_mean * scale
        return scale.detach(), shift.detach()


@dataclass
class AttentionValueSite(Site):
    """The value projection ``v = W_v x + b_v`` of an ``nn.MultiheadAttention``, named ``<attention>.v_proj``:
    the rows 2E:3E of its packed ``in_proj_weight`` (or its ``v_proj_weight``).

    Keys are the attention's value input at each token; the site's output is the values the attention
    mixes into every query (the class token reads text tokens through them). Its target is the blank
    exemplar's own value at that token: nothing is added to it inside the attention.
    """

    @property
    def weight(self) -> torch.Tensor:
        mha = self.module
        if not mha._qkv_same_embed_dim:
            return mha.v_proj_weight
        e = mha.embed_dim
        return mha.in_proj_weight[2 * e:3 * e]

    @property
    def bias(self) -> Optional[torch.Tensor]:
        e = self.module.embed_dim
        return self.module.in_proj_bias[2 * e:3 * e] if self.module.in_proj_bias is not None else None

    @property
    def hook_name(self) -> str:
        return self.layer.rpartition(".")[0]

    @property
    def token_layout(self) -> bool:
        return True

    def input_of(self, trace) -> Optional[torch.Tensor]:
        if len(trace.inputs) > 2:  # forward(query, key, value, …)
            return trace.inputs[2]
        return trace.kwargs.get("value")

    def output_of(self, trace) -> torch.Tensor:
        x = self.input_of(trace)
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


@dataclass
class QKVValueSite(AttentionValueSite):
    """The value projection of a timm attention (``Attention``, ``EvaAttention`` …) named ``<attention>.v_proj``:
    the rows 2E:3E of its fused ``qkv`` Linear (bias: those rows of ``qkv.bias``, or EVA's ``v_bias``).

    Keys are the attention's input ``x`` (what ``qkv`` is applied to); EVA's rotary embedding turns only
    the queries and keys, so the values are this linear map of ``x``.
    """

    @property
    def weight(self) -> torch.Tensor:
        w = self.module.qkv.weight
        e = w.shape[0] // 3
        return w[2 * e:3 * e]

    @property
    def bias(self) -> Optional[torch.Tensor]:
        qkv = self.module.qkv
        e = qkv.weight.shape[0] // 3
        if getattr(self.module, "v_bias", None) is not None:
            return self.module.v_bias
        return qkv.bias[2 * e:3 * e] if qkv.bias is not None else None

    def input_of(self, trace) -> Optional[torch.Tensor]:
        return trace.input if trace.input is not None else trace.kwargs.get("x")


def _value_projection_site(model: nn.Module, layer: str) -> Optional[AttentionValueSite]:
    """``<attention>.v_proj`` when the model has no module of that name and its parent is an attention
    that packs its value projection (``nn.MultiheadAttention``, or a timm attention's ``qkv``)."""
    parent_name, _, child = layer.rpartition(".")
    if child not in ("q_proj", "k_proj", VALUE_PROJECTION) or any(n == layer for n, _ in model.named_modules()):
        return None
    parent = get_module(model, parent_name) if parent_name else model
    fused_qkv = isinstance(getattr(parent, "qkv", None), nn.Linear)
    if not isinstance(parent, nn.MultiheadAttention) and not fused_qkv:
        return None
    if child != VALUE_PROJECTION:
        raise SiteError(f"{layer}: of an attention's projections only the values can be rewritten "
                        f"({parent_name}.{VALUE_PROJECTION}); queries and keys decide where tokens look, and no "
                        "blank exemplar gives a target for them")
    common = dict(layer=layer, module=parent, norm_name=None, block_name=None, residual="none", shortcut_name=None,
                  prefix_tokens=_prefix_tokens(model, layer))
    if fused_qkv:
        if getattr(parent, "qkv_bias_separate", False):
            raise SiteError(f"{layer}: this attention adds its qkv bias outside the Linear; not supported")
        return QKVValueSite(batch_first=True, **common)
    return AttentionValueSite(batch_first=bool(parent.batch_first), **common)


def site_weight(model: nn.Module, layer: str) -> Optional[torch.Tensor]:
    """The weight an edit of ``layer`` changes (None: the module has no weight).

    Raises:
        SiteError: no such module or attention value projection.
    """
    value_site = _value_projection_site(model, layer)
    if value_site is not None:
        return value_site.weight
    return getattr(get_module(model, layer), "weight", None)


def resolve_site(model: nn.Module, layer: str) -> Site:
    """Find ``layer`` in ``model`` and work out its block, norm and residual path.

    Raises:
        SiteError: no such module, or one that cannot be rewritten.
    """
    value_site = _value_projection_site(model, layer)
    if value_site is not None:
        _check_finite(model, value_site)
        return value_site
    module = get_module(model, layer)
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise SiteError(f"{layer} is a {type(module).__name__}; a site must be a Linear or Conv2d layer")
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise SiteError(f"{layer} is a grouped/depthwise conv (groups={module.groups}); pick a dense conv")
    parent_name = layer.rpartition(".")[0]
    parent = type(get_module(model, parent_name) if parent_name else model).__name__
    if parent in DIRECT_WEIGHT_PARENTS:
        raise SiteError(f"{layer} cannot be rewritten: {DIRECT_WEIGHT_PARENTS[parent]} uses its weight without calling "
                        f"it, so its inputs cannot be hooked; supported sites are {SUPPORTED_SITES}")
    site = None
    parts = layer.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        block_name, rel = ".".join(parts[:cut]), ".".join(parts[cut:])
        block = get_module(model, block_name)
        for spec in BLOCK_SPECS.get(type(block).__name__, ()):
            if spec.site == rel and site is None:
                site = _site_from_spec(model, module, layer, block_name, block, spec)
    site = site or _plain_site(model, module, layer)
    _check_finite(model, site)
    return site


def _check_finite(model: nn.Module, site: Site) -> None:
    """Refuse a site whose weights (or its norm's statistics) hold NaN or inf: nothing sound can be solved."""
    for name in filter(None, (site.hook_name, site.norm_name)):
        for key, t in get_module(model, name).state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise SiteError(f"{name}.{key} contains NaN or inf; the model's weights are corrupt")


def _site_from_spec(model, module, layer, block_name, block, spec: BlockSpec) -> Site:
    norm = f"{block_name}.{spec.norm}" if spec.norm else None
    shortcut = None
    residual = spec.residual
    if residual == "shortcut" and spec.shortcut_module and getattr(block, spec.shortcut_module, None) is not None:
        shortcut = f"{block_name}.{spec.shortcut_module}"
    if type(block).__name__ == "Bottleneck" and getattr(block, "se", None) is not None:
        raise SiteError(f"{layer}: bottlenecks with squeeze-excitation after the site are not supported")
    scale = None
    if spec.scale is not None:
        found = getattr(block, spec.scale, None)
        if found is not None and not isinstance(found, nn.Identity):
            scale = f"{block_name}.{spec.scale}"
            _layer_scale(model, scale)  # refuses a scale that is neither a LayerScale nor a parameter
    return Site(layer=layer, module=module, norm_name=norm, block_name=block_name, residual=residual,
                shortcut_name=shortcut, batch_first=_batch_first(model, layer), scale_name=scale,
                channels_first_block=spec.channels_first_block, prefix_tokens=_prefix_tokens(model, layer))


def _layer_scale(model: nn.Module, name: str) -> torch.Tensor:
    """The per-channel gamma of a LayerScale module or a scale parameter, by dotted name."""
    parent_name, _, attr = name.rpartition(".")
    found = getattr(get_module(model, parent_name) if parent_name else model, attr)
    gamma = found if isinstance(found, torch.Tensor) else getattr(found, "gamma", None)
    if not isinstance(gamma, torch.Tensor) or gamma.dim() != 1:
        raise SiteError(f"{name} scales the site's output in a way clipedit cannot invert (not a per-channel gamma)")
    return gamma


def _inferred_prefix(n_locations: int) -> int:
    """Tokens before the patch grid when the tower does not say: none for a square count, else the fewest
    (at least one) that leave a square grid."""
    if math.isqrt(n_locations) ** 2 == n_locations:
        return 0
    grid = math.isqrt(n_locations - 1)
    while grid > 0 and n_locations - grid * grid < 1:
        grid -= 1
    return n_locations - grid * grid


def _prefix_tokens(model: nn.Module, layer: str) -> Optional[int]:
    """Tokens before the patch grid, from the tower above ``layer``: timm's ``num_prefix_tokens``, a class
    embedding (open_clip ``class_embedding``; Hugging Face ``embeddings.class_embedding``), or None."""
    parts = layer.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        m = get_module(model, ".".join(parts[:cut])) if cut else model
        if isinstance(getattr(m, "num_prefix_tokens", None), int):
            return m.num_prefix_tokens
        if isinstance(getattr(m, "class_embedding", None), torch.Tensor):
            return 1
        embeddings = getattr(m, "embeddings", None)
        if isinstance(embeddings, nn.Module) and hasattr(embeddings, "patch_embedding"):
            return 1 if isinstance(getattr(embeddings, "class_embedding", None), torch.Tensor) else 0
    return None


def _plain_site(model, module, layer) -> Site:
    """A layer outside a known block: its target is the blank image's own (normed) output."""
    parent_name, _, child = layer.rpartition(".")
    norm = None
    parent = get_module(model, parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential):
        names = [n for n, _ in parent.named_children()]
        i = names.index(child)
        if i + 1 < len(names) and isinstance(getattr(parent, names[i + 1]), nn.modules.batchnorm._BatchNorm):
            norm = f"{parent_name}.{names[i + 1]}" if parent_name else names[i + 1]
    return Site(layer=layer, module=module, norm_name=norm, block_name=None, residual="none",
                shortcut_name=None, batch_first=_batch_first(model, layer), prefix_tokens=_prefix_tokens(model, layer))


def _batch_first(model: nn.Module, layer: str) -> bool:
    """open_clip transformers record their layout in ``batch_first``; look for it above the site."""
    parts = layer.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        m = get_module(model, ".".join(parts[:cut])) if cut else model
        if hasattr(m, "batch_first"):
            return bool(m.batch_first)
    return True


def candidate_sites(model: nn.Module, prefix: str = "") -> list[str]:
    """Every site a residual block of ``model`` holds (``BLOCK_SPECS``: each block's output projection,
    e.g. ViT ``resblocks.{i}.mlp.c_proj`` / timm ``blocks.{i}.mlp.fc2`` / Hugging Face
    ``encoder.layers.{i}.mlp.fc2``, its attention's value projection, ResNet ``conv3``, ConvNeXt
    ``stages.{s}.blocks.{i}.mlp.fc2``), in forward order, as ``prefix`` + name. This is the sweep's candidate
    list for every family: a new block type joins it by an entry in ``BLOCK_SPECS``."""
    names = []
    for name, block in model.named_modules():
        for spec in BLOCK_SPECS.get(type(block).__name__, ()):
            layer = f"{name}.{spec.site}" if name else spec.site
            try:
                resolve_site(model, layer)
            except SiteError:  # unsupported variant (LayerScale, squeeze-excitation …)
                continue
            names.append(prefix + layer)
    return names
