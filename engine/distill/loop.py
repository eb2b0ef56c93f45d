"""Prompt-in-the-loop distillation (phase 2): the student's own mistakes choose the next
point prompt, and its masks are trained against the teacher decoder's thresholded logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.distill.data import valid_map
from engine.distill.losses import bce_dice, correction_points
from engine.distill.model import decode_prompts
from engine.modeling import merge_prompts


@dataclass
class LoopSettings:
    """The knobs of the loop (official values as defaults)."""

    decode_iters: int = 2
    multimask_outputs: int = 4  # outputs for point prompts (4 = all mask tokens)
    multimask_on_box: bool = False
    iter_on_box: bool = True
    points_per_refine: int = 1
    min_error_pixels: int = 10
    bce_weight: float = 5.0
    dice_weight: float = 5.0


def flatten_prompts(
    boxes: list[torch.Tensor], points: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image prompt lists -> (image index per prompt P, boxes Px4, points Px2)."""
    counts = torch.tensor([len(b) for b in boxes])
    owner = torch.repeat_interleave(torch.arange(len(boxes)), counts)
    return owner, torch.cat(boxes).reshape(-1, 4), torch.cat(points).reshape(-1, 2)


def prompt_in_the_loop(
    student: nn.Module,
    teacher: nn.Module,
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    owner: torch.Tensor,
    boxes: torch.Tensor,
    points: torch.Tensor,
    valid: torch.Tensor,
    use_box: bool,
    settings: LoopSettings,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Run `decode_iters` decoding passes and return the losses.

    student/teacher: modules with `.prompt_encoder` and `.mask_decoder`.
    student_emb BxCxExE (with gradients), teacher_emb BxCxExE; owner P (image of each prompt);
    boxes Px4 xyxy and points Px2 in the input frame; valid Px1xLxL fractional valid map at the
    low-res logit size L = 4E.
    Returns 'loss' (sum over passes of (w_bce * bce + w_dice * dice) / decode_iters), the
    per-pass losses 'loss_pass{i}', 'bce', 'dice', and 'points' (all correction points,
    Px(iters-1)x2) with 'labels'.
    """
    s = settings
    s_emb, t_emb = student_emb[owner], teacher_emb[owner].to(student_emb.dtype)
    n_out = (s.multimask_outputs if s.multimask_on_box else 1) if use_box else s.multimask_outputs
    chan = slice(0, 1) if n_out == 1 else (slice(1, 4) if n_out == 3 else slice(0, 4))
    low_res = valid.shape[-1]
    image_frame = student.prompt_encoder.input_image_size[0]
    stride = image_frame / low_res
    new_xy = points.new_zeros(points.shape[0], 0, 2)
    new_lb = torch.zeros(points.shape[0], 0, dtype=torch.long, device=points.device)
    hard_valid = valid[:, 0] > 0.5
    out: dict[str, torch.Tensor] = {}
    total = student_emb.new_zeros(())
    bce_sum = student_emb.new_zeros(())
    dice_sum = student_emb.new_zeros(())
    iters = s.decode_iters if (not use_box or s.iter_on_box) else 1
    for it in range(iters):
        if use_box:
            pts = (new_xy, new_lb) if new_xy.shape[1] else None
            coords, labels = merge_prompts(pts, boxes)
        else:
            first_lb = torch.ones(points.shape[0], 1, dtype=torch.long, device=points.device)
            coords, labels = merge_prompts(
                (torch.cat([points[:, None], new_xy], 1), torch.cat([first_lb, new_lb], 1)), None
            )
        s_logits, _ = decode_prompts(student, s_emb, coords, labels)
        with torch.no_grad():
            t_logits, t_iou = decode_prompts(teacher, t_emb, coords, labels)
        s_out, t_out = s_logits[:, chan].float(), t_logits[:, chan].float()
        target = (t_out > 0).float()
        bce, dice = bce_dice(s_out, target, valid)
        loss = (s.bce_weight * bce + s.dice_weight * dice) / s.decode_iters
        out[f"loss_pass{it}"] = loss
        total = total + loss
        bce_sum, dice_sum = bce_sum + bce.detach(), dice_sum + dice.detach()
        if it + 1 < iters:
            with torch.no_grad():
                best = t_iou[:, chan].argmax(1)
                rows = torch.arange(best.shape[0], device=best.device)
                xy, lb = [], []
                for _ in range(s.points_per_refine):
                    c, label = correction_points(
                        s_out[rows, best] > 0,
                        t_out[rows, best] > 0,
                        hard_valid,
                        generator,
                        s.min_error_pixels,
                        stride,
                    )
                    xy.append(c)
                    lb.append(label)
                new_xy = torch.cat([new_xy, *xy], 1)
                new_lb = torch.cat([new_lb, *lb], 1)
    out["loss"] = total
    out["bce"] = bce_sum / iters
    out["dice"] = dice_sum / iters
    out["points"], out["labels"] = new_xy, new_lb
    return out


class Phase2Net(nn.Module):
    """The trained part of phase 2 (student encoder + decoder) with the loop in `forward`, so
    DDP sees one forward per backward. The frozen teacher decoder is held outside the module
    tree (it is neither synchronised nor saved with the student)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, settings: LoopSettings) -> None:
        super().__init__()
        self.student = student
        object.__setattr__(self, "teacher", teacher)
        self.settings = settings

    def forward(
        self,
        images: torch.Tensor,
        teacher_emb: torch.Tensor,
        boxes: list[torch.Tensor],
        points: list[torch.Tensor],
        input_hw: list[tuple[int, int]],
        use_box: bool,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """images Bx3xSxS, teacher_emb BxCxExE, per-image boxes Kx4 / points Kx2."""
        emb = self.student.image_encoder(images)
        owner, bx, pt = flatten_prompts(boxes, points)
        dev = images.device
        if owner.numel() == 0:  # no annotation in the batch: a zero loss keeps DDP in step
            params = [p.sum() for p in self.student.mask_decoder.parameters() if p.requires_grad]
            zero = (emb.float().sum() + sum(params)) * 0.0
            return {"loss": zero, "bce": zero.detach(), "dice": zero.detach()}
        owner, bx, pt = owner.to(dev), bx.to(dev), pt.to(dev)
        low_res = 4 * emb.shape[-1]
        valid = valid_map(input_hw, images.shape[-1], low_res).to(dev)[owner]
        return prompt_in_the_loop(
            self.student,
            self.teacher,
            emb,
            teacher_emb.to(dev),
            owner,
            bx,
            pt,
            valid,
            use_box,
            self.settings,
            generator,
        )
