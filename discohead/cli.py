"""The ``discohead`` command (installed by pyproject's ``[project.scripts]``).

    discohead generate --model REF --source face.jpg --audio speech.wav --output out.mp4
    discohead generate --model REF --source face.jpg --audio speech.wav \\
        --head-video pose.mp4 --eye-video eyes.mp4 --output out.mp4 [--grid | --paste-back]

REF is an MLflow run id, ``runs:/ID``, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or a
checkpoint file or folder (local or s3://), as in the evaluation job. Runs without Ray; for
many videos on a cluster see ``pipelines/generate.py``.

    discohead refilter DEST [--output VIEW] [--min-sharpness 100 --max-yaw 30 ...]

Stricter quality gates on a preprocessed DEST from its manifest alone (nothing is decoded):
prints what they drop, and with ``--output`` writes VIEW, a manifest of the segments kept that
reads DEST's shards; train or evaluate with ``--data VIEW``.
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


def add_refilter_flags(parser: argparse.ArgumentParser) -> None:
    """DEST, --output, and one flag per threshold a view may tighten (its help from :class:`ClipConfig`)."""
    import dataclasses

    from .contracts import ClipConfig
    from .data.curation import REFILTER_FIELDS

    parser.add_argument("dest", metavar="DEST", help="a preprocessed dataset (local or s3://), or a view")
    parser.add_argument("--output", metavar="VIEW", help="write the view here (default: only print what would go)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL for s3:// paths")
    fields = {field.name: field for field in dataclasses.fields(ClipConfig)}
    gates = parser.add_argument_group("stricter thresholds (default: DEST's own)")
    for name in REFILTER_FIELDS:
        kind = int if isinstance(getattr(ClipConfig(), name), int) else float
        gates.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=fields[name].metadata["help"]
        )


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def refilter_command(args: argparse.Namespace) -> int:
    import os

    from .contracts import MANIFEST_NAME
    from .data.curation import REFILTER_FIELDS, refilter, write_stats
    from .data.sources import is_url
    from .manifest import Manifest, ShardFormatError
    from .storage import filesystem_for, s3_options

    options = s3_options(args.dest, args.s3_endpoint)
    try:
        manifest = Manifest.read(args.dest, options)
    except (FileNotFoundError, ShardFormatError) as error:
        raise UsageError(str(error)) from None
    stricter = {name: getattr(args, name) for name in REFILTER_FIELDS if getattr(args, name) is not None}
    shards_at = args.dest if is_url(args.dest) else os.path.abspath(args.dest)
    try:
        view = refilter(manifest, stricter, shards_at)
    except ValueError as error:
        raise UsageError(str(error)) from None
    before, after = manifest.totals, view.totals
    print(f"[discohead refilter] {args.dest}: {before.clips} segments stored ({_duration(before.seconds)})")
    dropped = {
        reason: count - manifest.totals.skipped_by_reason.get(reason, 0)
        for reason, count in after.skipped_by_reason.items()
    }
    for reason, count in sorted(dropped.items()):
        if count:
            print(f"[discohead refilter]   drops {count} as {reason}")
    print(f"[discohead refilter] keeps {after.clips} segments ({_duration(after.seconds)})")
    if not args.output:
        return 0
    out_options = s3_options(args.output, args.s3_endpoint)
    fs, root = filesystem_for(args.output, out_options)
    if os.path.normpath(view.view_of) == os.path.normpath(
        args.output if is_url(args.output) else os.path.abspath(args.output)
    ):
        raise UsageError("--output is DEST itself: a view goes to another folder (DEST's manifest stays as it is)")
    if fs.exists(f"{root}/{MANIFEST_NAME}") and not Manifest.read(args.output, out_options).view_of:
        raise UsageError(f"{args.output} holds a preprocessed dataset, not a view: choose another --output")
    write_stats(view, args.output, out_options)
    view.write(args.output, out_options)
    print(f"[discohead refilter] wrote {args.output}: train or evaluate with --data {args.output}")
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
    refilter = commands.add_parser(
        "refilter",
        help="stricter quality gates on a preprocessed dataset, from its manifest alone (a view, no re-decoding)",
        description="\n\n".join(__doc__.split("\n\n")[3:5]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_refilter_flags(refilter)
    refilter.set_defaults(run=refilter_command)
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
