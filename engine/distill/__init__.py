"""Distilling EdgeSAM from a SAM teacher: teacher ViT, data, teacher-embedding store,
encoder-only (phase 1) and prompt-in-the-loop (phase 2) distillation, granularity priors and
mIoU evaluation. Entry point: `python -m engine.distill --help`."""
