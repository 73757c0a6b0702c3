"""A small text encoder built with torch (no download), for padding tests and the padding bench.

Inputs `input_ids` and `attention_mask`, both INT64 [b, s] (shared dim names), outputs
`hidden` [b, s, H] (per position), `sentence_vec` [b, H] (masked mean) and `logits` [b, 3].
Attention is masked with an additive -1e9, so a real token never sees padding: answers for the
real positions do not depend on how far a request was padded (the padding honesty test).
"""

from __future__ import annotations

from pathlib import Path

from kbundle.specs import TensorSpec

VOCAB = 1000
MAX_LEN = 512
INPUTS = (
    TensorSpec("input_ids", "INT64", (-1, -1), ("b", "s")),
    TensorSpec("attention_mask", "INT64", (-1, -1), ("b", "s")),
)
OUTPUTS = ("hidden", "sentence_vec", "logits")


def text_encoder(layers: int = 2, hidden: int = 64, heads: int = 4, seed: int = 0):
    """The encoder as an eval-mode torch module with seeded random weights."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.out = nn.Linear(hidden, hidden)
            self.norm1 = nn.LayerNorm(hidden)
            self.ffn = nn.Sequential(
                nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)
            )
            self.norm2 = nn.LayerNorm(hidden)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            q, k, v = self.qkv(x).view(b, s, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / (hidden // heads) ** 0.5 + bias
            attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, hidden)
            x = self.norm1(x + self.out(attended))
            return self.norm2(x + self.ffn(x))

    class TextEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(VOCAB, hidden)
            self.positions = nn.Embedding(MAX_LEN, hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.head = nn.Linear(hidden, 3)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            keep = (attention_mask > 0).to(torch.float32)
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.tokens(input_ids) + self.positions(positions)[None]
            bias = (1.0 - keep)[:, None, None, :] * -1e9
            for layer in self.layers:
                x = layer(x, bias)
            pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
            return x, pooled, self.head(pooled)

    return TextEncoder().eval()


def build_text_encoder(
    model_dir: Path, layers: int = 2, hidden: int = 64, config: str = ""
) -> Path:
    """model_dir/model.onnx (dim_params `b`, `s`, checked against torch) and kbundle.yaml."""
    from kbundle.predictors.torch_export import save_onnx

    model_dir.mkdir(parents=True, exist_ok=True)
    save_onnx(text_encoder(layers, hidden), INPUTS, OUTPUTS, model_dir / "model.onnx", atol=1e-4)
    if config:
        (model_dir / "kbundle.yaml").write_text(config)
    return model_dir
