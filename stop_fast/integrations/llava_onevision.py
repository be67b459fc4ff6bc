"""SToP for ``LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision and LLaVA-Video in HF
format). Three instance attributes are patched, nothing in the classes:

* ``model.model.get_video_features`` runs the original (vision tower with its configured
  attention kernel, projector, the model's own 2×2 pooling) while hooks keep the q/k of the
  feature layer; it then scores every frame, prunes every video with the pruner built at
  ``apply_stop`` time and returns the pruned tokens (plus each video's newline token);
* ``model.forward`` and ``model.generate`` cut each video's placeholder run in the prompt to
  its pruned length (ids, attention mask, labels and position ids stay consistent), so the
  LLM prefill is shorter. ``generate`` returns the prompt as it was passed, then new tokens.

Images and text-only calls go through untouched.
"""
from __future__ import annotations

import torch

from ._capture import QKCapture, encoder_layers, feature_block, frame_scores
from ._common import ModelPatch, VideoPlan, bind, check_pixels, fit_prompt, prompt_kwargs, prune_frames

__all__ = ["LlavaOnevision"]


class LlavaOnevision(ModelPatch):
    """The patch of one LLaVA-OneVision model. ``global_head`` (FastVid): a module mapping the
    feature layer's hidden states (frames, tokens, C) to one global vector per frame (SigLIP's
    post-layernorm + attention-pooling head); None falls back to the frame mean (SPEC §9)."""

    model_class = "LlavaOnevisionForConditionalGeneration"
    methods = ("visionzip", "holitom", "fastvid", "flashvid", "prunevid")

    def check(self, model) -> None:
        """Run the pruner on a dummy video of this model's pooled frame size, so settings that
        cannot work (a ratio keeping no token per frame, …) fail now, not mid-generate."""
        inner = model.model
        vc = inner.config.vision_config
        grid = vc.image_size // vc.patch_size
        device = inner.image_newline.device
        device = torch.device("cpu") if device.type == "meta" else device      # offloaded weights
        n = inner.apply_pooling(torch.zeros(1, grid * grid, 1, device=device)).shape[1]
        zeros = torch.zeros(2, n, 1, device=device)
        self.pruner(zeros, zeros[..., 0], metric=zeros if self.spec.needs_metric else None,
                    global_features=zeros[:, 0] if self.spec.uses_global else None)

    def install(self, model) -> None:
        self.model, self.inner = model, model.model
        self.orig_features = self.inner.get_video_features
        self.orig_forward, self.orig_generate = model.forward, model.generate
        self.patch(self.inner, "get_video_features", self.video_features)
        self.patch(model, "forward", self.forward)
        self.patch(model, "generate", self.generate)

    # ------------------------------------------------------------------ vision side

    def video_features(self, *args, **kwargs):
        kw = bind(self.orig_features, args, kwargs)
        pixel_arg = next(iter(kw))                                  # pixel_values(_videos)
        pixels, config = kw[pixel_arg], self.inner.config
        layer = kw.get("vision_feature_layer")
        layer = config.vision_feature_layer if layer is None else layer
        strategy = kw.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
        want_tuple = kw.pop("return_dict", True) is False
        key = (id(pixels), repr(layer), strategy)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and hit[0] is pixels:
            out = hit[1]
        else:
            kw.update(vision_feature_layer=layer, vision_feature_select_strategy=strategy)
            out = self._pruned(kw, pixels, layer, strategy)
            if self.cache is not None:
                self.cache[key] = (pixels, out)
        return out.to_tuple() if want_tuple else out

    def _pruned(self, kw, pixels, layer, strategy):
        check_pixels("pixel_values_videos", pixels)
        spec = self.spec
        layers = encoder_layers(self.inner.vision_tower)
        block = feature_block(layers, layer)
        head = self.extras.get("global_head") if spec.uses_global else None
        hidden = []
        if head is not None:     # keep the scored block's output: the head reads it
            owner = next(m for m in layers if getattr(m, "self_attn", None) is block)
            hook = owner.register_forward_hook(lambda m, a, o: hidden.append(o[0] if isinstance(o, tuple) else o))
        try:
            with QKCapture(block) as cap:
                out = self.orig_features(**kw, return_dict=True)
        finally:
            if head is not None:
                hook.remove()
        feats = out.pooler_output                                   # (B, T·Np [+1], D)
        B, T = pixels.shape[:2]
        drop_first = strategy == "default"
        scores, metric = frame_scores(cap, drop_first, self.inner.apply_pooling,
                                      spec.needs_metric)
        Np = scores.shape[1]
        if feats.shape[1] not in (T * Np, T * Np + 1) or feats.shape[0] != B:
            raise RuntimeError(f"unexpected video feature layout {tuple(feats.shape)} for {B} video(s) "
                               f"of {T} frames × {Np} pooled tokens; this transformers version is not "
                               "supported")
        with_newline = feats.shape[1] == T * Np + 1     # newer versions append the newline here
        scores = scores.view(B, T, Np)
        metric = metric.view(B, T, Np, -1) if metric is not None else None
        glob = None
        if head is not None:
            h = hidden[-1]
            # The head may live elsewhere (a SigLIP checkpoint loads fp32 on CPU): meet it there.
            param = next(iter(head.parameters()), None) if isinstance(head, torch.nn.Module) else None
            if param is not None:
                h = h.to(device=param.device, dtype=param.dtype)
            with torch.no_grad():
                glob = head(h).float().to(feats.device).view(B, T, -1)     # (B, T, Dg)
        newline = self.inner.image_newline.to(device=feats.device, dtype=feats.dtype)[None]
        side = round(Np ** 0.5)
        records = []
        for b in range(B):   # one pruning per video (a loop over videos, not tokens)
            records.append(prune_frames(self.pruner, feats[b, :T * Np].view(T, Np, -1), scores[b],
                                        None if metric is None else metric[b],
                                        None if glob is None else glob[b], (side, Np // side)))
        self.last = records
        runs = [torch.cat((r.pruned.tokens.to(feats.dtype), newline)) for r in records]
        plan = VideoPlan(full=T * Np + 1, kept=tuple(r.shape[0] for r in runs))
        if len(set(plan.kept)) == 1:
            video = torch.stack(runs)                   # (B, M + 1, D), the model's own layout
        else:
            # Unequal lengths: one row holding every video's run; placeholders are filled
            # row-major, so this lands each run on its own video's placeholders.
            video = torch.cat(runs)[None]
        if not with_newline:
            video = video[:, :-1]                       # the model appends one per row
        out.pooler_output = video
        out.stop_pruned = [r.pruned for r in records]   # the PrunedVideo of each video
        out.stop_plan = plan
        out.stop_newline_included = with_newline
        return out

    # ------------------------------------------------------------------ prompt side

    def _video_plan(self, kw):
        """Run (or reuse) the pruned video features of a call → (plan, placeholders they fill),
        or None when the call has no video pruned by this integration."""
        pixels = kw.get("pixel_values_videos")
        if pixels is not None:
            out = self.inner.get_video_features(
                pixels, vision_feature_layer=kw.get("vision_feature_layer"),
                vision_feature_select_strategy=kw.get("vision_feature_select_strategy"),
                return_dict=True)
        else:
            out = (kw.get("mm_encoder_outputs") or {}).get("video")  # pre-encoded, maybe beam-expanded
            if getattr(out, "stop_plan", None) is None:
                return None
        video = out.pooler_output
        # Older transformers append one newline per row of the features themselves.
        fitted = video.numel() // video.shape[-1] + (0 if out.stop_newline_included else video.shape[0])
        return out.stop_plan, fitted

    def forward(self, *args, **kwargs):
        kw = bind(self.orig_forward, args, kwargs)
        if kw.get("pixel_values_videos") is None and kw.get("mm_encoder_outputs") is None:
            return self.orig_forward(*args, **kwargs)
        with self.scope():
            plan = self._video_plan(kw)
            if plan is not None:
                kw = fit_prompt(kw, *plan, **prompt_kwargs(self.model))
            return self.orig_forward(**kw)

    def fit_generate(self, kw: dict) -> dict:
        plan, fitted = self._video_plan(kw)
        self._check_expansion(kw, plan)
        return fit_prompt(kw, plan, fitted, **prompt_kwargs(self.model))

    def _check_expansion(self, kw, plan: VideoPlan) -> None:
        # transformers repeats pre-encoded features per row for beams; a single row holding
        # videos of different lengths cannot be repeated that way.
        gen = kw.get("generation_config") or self.model.generation_config
        expand = max(kw.get("num_beams", gen.num_beams) or 1,
                     kw.get("num_return_sequences", gen.num_return_sequences) or 1)
        if expand > 1 and len(set(plan.kept)) > 1:
            raise ValueError("beam search / num_return_sequences > 1 needs every video of the batch "
                             f"pruned to the same length, got {list(plan.kept)} tokens; generate these "
                             "videos one at a time (or use method='visionzip', which keeps a fixed count)")
