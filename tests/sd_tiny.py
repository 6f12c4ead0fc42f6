"""Tiny random Stable Diffusion folders (diffusers format) built with torch and diffusers.

Two flavours: "sd1" (1x1-conv projections, one head count, quick_gelu CLIP, epsilon prediction,
PNDM scheduler config) and "sd2" (linear projections, one head width, gelu CLIP with an explicit
EOS id, v-prediction, DDIM scheduler config). Only tests and bench import this (it needs torch).
"""

import json
import os

import numpy as np

WORDS = ("a", "photo", "of", "the", "red", "blue", "cat", "dog", "on", "mat")
MAX_LENGTH = 8


def write_tokenizer(folder: str, pad_token: str, max_length: int = MAX_LENGTH) -> None:
    """A CLIP BPE tokenizer over WORDS: characters, merges that build each word, special tokens."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    vocab: dict[str, int] = {}
    add = lambda tok: vocab.setdefault(tok, len(vocab))
    add("!")
    chars = sorted(set("".join(WORDS)))
    for c in chars:
        add(c)
    for c in chars:
        add(c + "</w>")
    merges: list[str] = []
    for w in WORDS:
        pieces = [*w[:-1], w[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            add(pieces[0])
    add("<|startoftext|>")
    add("<|endoftext|>")  # the largest id, as in OpenAI's CLIP vocabulary
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_file, "w") as f:
        json.dump(vocab, f)
    with open(merges_file, "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab_file, merges_file, model_max_length=max_length, pad_token=pad_token)
    tok.save_pretrained(folder)


def randomize(module, seed: int) -> None:
    """Weights N(0, 1/fan_in), norm scales near 1 and biases near 0, so no layer is trivial."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim > 1:
                p.copy_(noise / np.sqrt(p[0].numel()))
            elif "bias" in name:
                p.copy_(0.1 * noise)
            else:
                p.copy_(1.0 + 0.1 * noise)


def unet_kwargs(flavour: str) -> dict:
    """UNet2DConditionModel arguments: three levels, attention on the first two (as SD's four)."""
    common = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32),
        norm_num_groups=8,
    )
    if flavour == "sd1":
        return dict(common, layers_per_block=1, cross_attention_dim=32, attention_head_dim=2)
    return dict(
        common,
        layers_per_block=2,
        cross_attention_dim=24,
        attention_head_dim=(2, 4, 4),  # diffusers reads these as head counts: width 8 each
        use_linear_projection=True,
        upcast_attention=True,
    )


def text_kwargs(flavour: str, vocab_size: int, eos_id: int) -> dict:
    """CLIPTextConfig arguments matching unet_kwargs' context width."""
    common = dict(
        vocab_size=vocab_size,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=vocab_size - 2,
    )
    if flavour == "sd1":
        return dict(common, hidden_size=32, hidden_act="quick_gelu", eos_token_id=2)
    return dict(common, hidden_size=24, hidden_act="gelu", eos_token_id=eos_id, pad_token_id=0)


def write_scheduler(folder: str, flavour: str) -> None:
    """scheduler_config.json: SD 1.x's PNDM config (epsilon, with the clip_sample key its real file
    carries), or SD 2.x's DDIM config (v-prediction) as diffusers saves it."""
    from diffusers import DDIMScheduler

    common = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=False,
    )
    if flavour == "sd2":
        DDIMScheduler(prediction_type="v_prediction", **common).save_pretrained(folder)
        return
    os.makedirs(folder, exist_ok=True)
    cfg = dict(common, _class_name="PNDMScheduler", skip_prk_steps=True, trained_betas=None)
    with open(os.path.join(folder, "scheduler_config.json"), "w") as f:
        json.dump(cfg, f)


def build_folder(root: str, flavour: str, seed: int = 0) -> dict:
    """Write a random SD folder of the flavour to root. -> the torch models by component name."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    write_tokenizer(os.path.join(root, "tokenizer"), "<|endoftext|>" if flavour == "sd1" else "!")
    tok = AutoTokenizer.from_pretrained(os.path.join(root, "tokenizer"), local_files_only=True)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_kwargs(flavour)).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.18215 if flavour == "sd1" else 0.5,
    ).eval()
    text = CLIPTextModel(CLIPTextConfig(**text_kwargs(flavour, len(tok), eos))).eval()
    for i, m in enumerate((unet, vae, text)):
        randomize(m, seed * 10 + i)
    unet.save_pretrained(os.path.join(root, "unet"))
    vae.save_pretrained(os.path.join(root, "vae"))
    text.save_pretrained(os.path.join(root, "text_encoder"))
    write_scheduler(os.path.join(root, "scheduler"), flavour)
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline"}, f)
    return {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": tok}
