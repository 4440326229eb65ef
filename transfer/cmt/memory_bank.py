"""CMT's memory bank: one compressed memory (and retrieval key) per stored document, saved and loaded as a versioned
safetensors file with a manifest."""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BANK_FORMAT = "clsuite-cmt-memory-bank"
BANK_VERSION = 2          # 2: a retrieval key per entry
BANK_TENSORS = "memory.safetensors"
BANK_MANIFEST = "manifest.json"


class MemoryBank:
    """Append-only store of K memory vectors and one retrieval key per document, with the documents' ids.

    Entries are detached copies (no autograd history, no gradient ever reaches them); there is no
    API to change or remove one. ``save``/``load`` write ``memory.safetensors`` + ``manifest.json``.
    """

    def __init__(self, num_tokens: int, dim: int, key_dim: int, *, dtype: torch.dtype = torch.float32):
        if num_tokens < 1 or dim < 1 or key_dim < 1:
            raise ValueError(f"MemoryBank: num_tokens, dim and key_dim must be >= 1, got {num_tokens}, {dim}, "
                             f"{key_dim}")
        self.num_tokens, self.dim, self.key_dim, self.dtype = int(num_tokens), int(dim), int(key_dim), dtype
        self._chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._joined: tuple[torch.Tensor, torch.Tensor] | None = (torch.empty(0, num_tokens, dim, dtype=dtype),
                                                                  torch.empty(0, key_dim, dtype=dtype))
        self._doc_ids: list[str] = []
        self._known: set[str] = set()

    def __len__(self) -> int:
        return len(self._doc_ids)

    @property
    def doc_ids(self) -> tuple[str, ...]:
        return tuple(self._doc_ids)

    def _entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._joined is None:
            self._joined = tuple(torch.cat(parts) for parts in zip(*self._chunks))
            self._chunks = [self._joined]
        return self._joined

    @property
    def memory(self) -> torch.Tensor:
        """All entries' memory vectors, (N, K, D), in arrival order (a shared tensor: do not modify it)."""
        return self._entries()[0]

    @property
    def keys(self) -> torch.Tensor:
        """All entries' retrieval keys, (N, E), in arrival order (shared: do not modify)."""
        return self._entries()[1]

    @property
    def bytes_per_document(self) -> int:
        return (self.num_tokens * self.dim + self.key_dim) * torch.tensor([], dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        return len(self) * self.bytes_per_document

    def append(self, doc_ids: Sequence[str], memory: torch.Tensor, keys: torch.Tensor) -> None:
        """Add one entry per document id; ``memory`` is (len(doc_ids), K, D), ``keys`` (len(doc_ids), E)."""
        doc_ids = [str(d) for d in doc_ids]
        if memory.dim() != 3 or memory.shape[1:] != (self.num_tokens, self.dim):
            raise ValueError(f"MemoryBank.append: memory must be (N, {self.num_tokens}, {self.dim}), "
                             f"got {tuple(memory.shape)}")
        if keys.shape != (memory.shape[0], self.key_dim):
            raise ValueError(f"MemoryBank.append: keys must be ({memory.shape[0]}, {self.key_dim}), "
                             f"got {tuple(keys.shape)}")
        if memory.shape[0] != len(doc_ids):
            raise ValueError(f"MemoryBank.append: {memory.shape[0]} memories but {len(doc_ids)} doc_ids")
        repeated = [d for d in doc_ids if d in self._known] or \
            [d for i, d in enumerate(doc_ids) if d in doc_ids[:i]]
        if repeated:
            raise ValueError(f"MemoryBank.append: document id(s) {repeated[:3]} already stored; the bank is "
                             "append-only and ids must be unique")
        with torch.no_grad():
            self._chunks.append(tuple(t.detach().to(device="cpu", dtype=self.dtype).clone() for t in (memory, keys)))
        self._joined = None
        self._doc_ids.extend(doc_ids)
        self._known.update(doc_ids)

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"memory": self.memory.contiguous(), "keys": self.keys.contiguous()}, str(directory / BANK_TENSORS),
                  metadata={"format": BANK_FORMAT, "version": str(BANK_VERSION)})
        manifest = {"format": BANK_FORMAT, "version": BANK_VERSION, "num_tokens": self.num_tokens,
                    "dim": self.dim, "key_dim": self.key_dim, "dtype": str(self.dtype).removeprefix("torch."),
                    "size": len(self), "doc_ids": self._doc_ids}
        (directory / BANK_MANIFEST).write_text(json.dumps(manifest, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> MemoryBank:
        from safetensors.torch import load_file

        directory = Path(directory)
        manifest_path = directory / BANK_MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no memory-bank manifest; save a bank with MemoryBank.save")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != BANK_FORMAT or manifest.get("version") != BANK_VERSION:
            raise ValueError(f"{manifest_path}: format {manifest.get('format')!r} v{manifest.get('version')} "
                             f"is not {BANK_FORMAT!r} v{BANK_VERSION}")
        dtype = getattr(torch, manifest["dtype"])
        bank = cls(manifest["num_tokens"], manifest["dim"], manifest["key_dim"], dtype=dtype)
        tensors = load_file(str(directory / BANK_TENSORS))
        memory, keys = tensors["memory"], tensors["keys"]
        if memory.shape != (manifest["size"], manifest["num_tokens"], manifest["dim"]) or memory.dtype != dtype \
                or keys.shape != (manifest["size"], manifest["key_dim"]) or keys.dtype != dtype:
            raise ValueError(f"{directory / BANK_TENSORS}: tensors {tuple(memory.shape)}, {tuple(keys.shape)} "
                             f"{memory.dtype} do not match the manifest ({manifest['size']}, "
                             f"{manifest['num_tokens']}, {manifest['dim']}) + keys {manifest['key_dim']} {dtype}")
        if len(manifest["doc_ids"]) != manifest["size"]:
            raise ValueError(f"{manifest_path}: {len(manifest['doc_ids'])} doc_ids for size {manifest['size']}")
        if manifest["size"]:
            bank.append(manifest["doc_ids"], memory, keys)
        return bank
