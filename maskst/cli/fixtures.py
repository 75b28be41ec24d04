"""maskst-fixtures: random-weight checkpoints in the real folder layouts (the command; the writers are
:mod:`maskst.fixtures`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maskst.cli.common import run_cli
from maskst.fixtures import (ALL_PRESETS, SdxlFixturePaths, StyleShotFixturePaths, check_seed, existing_fixtures,
                             write_fixtures)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(ALL_PRESETS), default="tiny", show_default=True,
              help="tiny / tiny-wide: small random SD 1.5 models for tests; full: the real SD 1.5 + ViT-H "
                   "architectures with random weights (about 6 GB, for benchmarks). sdxl-tiny / sdxl-tiny-wide: "
                   "small random SDXL sets (base with both text encoders, ip-adapter_sdxl with its ViT-bigG "
                   "encoder, ip-adapter_sdxl_vit-h and ip-adapter-plus_sdxl_vit-h with the ViT-H encoder, the "
                   "laion content encoder); sdxl-full: the real SDXL base 1.0 + ViT-bigG architectures, "
                   "ip-adapter_sdxl only (about 18 GB). styleshot-tiny / styleshot-tiny-wide: small random StyleShot "
                   "sets (SD 1.5 base, the laion-like content encoder, pretrained_weight/ip.bin and "
                   "style_aware_encoder.bin); styleshot-full: the real StyleShot widths (SD 1.5, ViT-H/14, CNNs "
                   "320/640/1280; about 11 GB).")
@click.option("--seed", type=int, default=0, show_default=True, help="An integer in [0, 2**63).")
@run_cli
def main(out_dir: Path, preset: str, seed: int) -> None:
    """Write random-weight checkpoints in the real folder layouts into OUT_DIR.

    OUT_DIR must be new, empty or a fixture set written here before (which is replaced once the new set is complete);
    any other folder is refused and left untouched.
    """
    check_seed(seed, "--seed")
    previous = existing_fixtures(out_dir)
    paths = write_fixtures(out_dir, preset, seed)
    if previous is not None:
        click.echo(f"replaced the previous fixture set in {out_dir} (preset {previous.get('preset')}, "
                   f"seed {previous.get('seed')})", err=True)
    names = ("base", "ip_adapter", "image_encoder", "content_encoder")
    if isinstance(paths, StyleShotFixturePaths):
        names = ("base", "styleshot", "content_encoder", "lineart_model")
    elif isinstance(paths, SdxlFixturePaths):
        names += ("ip_adapter_vit_h", "ip_adapter_plus", "image_encoder_vit_h")
    else:
        names += ("controlnet", "lineart_model")
    click.echo(json.dumps({k: str(getattr(paths, k)) for k in names if getattr(paths, k).exists()}, indent=2))



if __name__ == "__main__":
    main()
