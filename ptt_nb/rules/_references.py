"""The literature behind the built-in heuristics (numbers as in shared/reference/heuristics-catalog.md).

Each entry is (citation, url). A section, figure or appendix is named only where the catalog marks that
part as verified (V); elsewhere the paper is cited without one rather than with a guessed section.
"""

from __future__ import annotations

# Keyed by a name that says which work it is; the comment is its number in the catalog.
REFS: dict[str, tuple[str, str]] = {
    "dpo": (  # [1]
        "Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a Reward Model, "
        "arXiv:2305.18290", "https://arxiv.org/abs/2305.18290"),
    "ipo": (  # [2]
        "Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences (IPO), "
        "arXiv:2310.12036", "https://arxiv.org/abs/2310.12036"),
    "likelihood_displacement": (  # [3]
        "Razin et al. 2024, Unintentional Unalignment: Likelihood Displacement in Direct Preference "
        "Optimization, arXiv:2410.08847", "https://arxiv.org/abs/2410.08847"),
    "dpo_positive": (  # [4]
        "Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive, "
        "arXiv:2402.13228", "https://arxiv.org/abs/2402.13228"),
    "kto": (  # [5]
        "Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, arXiv:2402.01306",
        "https://arxiv.org/abs/2402.01306"),
    "orpo": (  # [6]
        "Hong, Lee, Thorne 2024, ORPO: Monolithic Preference Optimization without Reference Model, "
        "arXiv:2403.07691", "https://arxiv.org/abs/2403.07691"),
    "cpo": (  # [7]
        "Xu et al. 2024, Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in "
        "Machine Translation, arXiv:2401.08417", "https://arxiv.org/abs/2401.08417"),
    "simpo": (  # [8]
        "Meng, Xia, Chen 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward, "
        "arXiv:2405.14734 (and the princeton-nlp/SimPO README)", "https://arxiv.org/abs/2405.14734"),
    "ppo": (  # [10]
        "Schulman et al. 2017, Proximal Policy Optimization Algorithms, arXiv:1707.06347",
         "https://arxiv.org/abs/1707.06347"),
    "ziegler2019": (  # [11]
        "Ziegler et al. 2019, Fine-Tuning Language Models from Human Preferences, arXiv:1909.08593",
         "https://arxiv.org/abs/1909.08593"),
    "stiennon2020": (  # [12]
        "Stiennon et al. 2020, Learning to summarize from human feedback, arXiv:2009.01325",
         "https://arxiv.org/abs/2009.01325"),
    "instructgpt": (  # [13]
        "Ouyang et al. 2022, Training language models to follow instructions with human feedback (InstructGPT), "
         "arXiv:2203.02155", "https://arxiv.org/abs/2203.02155"),
    "rlhf_secrets_ppo": (  # [14]
        "Zheng et al. 2023, Secrets of RLHF in Large Language Models Part I: PPO, arXiv:2307.04964",
         "https://arxiv.org/abs/2307.04964"),
    "rlhf_n_implementation_details": (  # [15]
        "Huang et al. 2024, The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR "
         "Summarization, arXiv:2403.17031, §7", "https://arxiv.org/abs/2403.17031"),
    "rm_overoptimization": (  # [16]
        "Gao, Schulman, Hilton 2022, Scaling Laws for Reward Model Overoptimization, arXiv:2210.10760",
         "https://arxiv.org/abs/2210.10760"),
    "rlhf_length_correlations": (  # [17]
        "Singhal, Goyal, Xu, Durrett 2023, A Long Way to Go: Investigating Length Correlations in RLHF, "
         "arXiv:2310.03716", "https://arxiv.org/abs/2310.03716"),
    "dapo": (  # [19]
        "Yu et al. 2025, DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv:2503.14476",
         "https://arxiv.org/abs/2503.14476"),
    "dr_grpo": (  # [20]
        "Liu et al. 2025, Understanding R1-Zero-Like Training: A Critical Perspective (Dr. GRPO), "
         "arXiv:2503.20783, Fig. 1", "https://arxiv.org/abs/2503.20783"),
    "rl_entropy_mechanism": (  # [21]
        "Cui et al. 2025, The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models, "
         "arXiv:2505.22617", "https://arxiv.org/abs/2505.22617"),
    "off_policy_rl_blog": (  # [22]
        "Yao, Liu et al. 2025, Your Efficient RL Framework Secretly Brings You Off-Policy RL Training (blog)",
         "https://fengyao.notion.site/off-policy-rl"),
    "deepseek_r1": (  # [23]
        "DeepSeek-AI 2025, DeepSeek-R1: Incentivizing Reasoning Capability in LLMs via Reinforcement Learning, "
         "arXiv:2501.12948", "https://arxiv.org/abs/2501.12948"),
    "palm": (  # [25]
        "Chowdhery et al. 2022, PaLM: Scaling Language Modeling with Pathways, arXiv:2204.02311",
         "https://arxiv.org/abs/2204.02311"),
    "olmo2": (  # [26]
        "OLMo Team 2024, 2 OLMo 2 Furious, arXiv:2501.00656", "https://arxiv.org/abs/2501.00656"),
    "ml_engineering_instabilities": (  # [27]
        "Bekman, Machine Learning Engineering, training/instabilities",
         "https://github.com/stas00/ml-engineering/tree/master/training/instabilities"),
    "small_scale_proxies": (  # [24]
        "Wortsman et al. 2023, Small-scale proxies for large-scale Transformer training instabilities, "
         "arXiv:2309.14322", "https://arxiv.org/abs/2309.14322"),
    "mixed_precision": (  # [28]
        "Micikevicius et al. 2018, Mixed Precision Training, arXiv:1710.03740", "https://arxiv.org/abs/1710.03740"),
    "large_minibatch_sgd": (  # [29]
        "Goyal et al. 2017, Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour, arXiv:1706.02677",
         "https://arxiv.org/abs/1706.02677"),
    "why_warmup": (  # [30]
        "Kalra & Barkeshli 2024, Why Warmup the Learning Rate? Underlying Mechanisms and Improvements, "
         "arXiv:2406.09405", "https://arxiv.org/abs/2406.09405"),
    "fastai_single_example": (  # [31]
        "Howard & Whitaker 2023, Can LLMs learn from a single example? (fast.ai)",
         "https://www.fast.ai/posts/2023-09-04-learning-jumps/"),
    "trl_docs": (  # [37]
        "TRL documentation and source (trainer docs, paper index, logging)", "https://huggingface.co/docs/trl"),
    # issue 15, run health (not in the catalog)
    "prechelt_early_stopping": (
        "Prechelt 1998, Early Stopping - But When? (Neural Networks: Tricks of the Trade, LNCS 1524)",
        "https://doi.org/10.1007/3-540-49430-8_3"),
    "transformers_nan_inf_filter": (
        "transformers Trainer source and docs: TrainingArguments.logging_nan_inf_filter (a NaN/inf step loss is "
        "replaced by tr_loss / (1 + steps since the last log))",
        "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"),
    "text_degeneration": (
        "Holtzman et al. 2019, The Curious Case of Neural Text Degeneration, arXiv:1904.09751",
        "https://arxiv.org/abs/1904.09751"),
    "switch_transformer": (
        "Fedus, Zoph, Shazeer 2021, Switch Transformers: Scaling to Trillion Parameter Models with Simple and "
        "Efficient Sparsity, arXiv:2101.03961", "https://arxiv.org/abs/2101.03961"),
}

# Threads cited by the catalog as [38]
THREADS = {
    "trl#1236": "https://github.com/huggingface/trl/issues/1236",
    "trl#2703": "https://github.com/huggingface/trl/issues/2703",
    "trl#3452": "https://github.com/huggingface/trl/issues/3452",
    "trl#3857": "https://github.com/huggingface/trl/issues/3857",
    "ETO#14": "https://github.com/Yifan-Song793/ETO/issues/14",
}


def cite(*parts: str) -> tuple[str, str]:
    """A reference string joining catalog entries (``REFS`` names, ``THREADS`` names, or free text such as a
    verified section appended to the entry before it) and a url: the first arXiv paper's abstract page, else
    the first link."""
    texts: list[str] = []
    url = ""
    for part in parts:
        if part in REFS:
            text, link = REFS[part]
            texts.append(text)
            if "arxiv.org" in link and "arxiv.org" not in url:
                url = link
            url = url or link
        elif part in THREADS:
            texts.append(f"huggingface/{part}" if part.startswith("trl#") else f"Yifan-Song793/{part}")
            url = url or THREADS[part]
        else:
            texts[-1] = f"{texts[-1]}, {part}"
    return "; ".join(texts), url
