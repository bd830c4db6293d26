"""Facts about the model and data that config-time rules need (parameter count, PEFT, KTO label balance),
read once at train begin by the callback."""

from __future__ import annotations

from typing import Any


def run_facts(model: Any = None, train_dataloader: Any = None) -> dict[str, Any]:
    """Facts for the config-time rules that ``TrainingArguments`` lacks: model size, PEFT, KTO label counts.

    Duck-typed (no torch import); any failure just leaves a fact out, and the rules fall back to low severity.
    """
    facts: dict[str, Any] = {}
    try:
        if model is not None and hasattr(model, "parameters"):
            total = trainable = 0
            for p in model.parameters():
                n = p.numel()
                total += n
                if p.requires_grad:
                    trainable += n
            facts["n_params"] = total
            facts["n_trainable_params"] = trainable
            peft = hasattr(model, "peft_config") or any("lora_" in name for name, _ in model.named_parameters())
            facts["peft"] = bool(peft)
    except Exception:  # a fact we cannot get is a fact we do not use
        pass
    try:
        dataset = getattr(train_dataloader, "dataset", None)
        names = getattr(dataset, "column_names", None) or []
        if "label" in names and len(dataset) <= 5_000_000:
            labels = dataset["label"]
            n_d = sum(1 for x in labels if x)
            facts["n_desirable"] = n_d
            facts["n_undesirable"] = len(labels) - n_d
    except Exception:
        pass
    return facts
