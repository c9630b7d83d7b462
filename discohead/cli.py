"""The ``discohead`` command (installed by pyproject's ``[project.scripts]``).

    discohead generate --model REF --source face.jpg --audio speech.wav --output out.mp4
    discohead generate --model REF --source face.jpg --audio speech.wav \\
        --head-video pose.mp4 --eye-video eyes.mp4 --output out.mp4 [--grid | --paste-back]

REF is an MLflow run id, ``runs:/ID``, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or a
checkpoint file or folder (local or s3://), as in the evaluation job. Runs without Ray; for
many videos on a cluster see ``pipelines/generate.py``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import UsageError


def add_generation_flags(parser: argparse.ArgumentParser, single: bool = True) -> None:
    """The flags ``discohead generate`` and ``pipelines/generate.py`` share."""
    parser.add_argument(
        "--model", required=True, metavar="REF", help="run id, runs:/ID, models:/NAME@ALIAS, checkpoint"
    )
    if single:
        parser.add_argument("--source", required=True, help="image or video of the face to animate")
        parser.add_argument("--audio", required=True, help="speech that drives the mouth: audio file or video")
        parser.add_argument("--head-video", help="video whose head pose drives the source (default: hold the pose)")
        parser.add_argument("--eye-video", help="video whose eyes and brows drive the source (default: its own)")
        parser.add_argument("--output", required=True, help="the .mp4 to write")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument("--grid", action="store_true", help="the paper's Fig. 2 layout: drivers above, outputs below")
    layout.add_argument("--paste-back", action="store_true", help="blend the face back into the source's full frame")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when there is a GPU)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default: 16)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL for s3:// checkpoints")


def default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_reference(ref: str, s3_endpoint: str | None = None) -> dict[str, Any]:
    """The checkpoint a REF names; a one-line :class:`UsageError` when it does not resolve."""
    from .storage import s3_options
    from .tracking import load_checkpoint

    try:
        return load_checkpoint(ref, storage_options=s3_options(ref, s3_endpoint))
    except Exception as error:  # an unknown run, model, alias or path: say which, in one line
        message = str(error).strip().splitlines()
        raise UsageError(f"--model {ref}: {message[0] if message else type(error).__name__}") from None


def load_generator(ref: str, s3_endpoint: str | None = None) -> Any:
    """The model a REF names, with the preprocessing settings it was trained with."""
    from .generation import Generator

    return Generator.from_checkpoint(load_reference(ref, s3_endpoint))


def generate_command(args: argparse.Namespace) -> int:
    from .generation import Progress, Request, generate

    request = Request(
        source=args.source,
        audio=args.audio,
        output=args.output,
        head_video=args.head_video,
        eye_video=args.eye_video,
        grid=args.grid,
        paste_back=args.paste_back,
        batch_size=args.batch_size,
        device=default_device(args.device),
    )
    generator = load_generator(args.model, args.s3_endpoint)
    result = generate(generator, request, progress=Progress())
    print(
        f"[generate] wrote {result.output}: {result.frames} frames, {result.width}x{result.height}, "
        f"{result.seconds:.2f} s with audio",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="discohead", description="DisCoHead talking heads from trained models.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate",
        help="a talking-head video from a source face, speech and optional head and eye videos",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_generation_flags(generate)
    generate.set_defaults(run=generate_command)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"[discohead {args.command}] error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"[discohead {args.command}] error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"[discohead {args.command}] interrupted: nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
