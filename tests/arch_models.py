"""Tiny hand-written models, one per architecture pattern autoprune must prune, export and time
(issue #16's table). Each factory takes `num_classes` and `in_channels` and runs on 8x8 (or larger)
images, the way a user points `task.model._target_=arch_models.<name>` at their own module."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


# ------------------------------------------------------------------------------------------- CNN patterns
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's stride-1 unit: split in halves, transform one, concat, shuffle."""

    def __init__(self, c: int):
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(_cbr(half, half, 1), nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False),
                                    nn.BatchNorm2d(half), _cbr(half, half, 1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((a, self.branch(b)), dim=1), 2)


class ShuffleNet(nn.Module):
    def __init__(self, num_classes: int = 3, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = _cbr(in_channels, width)
        self.blocks = nn.Sequential(ShuffleBlock(width), ShuffleBlock(width))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class RegBlock(nn.Module):
    """RegNet's X block: 1x1 -> grouped 3x3 with a fixed group width -> 1x1, plus the identity."""

    def __init__(self, c: int, group_width: int):
        super().__init__()
        self.a = _cbr(c, c, 1)
        self.b = _cbr(c, c, 3, groups=c // group_width)
        self.c = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.c(self.b(self.a(x))))


class RegNet(nn.Module):
    def __init__(self, num_classes: int = 3, in_channels: int = 1, width: int = 16, group_width: int = 4):
        super().__init__()
        self.stem = _cbr(in_channels, width)
        self.blocks = nn.Sequential(RegBlock(width, group_width), RegBlock(width, group_width))
        self.expand = _cbr(width, 2 * width, 1, groups=1)
        self.grouped = _cbr(2 * width, 2 * width, 3, groups=2 * width // group_width)  # not in a residual
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.grouped(self.expand(self.blocks(self.stem(x)))).mean((2, 3)))


class SqueezeNet(nn.Module):
    """Fire modules (squeeze 1x1, expand 1x1 || 3x3, concat); the classifier is a 1x1 conv."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = _cbr(in_channels, width)
        self.squeeze = _cbr(width, width // 2, 1)
        self.e1, self.e3 = _cbr(width // 2, width, 1), _cbr(width // 2, width, 3)
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(2 * width, num_classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        s = self.squeeze(self.stem(x))
        return torch.flatten(self.classifier(torch.cat([self.e1(s), self.e3(s)], 1)), 1)


class DenseGN(nn.Module):
    """DenseNet-style: each layer's output is concatenated to its input, then GroupNorm over the concat."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, width: int = 16, growth: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        c = width
        self.layers, self.norms = nn.ModuleList(), nn.ModuleList()
        for _ in range(2):
            self.layers.append(nn.Sequential(nn.Conv2d(c, growth, 3, padding=1), nn.ReLU()))
            c += growth
            self.norms.append(nn.GroupNorm(4, c))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for layer, norm in zip(self.layers, self.norms):
            x = F.relu(norm(torch.cat([x, layer(x)], 1)))
        return self.fc(x.mean((2, 3)))


class Ghost(nn.Module):
    """GhostNet's module: a primary conv, a cheap depthwise conv on its output, concat, keep `out` channels."""

    def __init__(self, cin: int, out: int):
        super().__init__()
        init = -(-out // 2)
        self.out = out
        self.primary = _cbr(cin, init, 1)
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False), nn.BatchNorm2d(init),
                                   nn.ReLU())

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, : self.out]


class GhostNet(nn.Module):
    def __init__(self, num_classes: int = 3, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = _cbr(in_channels, width)
        self.g1, self.g2 = Ghost(width, 2 * width), Ghost(2 * width, width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        return self.fc((x + self.g2(self.g1(x))).mean((2, 3)))


class MixConv(nn.Module):
    """MixNet: split channels, a depthwise conv of its own kernel size per split, concat."""

    def __init__(self, c: int, kernels=(3, 5)):
        super().__init__()
        self.splits = [c - c // 2 * (len(kernels) - 1)] + [c // 2] * (len(kernels) - 1)
        self.convs = nn.ModuleList(nn.Conv2d(s, s, k, padding=k // 2, groups=s, bias=False)
                                   for s, k in zip(self.splits, kernels))

    def forward(self, x):
        return torch.cat([conv(part) for conv, part in zip(self.convs, torch.split(x, self.splits, 1))], 1)


class MixNet(nn.Module):
    def __init__(self, num_classes: int = 3, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = _cbr(in_channels, width)
        self.expand = _cbr(width, 2 * width, 1)
        self.mix = nn.Sequential(MixConv(2 * width), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(2 * width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        return self.fc((x + self.project(self.mix(self.expand(x)))).mean((2, 3)))


# ------------------------------------------------------------------------------------------- attention
class _Patches(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)      # (B, N, dim)


class MHANet(nn.Module):
    """torch's own attention: an nn.TransformerEncoderLayer, then a hand-written nn.MultiheadAttention
    pooling (a learned query attends over the tokens) before the classifier."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, dim: int = 16, heads: int = 4, patch: int = 2):
        super().__init__()
        self.patches = _Patches(in_channels, dim, patch)
        self.encoder = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pool = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.encoder(self.patches(x))
        pooled, _ = self.pool(self.query.expand(t.shape[0], -1, -1), t, t, need_weights=False)
        return self.fc(pooled[:, 0])


class TVEncoderBlock(nn.Module):
    """torchvision's ViT encoder block: pre-norm nn.MultiheadAttention and MLP, both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1, self.self_attention = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TVViT(nn.Module):
    """torchvision's VisionTransformer layout: forward reshapes the patches to `self.hidden_dim` (a width
    held as an int), class token concatenated, position embedding added, nn.MultiheadAttention blocks."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, hidden_dim: int = 16, heads: int = 4,
                 patch: int = 2, size: int = 8):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, hidden_dim) * 0.02)
        self.layers = nn.Sequential(TVEncoderBlock(hidden_dim, heads), TVEncoderBlock(hidden_dim, heads))
        self.ln = nn.LayerNorm(hidden_dim)
        self.heads = nn.Linear(hidden_dim, num_classes)

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        return self.heads(self.ln(self.layers(x))[:, 0])


class TimmAttention(nn.Module):
    """timm's ViT attention: one fused qkv Linear, heads split by reshape/permute, then proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class TimmBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), TimmAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """timm's VisionTransformer layout: patch embed, class token, position embedding, blocks, head on cls."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, dim: int = 16, heads: int = 4, patch: int = 2,
                 size: int = 8, depth: int = 2):
        super().__init__()
        self.patch_embed = _Patches(in_channels, dim, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TimmBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(t))[:, 0])


class WindowAttention(nn.Module):
    """Swin's: attention inside windows, a relative position bias table indexed by a buffer, fused qkv."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # (B*nW, window*window, C)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = (attn + bias.permute(2, 0, 1).unsqueeze(0)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):  # (B, H, W, C)
        b, h, w, c = x.shape
        ws = self.window
        y = torch.roll(self.norm1(x), shifts=(-self.shift, -self.shift), dims=(1, 2)) if self.shift else self.norm1(x)
        y = y.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        y = self.attn(y).view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Swin's downsampling, channels last: the four 2x2 neighbours sliced on H and W, concatenated on C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):  # (B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinNet(nn.Module):
    def __init__(self, num_classes: int = 3, in_channels: int = 1, dim: int = 16, heads: int = 2, patch: int = 2,
                 window: int = 2):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.blocks = nn.Sequential(SwinBlock(dim, heads, window, 0), SwinBlock(dim, heads, window, window // 2))
        self.merge = PatchMerging(dim)
        self.stage2 = SwinBlock(2 * dim, 2 * heads, window, 0)
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        return self.head(self.norm(self.stage2(self.merge(self.blocks(x)))).mean((1, 2)))


class MaxVitAttention(nn.Module):
    """torchvision's MaxViT attention: `to_qkv` / `merge` / `n_heads` and an int `head_dim`, but the heads'
    output is reshaped back to the input width D, so no head can go alone (its inner width is tied)."""

    def __init__(self, dim: int, head_dim: int, window: int):
        super().__init__()
        self.n_heads, self.head_dim = dim // head_dim, head_dim
        self.scale_factor = dim ** -0.5
        self.to_qkv, self.merge = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, self.n_heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x):  # (B, G, P, D): G windows of P positions
        b, g, p, d = x.shape
        h, dh = self.n_heads, self.head_dim
        q, k, v = (t.reshape(b, g, p, h, dh).permute(0, 1, 3, 2, 4) for t in torch.chunk(self.to_qkv(x), 3, dim=-1))
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(p, p, -1)
        dot = torch.einsum("bghid,bghjd->bghij", q, k * self.scale_factor) + bias.permute(2, 0, 1).unsqueeze(0)
        out = torch.einsum("bghij,bghjd->bghid", dot.softmax(-1), v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, d))


class MaxVitNet(nn.Module):
    """MaxViT's layout: an MBConv-like residual conv block (channels first), then attention inside windows
    (partitioned to (B, G, P, C), channels last) with a residual, departitioned, pooled, a Linear head."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, dim: int = 16, head_dim: int = 4, window: int = 2):
        super().__init__()
        self.window = window
        self.stem = _cbr(in_channels, dim)
        self.mbconv = nn.Sequential(_cbr(dim, 2 * dim, 1), _cbr(2 * dim, 2 * dim, 3, groups=2 * dim),
                                    nn.Conv2d(2 * dim, dim, 1))
        self.norm, self.attn = nn.LayerNorm(dim), MaxVitAttention(dim, head_dim, window)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.mbconv(x)
        b, c, hh, ww = x.shape
        ws = self.window
        y = x.reshape(b, c, hh // ws, ws, ww // ws, ws).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ws * ws, c)
        y = y + self.attn(self.norm(y))
        y = y.reshape(b, hh // ws, ww // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hh, ww)
        return self.head(y.mean((2, 3)))


# factories by pattern name, as `task.model._target_` names them
def shufflenet(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return ShuffleNet(num_classes, in_channels)


def regnet(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return RegNet(num_classes, in_channels)


def squeezenet(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return SqueezeNet(num_classes, in_channels)


def densenet_gn(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return DenseGN(num_classes, in_channels)


def ghostnet(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return GhostNet(num_classes, in_channels)


def mixnet(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return MixNet(num_classes, in_channels)


def mha_net(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return MHANet(num_classes, in_channels)


def tv_vit(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return TVViT(num_classes, in_channels)


def timm_vit(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return TimmViT(num_classes, in_channels)


def swin(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return SwinNet(num_classes, in_channels)


def maxvit(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return MaxVitNet(num_classes, in_channels)


PATTERNS = {"shuffle": shufflenet, "grouped": regnet, "conv_classifier": squeezenet, "dense_groupnorm": densenet_gn,
            "ghost": ghostnet, "mixconv": mixnet, "mha": mha_net, "tv_vit": tv_vit, "timm_vit": timm_vit, "swin": swin,
            "maxvit": maxvit}


class Everything(nn.Module):
    """Every pattern above in one tiny model, for one end-to-end search in the default test run: channel
    shuffle, fixed-width grouped convs, a ghost module, mixed-kernel depthwise convs, a dense concat with
    GroupNorm, timm-style attention, torch's nn.TransformerEncoderLayer, and a 1x1-conv classifier."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = _cbr(in_channels, width)
        self.shuffle = ShuffleBlock(width)
        self.grouped = RegBlock(width, 4)
        self.ghost = Ghost(width, width)
        self.mix = nn.Sequential(MixConv(width), nn.BatchNorm2d(width))
        self.dense = nn.Sequential(nn.Conv2d(width, 8, 3, padding=1), nn.ReLU())
        self.norm = nn.GroupNorm(4, width + 8)
        self.reduce = nn.Conv2d(width + 8, width, 1)
        self.attn = TimmBlock(width, 4)
        self.encoder = nn.TransformerEncoderLayer(width, 4, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.classifier = nn.Sequential(nn.Conv2d(width, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        x = self.grouped(self.shuffle(self.stem(x)))
        x = x + self.ghost(x)
        x = x + self.mix(x)
        x = self.reduce(F.relu(self.norm(torch.cat([x, self.dense(x)], 1))))
        b, c, h, w = x.shape
        t = self.encoder(self.attn(x.flatten(2).transpose(1, 2)))
        return self.classifier(t.transpose(1, 2).reshape(b, c, h, w))


def everything(num_classes: int = 3, in_channels: int = 1) -> nn.Module:
    return Everything(num_classes, in_channels)


PATTERNS["everything"] = everything
