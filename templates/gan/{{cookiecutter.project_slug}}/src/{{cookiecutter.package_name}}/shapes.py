"""Demo pictures: discs, squares and triangles of assorted sizes and colours, written as PNG and JPEG files.

Run ``python -m {{ cookiecutter.package_name }}.shapes data/images`` (``--count``, ``--seed``) to try the project
before you have images of your own. The pictures go into one subfolder per shape, the layout in which a conditional
GAN finds its classes.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle")


def draw_shape(shape: str, width: int, height: int, rng: random.Random) -> Image.Image:
    """A bright ``shape`` on a dark background, inside the picture's central square."""
    background = tuple(rng.randrange(0, 90) for _ in range(3))
    colour = tuple(rng.randrange(140, 256) for _ in range(3))
    picture = Image.new("RGB", (width, height), background)
    side = min(width, height)
    radius = rng.uniform(0.25, 0.4) * side
    x = width / 2 + rng.uniform(-0.08, 0.08) * side
    y = height / 2 + rng.uniform(-0.08, 0.08) * side
    draw = ImageDraw.Draw(picture)
    if shape == "disc":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    elif shape == "square":
        draw.rectangle((x - radius, y - radius, x + radius, y + radius), fill=colour)
    else:
        draw.polygon([(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)], fill=colour)
    return picture


def write_shapes(folder: Path, count: int = 600, seed: int = 0) -> list[Path]:
    """Write ``count`` pictures to ``folder/<shape>/``, 24 to 64 pixels a side, every other one as a JPEG."""
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        shape = SHAPES[index % len(SHAPES)]
        picture = draw_shape(shape, rng.randrange(24, 65), rng.randrange(24, 65), rng)
        path = folder / shape / f"{shape}-{index:04d}.{'jpg' if index % 2 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
        paths.append(path)
    return paths


def main(args: list[str] | None = None) -> None:
    """The command line: ``python -m {{ cookiecutter.package_name }}.shapes FOLDER [--count N] [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", type=Path, help="where to write the pictures (created if missing)")
    parser.add_argument("--count", type=int, default=600, help="number of pictures (default: 600)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    options = parser.parse_args(args)
    paths = write_shapes(options.folder, options.count, options.seed)
    print(f"wrote {len(paths)} pictures of {', '.join(SHAPES)} to {options.folder}")


if __name__ == "__main__":
    main()
