"""LLaVA-OneVision-1.5's Table 1 (arXiv 2509.23661; lmms-lab's release post): accuracy in percent for the
8B and 4B models, keyed by the lmms-eval task name we run for that benchmark. The report puts them
beside our scores (as fractions, like lmms-eval's metrics). Benchmarks without a stock lmms-eval task
here (WeMath, MathVision, MMMU-Pro, CharXiv, PixmoCount, VL-RewardBench) are listed under their paper
names so a recipe can still name a custom task for them.
"""
from __future__ import annotations

TABLE1 = {  # task: (paper name, 8B, 4B)
    "mmstar": ("MMStar", 67.7, 64.9),
    "mmbench_en_dev": ("MMBench-en", 84.1, 84.2),
    "mmbench_cn_dev": ("MMBench-cn", 81.0, 76.9),
    "mmerealworld": ("MME-RealWorld-en", 62.3, 49.6),
    "mmerealworld_cn": ("MME-RealWorld-cn", 56.1, 61.6),
    "seedbench": ("SEED-Bench (image)", 77.3, 76.6),
    "cv_bench": ("CV-Bench", 80.8, 77.2),
    "scienceqa_img": ("ScienceQA", 95.0, 93.6),
    "seedbench_2_plus": ("SEED-Bench-2-Plus", 69.2, 68.9),
    "realworldqa": ("RealWorldQA", 68.1, 67.8),
    "mathvista_testmini_format": ("MathVista (testmini)", 69.6, 67.9),
    "wemath": ("WeMath", 33.6, 24.9),
    "mathvision_testmini": ("MathVision", 25.6, 24.2),
    "mmmu_val": ("MMMU (val)", 55.4, 52.7),
    "mmmu_pro_standard": ("MMMU-Pro (standard)", 37.4, 35.3),
    "mmmu_pro_vision": ("MMMU-Pro (vision)", 25.2, 25.4),
    "chartqa": ("ChartQA", 86.5, 87.1),
    "charxiv_val_descriptive": ("CharXiv (DQ)", 74.1, 63.8),
    "docvqa_val": ("DocVQA", 95.0, 94.4),
    "ocrbench": ("OCRBench", 82.9, 80.0),
    "ai2d": ("AI2D (with mask)", 84.2, 83.6),
    "ai2d_no_mask": ("AI2D (without mask)", 94.1, 93.3),
    "infovqa_val": ("InfoVQA", 78.4, 76.1),
    "pixmo_count": ("PixmoCount", 62.2, 52.2),
    "countbenchqa": ("CountBench", 88.2, 79.8),
}


def paper_scores(task: str) -> dict | None:
    """{"name", "8B", "4B"} as fractions, or None when the paper has no number for the task."""
    row = TABLE1.get(task)
    if row is None:
        return None
    name, b8, b4 = row
    return {"name": name, "8B": b8 / 100, "4B": b4 / 100}
